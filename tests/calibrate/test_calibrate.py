"""Result files, the nccl-tests parser, calibration on synthetic rows, compare, and the calibrate and
compare commands."""
from __future__ import annotations

from pathlib import Path

import pytest

import yaml
from click.testing import CliRunner

from parplan.calibrate import fit as cal
from parplan.calibrate import compare as cmp
from parplan.views.profiles import write_profile
from parplan.cli.bench_cmd import calibrate, compare
from parplan.calibrate.nccl_tests import parse_nccl_tests, parse_nccl_tests_file
from parplan.bench.writer import ResultWriter
from parplan.calibrate.rows import Row, timing_fields, with_rates
from parplan.calibrate.load import load_results
from parplan.cost.collectives import bus_factor, collective_time_s, place
from parplan.errors import ParplanError
from parplan.specs.cluster import load_cluster, make_cluster
from parplan.specs.hardware import load_hardware
from tests.helpers import NCCL_TESTS_LOG, one_line_error, synthetic_rows


def test_timing_fields_median_and_spread():
    t = timing_fields([5.0, 1.0, 3.0, 2.0, 4.0])
    assert t == {"time_s": 3.0, "time_min_s": 1.0, "time_p10_s": 1.4, "time_p90_s": 4.6, "time_max_s": 5.0}


def test_writer_and_loader_round_trip_and_keep_rows_of_a_torn_file(tmp_path):
    rows = [with_rates(Row("collective", "all_reduce", "fp32", size_bytes=2**20, count=2**18, group="world",
                           group_size=8, time_s=1e-4, timestamp="2025-01-02T03:04:05+00:00")),
            Row("matmul", "matmul", "bf16", m=64, k=128, n=256, flops=2.0 * 64 * 128 * 256, time_s=2e-6)]
    writer = ResultWriter(tmp_path)
    for row in rows:
        writer.write(row)
    writer.close()
    assert rows[0].algbw_bytes_per_s == pytest.approx(2**20 / 1e-4)
    assert rows[0].busbw_bytes_per_s == pytest.approx(2**20 / 1e-4 * 2 * 7 / 8)
    assert load_results([tmp_path]) == rows
    assert load_results([tmp_path / "results.jsonl"]) == rows
    # A run killed mid-write leaves half a line: the finished rows still load.
    with open(tmp_path / "results.csv", "a") as fh:
        fh.write("collective,all_reduce,fp32,64")
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"kind": "collective", "op"')
    assert load_results([tmp_path / "results.csv"]) == rows
    assert load_results([tmp_path / "results.jsonl"]) == rows


def test_loader_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ParplanError, match="not a parplan bench CSV"):
        load_results([bad])
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ParplanError, match="neither a parplan bench result"):
        load_results([tmp_path / "notes.txt"])
    with pytest.raises(ParplanError, match="results not found"):
        load_results([tmp_path / "missing"])
    bad.write_text("kind,op,time_s\ncollective,all_reduce,fast\n")
    with pytest.raises(ParplanError, match="column 'time_s' has a bad value"):
        load_results([bad])


def test_nccl_tests_parser_reads_out_of_place_columns():
    rows = parse_nccl_tests(NCCL_TESTS_LOG, "nccl.log")
    gathers = [r for r in rows if r.op == "all_gather"]
    reduces = [r for r in rows if r.op == "all_reduce"]
    assert len(gathers) == 21 and len(reduces) == 13
    g = gathers[-1]
    assert (g.size_bytes, g.count, g.dtype) == (2**30, 33554432, "fp32")
    assert g.time_s == pytest.approx(2670.60e-6)  # out-of-place, not the in-place 2615.09
    assert g.busbw_bytes_per_s == pytest.approx(351.80e9)
    assert (g.group_size, g.group_class, g.local_world_size, g.nodes) == (8, "intra", 8, 1)
    assert g.device_name == "NVIDIA H100 80GB HBM3" and g.host == "dgx-a01"
    assert g.source == "nccl-tests:nccl.log" and g.correct and g.iters == 20
    r = reduces[0]
    assert (r.group_size, r.group_class, r.local_world_size, r.nodes, r.size_bytes) == (16, "inter", 8, 2, 8)
    # nccl-tests' busbw is ours: algbw times the bus factor.
    assert r.busbw_bytes_per_s == pytest.approx(reduces[0].algbw_bytes_per_s * bus_factor("all_reduce", 16), abs=1e7)


def test_nccl_tests_op_from_file_name_and_errors(tmp_path):
    body = "\n".join(line for line in NCCL_TESTS_LOG.splitlines()[:40] if "Collective test" not in line)
    path = tmp_path / "alltoall_perf_8gpu.txt"
    path.write_text(body)
    assert {r.op for r in parse_nccl_tests_file(path)} == {"all_to_all"}
    nameless = tmp_path / "run.txt"
    nameless.write_text(body)
    with pytest.raises(ParplanError, match="cannot tell which collective"):
        parse_nccl_tests_file(nameless)
    norank = tmp_path / "all_reduce.txt"
    norank.write_text("\n".join(l for l in NCCL_TESTS_LOG.splitlines() if "Rank" not in l))
    with pytest.raises(ParplanError, match="number of ranks is unknown"):
        parse_nccl_tests_file(norank)


def test_fit_alpha_beta_recovers_known_values():
    x = [2.0**i for i in range(3, 31)]
    t = [20e-6 + v / 150e9 for v in x]
    alpha, bw, rms = cal.fit_alpha_beta(x, t)
    assert alpha == pytest.approx(20e-6, rel=1e-6) and bw == pytest.approx(150e9, rel=1e-6) and rms < 1e-9


def test_calibrate_recovers_synthetic_machine(tmp_path):
    rows = synthetic_rows()
    out = tmp_path / "my-cluster.yaml"
    result, hw = write_profile(rows, out, "a100")
    fits = {(f.op, f.group, f.ranks): f for f in result.fits}
    assert fits[("all_reduce", "intra", 8)].alpha_s == pytest.approx(15e-6, rel=0.03)
    assert fits[("all_reduce", "intra", 8)].busbw == pytest.approx(360e9, rel=0.03)
    assert fits[("all_gather", "intra", 8)].busbw == pytest.approx(370e9, rel=0.03)
    assert fits[("all_reduce", "inter", 16)].alpha_s == pytest.approx(30e-6, rel=0.03)
    assert fits[("all_reduce", "inter", 16)].busbw == pytest.approx(90e9, rel=0.03)
    assert fits[("reduce_scatter", "intra", 4)].busbw == pytest.approx(300e9, rel=0.03)
    assert hw.kernel_overhead_s == pytest.approx(4e-6, rel=0.01)
    assert hw.hbm_efficiency == pytest.approx(0.88, rel=0.02)
    # 370 GB/s of all-gather busbw is above the A100 profile's 300 GB/s line rate: not an efficiency.
    assert hw.intra_node.efficiency == load_hardware("a100").intra_node.efficiency
    assert any("intra_node.efficiency kept" in note for note in result.notes)
    # The roofline's shape model keeps its size effects; only the typical rate is measured.
    assert hw.matmul_curve is None
    assert hw.matmul_efficiency == pytest.approx(0.78, rel=0.01)
    # The written file is a complete profile: --hw PATH loads it and collectives use the fits.
    loaded = load_hardware(str(out))
    assert loaded.name == "my-cluster" and loaded.peak("bf16") == load_hardware("a100").peak("bf16")
    assert len(loaded.collective_fits) == 4
    text = out.read_text()
    assert "measured by parplan bench on node7 2025-03-04" in text and "aliases" not in text
    data = yaml.safe_load(text)
    assert "measured by parplan bench" in data["sources"]["collective_fits"]
    assert data["sources"]["peak_flops"] == yaml.safe_load(Path(load_hardware("a100").path).read_text())["sources"][
        "peak_flops"]
    base = load_cluster("a100x8")
    mine = make_cluster(loaded, 8)
    size = 2**28
    before = collective_time_s("all_reduce", size, place(8, 1, base), base)
    after = collective_time_s("all_reduce", size, place(8, 1, mine), mine)
    assert after != pytest.approx(before, rel=0.05)
    assert after == pytest.approx(15e-6 + size * bus_factor("all_reduce", 8) / 360e9, rel=0.03)


def test_calibrate_scales_the_matmul_rate_to_what_layers_measure(tmp_path):
    """Layer rows whose matmuls and attention run at 0.8 of the rate the matmul rows imply (the other
    ops as the model predicts them): the written profile's matmul efficiency is scaled by 0.8, and
    the layers are then predicted as measured. Without layer rows nothing is scaled."""
    from parplan.cost.kernels import op_times
    from parplan.cost.ops import BATCHED, FLASH, MATMUL, LocalDims, layer_ops
    rows = synthetic_rows()
    plain, hw0 = write_profile(rows, tmp_path / "plain.yaml", "a100")
    assert plain.in_layer_scale is None
    shape = ("b=4 s=2048 h=2048 heads=16 kv_heads=16 head_dim=128 ffn=8192 act=gelu norm=layernorm "
             "bias=true dtype=bf16")
    spec, b, s = cmp.layer_spec(shape, "gpt3-1.3b")
    dims = LocalDims(batch=b, seq=s, seq_kv=s, hidden=spec.hidden, heads=spec.heads, kv_heads=spec.kv_heads,
                     head_dim=spec.head_dim, ffn=spec.ffn_hidden, vocab=1, norm_shard=1)
    layer_rows = []
    for side, op in enumerate(("forward", "backward")):
        gemm = other = 0.0
        for o in layer_ops(spec, dims, "bf16", dropout=False):
            t = float(op_times(hw0, o, "bf16")[side])
            gemm, other = (gemm + t, other) if o.kind in (MATMUL, BATCHED, FLASH) else (gemm, other + t)
        layer_rows.append(Row("layer", op, "bf16", model="gpt3-1.3b", shape=shape, flops=1e12,
                              time_s=gemm / 0.8 + other, host="node7"))
    # MoE layers' rows (three times slower) stay out: their experts run at the grouped-GEMM curve. Two of them, so
    # that counted in they would move the median and not only the count of passes.
    moe = [Row("layer", op, "bf16", model="moe", shape=shape + " experts=8 top_k=2 expert_ffn=512 shared=0 "
               "shared_ffn=512 router=softmax expert_gemms=grouped", flops=1e12, time_s=3 * r.time_s, host="node7")
           for op, r in zip(("forward", "backward"), layer_rows)]
    scaled, hw = write_profile(rows + layer_rows + moe, tmp_path / "scaled.yaml", "a100")
    assert scaled.in_layer_scale == pytest.approx(0.8, rel=1e-6) and scaled.in_layer_passes == 2
    assert hw.matmul_efficiency == pytest.approx(hw0.matmul_efficiency * 0.8, rel=1e-6)
    assert "in-layer scale" in hw.sources["efficiency.matmul"]
    for c in cmp.compare(layer_rows, str(tmp_path / "scaled.yaml")):
        assert abs(c.error_pct) < 3.0  # not exact: op times carry a fixed kernel overhead


def test_calibrate_from_nccl_tests_log(tmp_path):
    log = tmp_path / "h100-nccl-tests.log"
    log.write_text(NCCL_TESTS_LOG)
    result, hw = write_profile(load_results([log]), tmp_path / "h100-measured.yaml", None)
    assert hw.name == "h100-measured"  # base guessed from "NVIDIA H100 80GB HBM3"
    assert load_hardware("h100").name in hw.description
    fits = {(f.op, f.group, f.ranks): f for f in result.fits}
    assert fits[("all_gather", "intra", 8)].alpha_s == pytest.approx(12e-6, rel=0.05)
    assert fits[("all_gather", "intra", 8)].busbw == pytest.approx(360e9, rel=0.05)
    assert fits[("all_reduce", "inter", 16)].alpha_s == pytest.approx(25e-6, rel=0.05)
    assert fits[("all_reduce", "inter", 16)].busbw == pytest.approx(180e9, rel=0.05)
    assert "measured by nccl-tests on dgx-a01 (h100-nccl-tests.log)" in hw.sources["collective_fits"]


def test_calibrate_refuses_what_it_cannot_use(tmp_path):
    cpu = [Row("copy", "copy", "uint8", size_bytes=8, bytes_moved=16, time_s=1e-6, device_name="x86_64")]
    with pytest.raises(ParplanError, match="pass --hw BASE_PROFILE"):
        write_profile(cpu, tmp_path / "p.yaml", None)
    with pytest.raises(ParplanError, match=r"\.yaml"):
        write_profile(cpu, tmp_path / "p.txt", "a100")
    layer_only = [Row("layer", "forward", "bf16", flops=1e9, time_s=1e-3)]
    with pytest.raises(ParplanError, match="nothing to calibrate"):
        write_profile(layer_only, tmp_path / "p.yaml", "a100")
    assert not (tmp_path / "p.yaml").exists()


def test_compare_against_the_calibrated_profile(tmp_path):
    rows = synthetic_rows()
    write_profile(rows, tmp_path / "fit.yaml", "a100")
    comparisons = cmp.compare(rows, str(tmp_path / "fit.yaml"))
    coll = [c for c in comparisons if c.kind == "collective"]
    assert all(c.predicted_s is not None for c in coll)
    assert max(abs(c.error_pct) for c in coll) < 5.0
    copies = [c for c in comparisons if c.kind == "copy"]
    assert max(abs(c.error_pct) for c in copies) < 3.0
    summary = {s.key: s for s in cmp.summarize(comparisons)}
    assert summary["all_reduce world (inter, 16)"].median_ape_pct < 3.0
    assert summary["all collective"].rows == len(coll)
    matmuls = [c for c in comparisons if c.kind == "matmul"]
    if matmuls[0].predicted_s is not None:  # the matmul model reads the measured curve
        assert abs(matmuls[-1].error_pct) < 3.0
    # Against the datasheet profile the same rows are predicted, just less well.
    base = cmp.compare(rows, "a100x16")
    assert all(c.predicted_s is not None for c in base if c.kind == "collective")


def test_compare_predicts_a_layer_with_the_planners_op_model():
    shape = ("b=4 s=2048 h=2048 heads=16 kv_heads=16 head_dim=128 ffn=8192 act=gelu norm=layernorm "
             "bias=true dtype=bf16")
    rows = [Row("layer", "forward", "bf16", model="gpt3-1.3b", shape=shape, flops=1e12, time_s=5e-3),
            Row("layer", "backward", "bf16", model="gpt3-1.3b", shape=shape, flops=2e12, time_s=1e-2)]
    fwd, bwd = cmp.compare(rows, "h100")
    assert fwd.predicted_s and bwd.predicted_s, (fwd.note, bwd.note)
    assert 1.5 < bwd.predicted_s / fwd.predicted_s < 3.5
    # The forward's matmuls alone at the best efficiency bound it from below.
    hw = load_hardware("h100")
    assert fwd.predicted_s > 1e12 / hw.peak("bf16") * 0.5
    assert fwd.what == "gpt3-1.3b b=4 s=2048"
    with pytest.raises(ParplanError, match="unreadable shape"):
        cmp.layer_spec("b=4 s=x", "m")


def test_calibrate_and_compare_bad_arguments_give_one_line(tmp_path, capsys):
    assert "Missing option" in one_line_error(["calibrate", str(tmp_path)], capsys)
    assert "Missing argument" in one_line_error(["calibrate", "-o", "x.yaml"], capsys)
    assert "no results.csv" in one_line_error(["calibrate", str(tmp_path), "-o", "x.yaml"], capsys)
    log = tmp_path / "all_reduce_perf.log"
    log.write_text(NCCL_TESTS_LOG)
    assert "unknown hardware" in one_line_error(["calibrate", str(log), "-o", str(tmp_path / "p.yaml"), "--hw",
                                                 "h900"], capsys)
    assert "Missing option" in one_line_error(["compare", str(log)], capsys)
    assert "unknown hardware" in one_line_error(["compare", str(log), "--hw", "nope"], capsys)


def test_calibrate_and_compare_commands(tmp_path):
    log = tmp_path / "all_reduce_perf.log"
    log.write_text(NCCL_TESTS_LOG)
    runner = CliRunner()
    out = tmp_path / "measured.yaml"
    result = runner.invoke(calibrate, [str(log), "-o", str(out), "--hw", "h100"])
    assert result.exit_code == 0, result.output
    assert "all_gather" in result.output and f"wrote {out}" in result.output
    assert load_hardware(str(out)).collective_fits
    result = runner.invoke(compare, [str(log), "--hw", str(out), "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "median |err|" in result.output and "all_gather world (intra, 8)" in result.output
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert lines[0].startswith("kind,op,group") and len(lines) == 1 + 34


def test_calibrate_keeps_a_cluster_files_in_switch_reduction_off(tmp_path):
    """Calibrated against a cluster file that turns NVLink SHARP off (as NCCL_NVLS_ENABLE=0 runs), the
    profile keeps it off: an 8-GPU all-reduce it has no fit for is the ring, not the in-switch one."""
    rows = [r for r in synthetic_rows() if r.kind == "copy" or r.op == "all_gather"]
    cluster = tmp_path / "nvls-off.yaml"
    cluster.write_text("hardware: h100-sxm\ndevices: 8\nin_switch_reduction: false\n")
    _, off = write_profile(rows, tmp_path / "off.yaml", str(cluster))
    _, on = write_profile(rows, tmp_path / "on.yaml", "h100-sxm")
    assert not off.intra_node.in_switch_reduction and on.intra_node.in_switch_reduction
    assert off.intra_node.efficiency == pytest.approx(370e9 / 450e9, rel=0.03)  # the all-gather's busbw
    assert "cluster file" in yaml.safe_load((tmp_path / "off.yaml").read_text())["sources"][
        "intra_node.in_switch_reduction"]
    size, alpha = 2.0**30, 8.4e-6 + 2 * 7 * 1.9e-6
    ring = alpha + size * 2 * 7 / 8 / off.intra_node.effective_bandwidth
    nvls = alpha + size / (450e9 * 0.61)
    for path, want in ((tmp_path / "off.yaml", ring), (tmp_path / "on.yaml", nvls)):
        cl = load_cluster(f"{path}")
        cl = make_cluster(cl.hardware, 8)
        assert float(collective_time_s("all_reduce", size, place(8, 1, cl), cl)) == pytest.approx(want, rel=1e-6)


def test_a_calibrated_matmul_rate_drops_the_base_parts_loaded_clock(tmp_path):
    """Measured rates carry the clock the measured device held, so the base H100's 1400 MHz no longer
    references them: a sustained clock on the calibrated profile is refused, not counted twice."""
    out = tmp_path / "mine.yaml"
    result, hw = write_profile(synthetic_rows(), out, "h100-sxm")
    assert result.matmul_efficiency is not None
    assert load_hardware("h100-sxm").clocks.loaded_mhz == 1400 and hw.clocks.loaded_mhz is None
    assert "clocks.loaded_mhz" not in yaml.safe_load(out.read_text())["sources"]
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(f"hardware: {out}\ndevices: 8\nsustained_clock_mhz: 1200\n")
    with pytest.raises(ParplanError, match="loaded_mhz"):
        load_cluster(str(cluster))
