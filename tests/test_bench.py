"""parplan bench without processes: sweep planning, result files, the nccl-tests parser,
calibration on synthetic rows, compare, and the commands' error handling."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parplan.cost.roofline import k_efficiency, wave_utilization
import yaml
from click.testing import CliRunner

from parplan.calibrate import fit as cal
from parplan.calibrate import compare as cmp
from parplan.views.profiles import write_profile
from parplan.cli.bench_cmd import calibrate, compare, config_from_options, main, worker
from parplan.bench.launch import diagnose, exit_codes
from parplan.calibrate.nccl_tests import parse_nccl_tests, parse_nccl_tests_file
from parplan.bench.writer import ResultWriter
from parplan.calibrate.rows import Row, timing_fields, with_rates
from parplan.calibrate.load import load_results
from parplan.bench.state import RankState
from parplan.units import parse_bytes
from parplan.bench.config import BenchConfig, parse_ops, resolve
from parplan.bench.items import build_plan, collective_count, mesh_layouts, sizes
from parplan.cost.collectives import bus_factor, collective_time_s, place
from parplan.errors import ParplanError
from parplan.specs.cluster import load_cluster, make_cluster
from parplan.specs.hardware import load_hardware

# A realistic nccl-tests capture: an 8-GPU all_gather_perf on one node, then a 16-GPU
# all_reduce_perf over two nodes, with launcher and NCCL noise around the tables.
NCCL_TESTS_LOG = """\
NCCL INFO Bootstrap : Using eth0:10.0.0.11<0>
# nccl-tests version 2.13.9 nccl-headers=21903 nccl-library=21903
# Collective test starting: all_gather_perf
# nThread 1 nGpus 1 minBytes 1024 maxBytes 1073741824 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  40211 on  dgx-a01 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  40212 on  dgx-a01 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  40213 on  dgx-a01 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  40214 on  dgx-a01 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  40215 on  dgx-a01 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  40216 on  dgx-a01 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  40217 on  dgx-a01 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  40218 on  dgx-a01 device  7 [0xdb] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
        1024            32     float    none      -1    11.88    0.09    0.08      0    12.02    0.09    0.07      0
        2048            64     float    none      -1    11.94    0.17    0.15      0    12.05    0.17    0.15      0
        4096           128     float    none      -1    12.07    0.34    0.30      0    11.80    0.35    0.30      0
        8192           256     float    none      -1    11.79    0.70    0.61      0    12.18    0.67    0.59      0
       16384           512     float    none      -1    11.92    1.37    1.20      0    11.91    1.38    1.20      0
       32768          1024     float    none      -1    12.32    2.66    2.33      0    12.07    2.72    2.38      0
       65536          2048     float    none      -1    12.32    5.32    4.65      0    12.15    5.39    4.72      0
      131072          4096     float    none      -1    12.39   10.58    9.26      0    12.15   10.79    9.44      0
      262144          8192     float    none      -1    12.71   20.63   18.05      0    12.82   20.44   17.89      0
      524288         16384     float    none      -1    13.29   39.46   34.53      0    13.40   39.12   34.23      0
     1048576         32768     float    none      -1    14.65   71.58   62.64      0    14.29   73.35   64.18      0
     2097152         65536     float    none      -1    17.27  121.41  106.23      0    17.16  122.21  106.94      0
     4194304        131072     float    none      -1    22.02  190.49  166.68      0    21.78  192.59  168.52      0
     8388608        262144     float    none      -1    32.86  255.26  223.36      0    32.35  259.28  226.87      0
    16777216        524288     float    none      -1    53.24  315.12  275.73      0    53.58  313.14  274.00      0
    33554432       1048576     float    none      -1    94.36  355.61  311.16      0    95.13  352.72  308.63      0
    67108864       2097152     float    none      -1   174.38  384.85  336.74      0   177.22  378.68  331.34      0
   134217728       4194304     float    none      -1   337.47  397.71  348.00      0   344.12  390.04  341.28      0
   268435456       8388608     float    none      -1   674.52  397.97  348.22      0   653.75  410.61  359.28      0
   536870912      16777216     float    none      -1  1297.72  413.70  361.99      0  1301.99  412.35  360.80      0
  1073741824      33554432     float    none      -1  2670.60  402.06  351.80      0  2615.09  410.59  359.27      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 112.406
#
# Collective test concluded: all_gather_perf
#
[dgx-a01:40200] 15 more processes have sent help message help-mpi-btl-openib.txt / no active ports found
# nccl-tests version 2.13.9 nccl-headers=21903 nccl-library=21903
# Collective test starting: all_reduce_perf
# nThread 1 nGpus 1 minBytes 8 maxBytes 134217728 step: 4(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  40211 on  dgx-a01 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  40212 on  dgx-a01 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  40213 on  dgx-a01 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  40214 on  dgx-a01 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  40215 on  dgx-a01 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  40216 on  dgx-a01 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  40217 on  dgx-a01 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  40218 on  dgx-a01 device  7 [0xdb] NVIDIA H100 80GB HBM3
#  Rank  8 Group  0 Pid  51877 on  dgx-a02 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  9 Group  0 Pid  51878 on  dgx-a02 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank 10 Group  0 Pid  51879 on  dgx-a02 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank 11 Group  0 Pid  51880 on  dgx-a02 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank 12 Group  0 Pid  51881 on  dgx-a02 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank 13 Group  0 Pid  51882 on  dgx-a02 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank 14 Group  0 Pid  51883 on  dgx-a02 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank 15 Group  0 Pid  51884 on  dgx-a02 device  7 [0xdb] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
           8             2     float     sum      -1    25.13    0.00    0.00      0    24.80    0.00    0.00      0
          32             8     float     sum      -1    25.01    0.00    0.00      0    24.89    0.00    0.00      0
         128            32     float     sum      -1    24.85    0.01    0.01      0    25.09    0.01    0.01      0
         512           128     float     sum      -1    25.09    0.02    0.04      0    25.41    0.02    0.04      0
        2048           512     float     sum      -1    25.20    0.08    0.15      0    25.45    0.08    0.15      0
        8192          2048     float     sum      -1    25.44    0.32    0.60      0    25.58    0.32    0.60      0
       32768          8192     float     sum      -1    25.51    1.28    2.41      0    25.00    1.31    2.46      0
      131072         32768     float     sum      -1    26.75    4.90    9.19      0    26.86    4.88    9.15      0
      524288        131072     float     sum      -1    30.95   16.94   31.76      0    30.55   17.16   32.18      0
     2097152        524288     float     sum      -1    47.25   44.39   83.23      0    46.30   45.29   84.92      0
     8388608       2097152     float     sum      -1   113.87   73.67  138.13      0   112.71   74.43  139.55      0
    33554432       8388608     float     sum      -1   371.30   90.37  169.44      0   367.99   91.18  170.97      0
   134217728      33554432     float     sum      -1  1443.25   93.00  174.37      0  1450.98   92.50  173.44      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 46.93
#
# Collective test concluded: all_reduce_perf
"""


def run_main(argv, capsys) -> tuple[int, str, str]:
    """``python -m parplan.bench ARGV`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(argv, capsys) -> str:
    """The command failed with exactly one line, 'Error: ...', and nothing else."""
    code, out, err = run_main(argv, capsys)
    assert code != 0, out + err
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out + err
    return lines[0]


# --------------------------------------------------------------------------- sweep


def test_parse_bytes_and_sizes():
    assert parse_bytes("8") == 8
    assert parse_bytes("64K") == parse_bytes("64KiB") == 65536
    assert parse_bytes("1G") == 2**30
    assert sizes(8, 2**30, 2)[:3] == [8, 16, 32] and sizes(8, 2**30, 2)[-1] == 2**30
    assert len(sizes(8, 2**30, 2)) == 28
    for bad in ("abc", "0", "-5", "1P", "100G"):
        with pytest.raises(ParplanError):
            parse_bytes(bad)


def test_parse_ops_aliases():
    assert parse_ops("all") == ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast",
                                "send_recv")
    assert parse_ops("allreduce,all-gather,sendrecv,alltoall") == ("all_reduce", "all_gather", "send_recv",
                                                                    "all_to_all")
    with pytest.raises(ParplanError, match="unknown collective 'gather'"):
        parse_ops("gather")


def test_mesh_layouts_contiguous_and_strided():
    layouts = {l.name: l for l in mesh_layouts(8, (), ("contiguous", "strided"), ["a"] * 4 + ["b"] * 4)}
    assert list(layouts) == ["world", "contig2", "strided2", "contig4", "strided4"]
    assert layouts["contig4"].members == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert layouts["strided4"].members == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert layouts["strided4"].stride == 2 and layouts["strided4"].count == 2
    assert layouts["contig4"].group_class == "intra" and layouts["strided4"].group_class == "inter"
    assert layouts["world"].nodes == 2
    # The placement parplan's model gives the same groups agrees with the hosts.
    cluster = make_cluster(load_hardware("a100"), 8, devices_per_node=4)
    assert place(4, 2, cluster).nodes == 2 and place(4, 1, cluster).nodes == 1
    with pytest.raises(ParplanError, match="does not divide"):
        mesh_layouts(8, (3,), ("contiguous",))
    with pytest.raises(ParplanError, match="larger than"):
        mesh_layouts(4, (8,), ("contiguous",))


def test_plan_rounds_sizes_like_nccl_tests():
    config = resolve(BenchConfig(suites=("collectives",), ops=("all_gather", "all_reduce"), min_bytes=8,
                                 max_bytes=64, groups=(0,)), on_gpu=False)
    plan = build_plan(config, 4)
    gathers = [i.size_bytes for i in plan if i.op == "all_gather"]
    assert gathers == [16, 32, 64]  # 8 B of fp32 is 2 elements: rounded up to one per rank
    assert [i.size_bytes for i in plan if i.op == "all_reduce"] == [8, 16, 32, 64]
    assert collective_count("reduce_scatter", 100, "fp32", 4) == 24
    assert all(i.count * 4 == i.size_bytes for i in plan)


def test_plan_compute_items_and_send_recv_needs_two_ranks():
    config = resolve(BenchConfig(suites=("collectives", "matmul", "copy"), max_bytes=64, matmul_max=128),
                     on_gpu=False)
    plan = build_plan(config, 1)
    assert not [i for i in plan if i.op == "send_recv"]
    shapes = [i.shape for i in plan if i.kind == "matmul"]
    assert (64, 64, 64) in shapes and (128, 128, 128) in shapes and (1, 128, 128) in shapes
    gpu = resolve(BenchConfig(), on_gpu=True)
    assert gpu.matmul_dtypes == ("bf16", "fp16", "fp32") and gpu.matmul_max == 16384
    gpu_shapes = [i.shape for i in build_plan(replace_suites(gpu, ("matmul",)), 1) if i.dtype == "bf16"]
    assert (16384, 16384, 16384) in gpu_shapes and (1, 8192, 8192) in gpu_shapes and (256, 256, 256) in gpu_shapes


def replace_suites(config, suites):
    from dataclasses import replace

    return replace(config, suites=suites)


def test_config_round_trips_through_the_worker_command_line():
    opts = dict(suite="collectives,matmul", ops="all_reduce,send_recv", min_bytes="16", max_bytes="1M", factor=4,
                dtype="bf16", groups="world,2", layout="strided", iters=7, warmup=2, timeout=42.0,
                matmul_dtypes="fp16", shapes="1x64x64,32x32x32", matmul_min=0, matmul_max=0, models=(),
                micro_batch=3, seq=128, layer_dtype="", device="cpu", backend="gloo", output="/tmp/x")
    config = config_from_options(opts)
    ctx = worker.make_context("worker", config.to_argv())
    assert config_from_options(ctx.params) == config


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- nccl-tests


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


# --------------------------------------------------------------------------- calibrate


def synthetic_rows() -> list[Row]:
    """Rows generated from a known machine: alpha-beta collectives, a matmul curve, a copy rate."""
    rows = []
    truth = {("all_reduce", "intra", 8): (15e-6, 360e9), ("all_gather", "intra", 8): (10e-6, 370e9),
             ("all_reduce", "inter", 16): (30e-6, 90e9), ("reduce_scatter", "intra", 4): (8e-6, 300e9)}
    for i, ((op, group, n), (alpha, bw)) in enumerate(truth.items()):
        for j, size in enumerate(sizes(8, 2**30, 2)):
            noise = 1 + 0.01 * ((i + j) % 3 - 1)
            t = (alpha + size * bus_factor(op, n) / bw) * noise
            rows.append(with_rates(Row("collective", op, "bf16", size_bytes=size, group="world", group_size=n,
                                       group_class=group, world_size=n, local_world_size=min(n, 8),
                                       nodes=2 if group == "inter" else 1, time_s=t, host="node7",
                                       timestamp="2025-03-04T05:06:07+00:00")))
    overhead, peak = 4e-6, 312e12
    a100 = load_hardware("a100")
    # Square GEMMs at 0.85 of the shape model, layer-shaped ones at 0.78: calibration must fit the latter.
    for (m, k, n), typical in [((s, s, s), 0.85) for s in (256, 512, 1024, 2048, 4096, 8192, 16384)] + \
            [(shape, 0.78) for shape in ((2048, 12288, 4608), (8192, 4096, 28672), (8192, 14336, 4096),
                                         (4096, 8192, 7168))]:
        flops = 2.0 * m * k * n
        eff = typical * float(wave_utilization(a100, m, n) * k_efficiency(k))
        rows.append(Row("matmul", "matmul", "bf16", m=m, k=k, n=n, flops=flops,
                        time_s=flops / (peak * eff) + overhead, host="node7"))
    for size in sizes(8, 2**30, 4):
        rows.append(Row("copy", "copy", "uint8", size_bytes=size, bytes_moved=2 * size,
                        time_s=overhead + 2 * size / (2.039e12 * 0.88), host="node7"))
    return rows


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
    scaled, hw = write_profile(rows + layer_rows, tmp_path / "scaled.yaml", "a100")
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


# --------------------------------------------------------------------------- compare


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


# --------------------------------------------------------------------------- commands


def test_commands_need_no_torch():
    code = ("import sys; import parplan.cli.bench_cmd, parplan.calibrate.fit, parplan.calibrate.compare, "
            "parplan.calibrate.nccl_tests, parplan.bench.launch; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("args, message", [
    (["--min-bytes", "abc"], "--min-bytes"),
    (["--max-bytes", "4", "--min-bytes", "64"], "is below"),
    (["--nproc", "0"], "--nproc"),
    (["--nproc", "4", "--groups", "3"], "does not divide"),
    (["--suite", "layer"], "needs --model"),
    (["--model", "no-such-model"], "unknown model"),
    (["--ops", "gather"], "unknown collective"),
    (["--iters", "many"], "--iters"),
    (["--backend", "nccl", "--device", "cpu"], "needs GPUs"),
    (["--no-such-option"], "no-such-option"),
])
def test_bench_bad_arguments_give_one_line(args, message, capsys):
    assert message in one_line_error(["bench", *args], capsys)


def test_usage_errors_exit_2_and_value_errors_exit_1(capsys):
    assert run_main(["bench", "--iters", "many"], capsys)[0] == 2
    assert run_main(["bench", "--min-bytes", "abc"], capsys)[0] == 1


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


def test_diagnose_names_the_rank_that_died():
    log = """
Failures:
[1]:
  time      : 2025-01-01_00:00:00
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 17 (pid: 5259)
[2]:
  rank      : 2 (local_rank: 2)
  exitcode  : -15 (pid: 5260)
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 5258)
"""
    codes = exit_codes(log)
    assert codes == {1: 17, 2: -15, 0: 1}
    states = {0: RankState(0, "failed", "all_reduce of 4 KiB on group world",
                           "rank 0: all_reduce of 4 KiB on group world failed: Connection reset by peer", 2.0),
              1: RankState(1, "running", "all_reduce of 4 KiB on group world", time=1.0),
              2: RankState(2, "running", "all_reduce of 4 KiB on group world", time=1.0)}
    message = diagnose(states, codes, 3, 1, Path("x/torchrun.log"))
    assert message.startswith("rank 1 exited with code 17 during all_reduce of 4 KiB on group world")
    timeout = RankState(0, "failed", "all_reduce of 4 KiB on group world",
                        "rank 0: all_reduce of 4 KiB on group world did not finish within 5 s", 2.0)
    hung = diagnose({0: timeout, 1: states[1]}, {0: 3, 1: -15}, 2, 1, Path("log"))
    assert hung.startswith("rank 0: all_reduce of 4 KiB") and "rank 1 reported no error" in hung
    # A rank that failed by itself is the cause; the ranks the launcher then stopped are not suspects.
    crashed = diagnose({0: states[0], 1: states[1]}, {0: 1, 1: -15}, 2, 1, Path("log"))
    assert crashed.startswith("rank 0: all_reduce of 4 KiB on group world failed: Connection reset by peer")
    assert "rank 1" not in crashed
    early = diagnose({}, {}, 2, 1, Path("log"), "starting\nRuntimeError: address already in use\n")
    assert early == "torchrun failed with exit code 1: RuntimeError: address already in use (log: log)"
