"""parplan bench with real processes: 2 and 4 gloo ranks under torchrun on the CPU, a rank that
dies, a rank that hangs, a corrupted rank, a layer in a world of one, and the GPU script's CPU mode."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from tests.helpers import REPO
from parplan.calibrate.load import load_results  # noqa: E402
from parplan.cost.collectives import bus_factor  # noqa: E402
from parplan.specs.hardware import load_hardware  # noqa: E402

QUICK = ["--iters", "3", "--warmup", "1", "--timeout", "60"]


def run_bench(*args: str, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "parplan.bench", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The run failed with one 'Error: ...' line as the last thing on stderr, and no traceback."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench2") / "run"
    proc = run_bench("bench", "--nproc", "2", "--max-bytes", "16K", "--matmul-max", "64", *QUICK, "-o", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out, proc


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    """Four ranks, every collective, each pair of ranks at once and alone, with rank 2 corrupting its input
    to the first measurement."""
    out = tmp_path_factory.mktemp("bench4") / "run"
    proc = run_bench("bench", "--nproc", "4", "--suite", "collectives", "--max-bytes", "1K", "--iters", "2",
                     "--warmup", "1", "--timeout", "60", "--concurrency", "both", "-o", str(out),
                     env={"PARPLAN_BENCH_FAIL_RANK": "2", "PARPLAN_BENCH_FAIL_ITEM": "0",
                          "PARPLAN_BENCH_FAIL_MODE": "corrupt"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out, proc


def test_two_ranks_measure_every_collective_correctly(two_ranks):
    out, proc = two_ranks
    rows = load_results([out])
    coll = [r for r in rows if r.kind == "collective"]
    assert {r.op for r in coll} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast",
                                    "send_recv"}
    assert {r.group for r in coll} == {"world"}
    assert sorted({r.size_bytes for r in coll if r.op == "all_reduce"}) == [2**i for i in range(3, 15)]
    assert all(r.correct and r.wrong == 0 for r in rows)
    for r in coll:
        assert (r.backend, r.device, r.world_size, r.group_size, r.group_class) == ("gloo", "cpu", 2, 2, "intra")
        assert r.time_min_s <= r.time_p10_s <= r.time_s <= r.time_p90_s <= r.time_max_s
        assert r.algbw_bytes_per_s == pytest.approx(r.size_bytes / r.time_s)
        assert r.busbw_bytes_per_s == pytest.approx(r.algbw_bytes_per_s * bus_factor(r.op, 2))
        assert r.iters == 3 and r.warmup == 1 and r.count * 4 == r.size_bytes
    matmuls = [r for r in rows if r.kind == "matmul"]
    assert {(r.m, r.k, r.n) for r in matmuls} >= {(64, 64, 64), (1, 64, 64), (32, 64, 64)}
    assert all(r.flops == 2.0 * r.m * r.k * r.n and r.flops_per_s > 0 for r in matmuls)
    copies = [r for r in rows if r.kind == "copy"]
    assert all(r.bytes_moved == 2 * r.size_bytes and r.bandwidth_bytes_per_s > 0 for r in copies)


def test_two_ranks_write_csv_jsonl_meta_and_plots(two_ranks):
    out, proc = two_ranks
    assert load_results([out / "results.csv"]) == load_results([out / "results.jsonl"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["world_size"] == 2 and meta["backend"] == "gloo"
    assert meta["rows"] == len(load_results([out]))
    for png in ("busbw.png", "matmul.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "[bench]" in proc.stderr and f"wrote {meta['rows']} rows" in proc.stderr
    assert f"results in {out}" in proc.stdout


def test_calibrate_and_compare_real_rows(two_ranks, tmp_path):
    out, _ = two_ranks
    profile = tmp_path / "cpu-gloo.yaml"
    proc = run_bench("calibrate", str(out), "-o", str(profile), "--hw", "a100")
    assert proc.returncode == 0, proc.stderr
    hw = load_hardware(str(profile))
    assert {(f.op, f.group, f.ranks) for f in hw.collective_fits} >= {("all_reduce", "intra", 2),
                                                                     ("send_recv", "intra", 2)}
    assert hw.matmul_curve is not None and hw.kernel_overhead_s < 1e-3
    proc = run_bench("compare", str(out), "--hw", str(profile), "-o", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    assert "all_reduce world (intra, 2)" in proc.stdout
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_four_ranks_measure_mesh_subgroups(four_ranks):
    out, _ = four_ranks
    coll = load_results([out])
    groups = {(r.group, r.group_size, r.group_stride, r.group_count) for r in coll}
    assert groups == {("world", 4, 1, 1), ("contig2", 2, 1, 2), ("strided2", 2, 2, 2),
                      ("contig2-alone", 2, 1, 1), ("strided2-alone", 2, 2, 1)}
    for group in ("strided2", "strided2-alone", "contig2-alone"):
        assert {r.op for r in coll if r.group == group} == {"all_reduce", "all_gather", "reduce_scatter",
                                                             "all_to_all", "broadcast", "send_recv"}
    assert json.loads((out / "meta.json").read_text())["config"]["concurrency"] == ["all", "one"]
    assert all(r.busbw_bytes_per_s == pytest.approx(r.algbw_bytes_per_s * bus_factor(r.op, r.group_size))
               for r in coll)


def test_result_checks_catch_a_corrupted_rank(four_ranks):
    out, proc = four_ranks
    rows = load_results([out])
    assert (rows[0].op, rows[0].group, rows[0].correct) == ("all_reduce", "world", False) and rows[0].wrong > 0
    assert all(r.correct for r in rows[1:])
    assert "1 rows FAILED the correctness check" in proc.stderr


def test_a_dying_rank_ends_the_run_with_one_line_and_keeps_rows(tmp_path):
    out = tmp_path / "run"
    proc = run_bench("bench", "--nproc", "2", "--suite", "collectives", "--ops", "all_reduce,all_gather",
                     "--max-bytes", "1K", *QUICK, "-o", str(out),
                     env={"PARPLAN_BENCH_FAIL_RANK": "1", "PARPLAN_BENCH_FAIL_ITEM": "4"})
    line = error_line(proc)
    assert line.startswith("Error: rank 1 exited with code 17 during all_reduce of 128 B on group world")
    assert "finished rows are kept" in line
    rows = load_results([out])
    assert [r.size_bytes for r in rows] == [8, 16, 32, 64] and all(r.correct for r in rows)
    assert (out / "torchrun.log").exists()


def test_a_hanging_rank_times_out_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run_bench("bench", "--nproc", "2", "--suite", "collectives", "--ops", "all_reduce",
                     "--max-bytes", "64", "--iters", "2", "--warmup", "1", "--timeout", "2", "-o", str(out),
                     env={"PARPLAN_BENCH_FAIL_RANK": "1", "PARPLAN_BENCH_FAIL_ITEM": "2",
                          "PARPLAN_BENCH_FAIL_MODE": "hang"})
    line = error_line(proc)
    assert "rank 0: all_reduce of 32 B on group world did not finish within 2 s" in line
    assert "rank 1 reported no error" in line
    assert len(load_results([out])) == 2


def test_worker_alone_times_a_layer_forward_and_backward(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nlayers: 2\nhidden: 64\nheads: 4\nkv_heads: 2\nffn_hidden: 96\n"
                    "activation: swiglu\nnorm: rmsnorm\nvocab: 1000\nseq_len: 32\n")
    out = tmp_path / "run"
    proc = run_bench("--suite", "layer", "--model", str(spec), "--model", "gpt3-125m", "--seq", "8",
                     "--micro-batch", "2", "--iters", "2", "--warmup", "1", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = load_results([out])
    assert [(r.kind, r.model, r.op) for r in rows] == [("layer", "tiny", "forward"), ("layer", "tiny", "backward"),
                                                         ("layer", "gpt3-125m", "forward"),
                                                         ("layer", "gpt3-125m", "backward")]
    fwd, bwd = rows[0], rows[1]
    assert "b=2 s=8 h=64 heads=4 kv_heads=2 head_dim=16 ffn=96 act=swiglu" in fwd.shape
    assert bwd.flops == 2 * fwd.flops and fwd.flops_per_s == pytest.approx(fwd.flops / fwd.time_s)
    assert all(r.correct and r.world_size == 1 for r in rows)


def test_worker_bad_argument_gives_one_line():
    proc = run_bench("--suite", "layer")
    assert error_line(proc) == "Error: the layer suite needs --model NAME (a model name or YAML file)"
    proc = run_bench("--groups", "3", "--suite", "collectives", "--max-bytes", "8")
    assert error_line(proc) == "Error: rank 0: --groups: group size 3 is larger than the 1 ranks"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_gpu_script_runs_on_the_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PARPLAN_BENCH_DEVICE="cpu", PYTHON=sys.executable)
    proc = subprocess.run(["bash", "scripts/gpu_bench.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("matmul", "copy", "layer-gpt3", "layer-llama", "collectives-1gpu"):
        assert load_results([tmp_path / step]), step
    assert load_hardware(str(tmp_path / "calibrated.yaml")).matmul_curve is not None
    assert (tmp_path / "compare-calibrated" / "compare.csv").exists()
    assert (tmp_path / "compare-base" / "compare.csv").exists()
    assert "failed steps" not in proc.stdout


def test_pattern_and_wrong_counts():
    import torch

    from parplan.bench.measure import count_wrong, pattern

    cpu = torch.device("cpu")
    for start in range(4):
        expected = [float((start + i) % 3 + 1) for i in range(10)]
        assert pattern(10, "fp32", cpu, start).tolist() == expected
    exact = torch.full((6,), 84.0, dtype=torch.bfloat16)
    assert count_wrong(exact, exact.clone(), "bf16", 8) == 0
    off = exact.clone()
    off[2] = 85.0
    assert count_wrong(off, exact, "bf16", 8) == 1
    # Above 256 a bf16 sum rounds; a rounding difference is not an error, a wrong value is.
    big = torch.full((4,), 3000.0, dtype=torch.bfloat16)
    rounded = big + 8.0  # one bf16 step at this magnitude is 16: within n * eps
    assert count_wrong(rounded, big, "bf16", 64) == 0
    assert count_wrong(big * 2, big, "bf16", 64) == 4


def test_step_suite_times_whole_fsdp2_steps_on_two_gloo_ranks_and_compare_predicts_them(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nlayers: 2\nhidden: 64\nheads: 4\nkv_heads: 2\nffn_hidden: 96\n"
                    "activation: swiglu\nnorm: rmsnorm\nvocab: 1000\nseq_len: 32\n")
    out = tmp_path / "run"
    proc = run_bench("bench", "--nproc", "2", "--suite", "step", "--model", str(spec), "--seq", "16",
                     "--micro-batch", "2", "--micro-batches", "2", "--step-modes", "eager,compiled-fp8-rowwise",
                     "--iters", "2", "--warmup", "1", "--timeout", "120", "-o", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "skipped step" in said and "FP8 steps need a GPU" in said
    rows = load_results([out])
    assert [(r.kind, r.op, r.world_size) for r in rows] == [("step", "eager", 2)]
    row = rows[0]
    assert row.shape.startswith("b=2 s=16 m=2 layers=2 h=64")
    # forward and backward of both micro-batches plus the optimizer make up the median step
    parts = row.forward_s + row.backward_s + row.optimizer_s
    assert 0 < parts and row.time_min_s <= row.time_s <= row.time_max_s
    # the spec's defaults: biases, a tied table; learned positions for the 16 tokens run
    from parplan.specs.model_loader import load_model
    assert row.params == load_model(str(spec)).total_params() - (32 - 16) * 64
    proc = run_bench("compare", str(out), "--hw", "a100-80gb")
    assert proc.returncode == 0, proc.stderr
    assert "step eager" in proc.stdout
    import csv
    got = list(csv.DictReader(open(out / "compare.csv")))
    assert got[0]["kind"] == "step" and float(got[0]["predicted_s"]) > 0


def test_an_fsdp_mode_shards_one_rank_and_compare_predicts_zero3(tmp_path):
    """``-fsdp`` wraps the blocks in FSDP2 on a single rank (its copies and hooks with no network); compare
    then predicts the row as ZeRO-3 over a group of one (FSDP2's copies, no collective time)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nlayers: 2\nhidden: 64\nheads: 4\nkv_heads: 2\nffn_hidden: 96\n"
                    "activation: swiglu\nnorm: rmsnorm\nvocab: 1000\nseq_len: 32\n")
    out = tmp_path / "run"
    proc = run_bench("bench", "--nproc", "1", "--suite", "step", "--model", str(spec), "--seq", "16",
                     "--micro-batch", "2", "--step-modes", "eager,eager-fsdp", "--iters", "2", "--warmup", "1",
                     "--timeout", "120", "-o", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = load_results([out])
    assert [(r.kind, r.op, r.world_size) for r in rows] == [("step", "eager", 1), ("step", "eager-fsdp", 1)]
    from parplan.calibrate.compare import step_setup
    from parplan.specs.hardware import load_hardware
    hw = load_hardware("a100-80gb")
    plain, sharded = (step_setup(r, hw)[2] for r in rows)
    assert (plain.zero, sharded.zero, sharded.dp) == (0, 3, 1)


def test_step_modes_are_checked():
    proc = run_bench("--suite", "step", "--model", "gpt3-125m", "--step-modes", "jit")
    assert "unknown mode 'jit'" in error_line(proc)
    proc = run_bench("--suite", "step")
    assert error_line(proc) == "Error: the step suite needs --model NAME (a model name or YAML file)"


def test_block_recompute_checkpoints_the_first_blocks_and_keeps_the_numbers():
    """The bench model with its first N blocks under torch.utils.checkpoint: the same loss and gradients, and the
    recomputed blocks' forwards run again in the backward (each checkpointed block's forward starts twice:
    non-reentrant checkpointing stops a recompute once it has rebuilt what the backward needs)."""
    import torch
    from parplan.bench.step import step_model, time_step
    from parplan.specs.model_loader import model_from_dict

    spec = model_from_dict({"name": "t", "layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn_hidden": 128,
                            "activation": "swiglu", "vocab": 100, "seq_len": 16, "norm": "rmsnorm",
                            "position": "rope"}, "t")
    cpu = torch.device("cpu")
    tokens = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(1))
    results = []
    for k in (0, 2, 4):
        model, loss_fn = step_model(spec, 16, cpu, recompute_layers=k)
        calls = [0] * 4
        for i, block in enumerate(model.layers):
            block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        loss = loss_fn(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        assert calls == [2] * k + [1] * (4 - k)
        results.append((loss.item(), model.layers[0].wq.weight.grad.clone()))
    for loss, grad in results[1:]:
        assert loss == pytest.approx(results[0][0])
        assert torch.allclose(grad, results[0][1], atol=1e-6)
    assert time_step(spec, 16, 2, cpu, iters=1, warmup=1, recompute_layers=2).step_s > 0
