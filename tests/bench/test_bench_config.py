"""parplan bench without processes: sweep planning, the worker's options, the launcher's diagnosis and
the commands' error handling."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


from parplan.cli.bench_cmd import config_from_options, worker
from parplan.bench.launch import diagnose, exit_codes
from parplan.bench.state import RankState
from parplan.units import parse_bytes
from parplan.bench.config import BenchConfig, parse_concurrency, parse_ops, resolve
from parplan.bench.items import build_plan, collective_count, mesh_layouts, sizes
from parplan.cost.collectives import place
from parplan.errors import ParplanError
from parplan.specs.cluster import make_cluster
from parplan.specs.hardware import load_hardware
from tests.helpers import REPO, one_line_error, run_main


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
    # One group alone beside the same partition all at once: same members, one group communicating.
    both = {l.name: l for l in mesh_layouts(8, (4,), ("strided",), concurrency=("all", "one"))}
    assert list(both) == ["strided4", "strided4-alone"]
    alone = both["strided4-alone"]
    assert alone.members == both["strided4"].members and (alone.active, both["strided4"].active) == (1, 2)
    assert [r for r in range(8) if alone.runs(r)] == [0, 2, 4, 6] and all(both["strided4"].runs(r) for r in range(8))
    assert [l.name for l in mesh_layouts(8, (0, 2), ("contiguous",), concurrency=("one",))] == ["world",
                                                                                               "contig2-alone"]
    with pytest.raises(ParplanError, match="--concurrency must be all, one or both"):
        parse_concurrency("some")
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
                dtype="bf16", groups="world,2", layout="strided", concurrency="both", iters=7, warmup=2,
                timeout=42.0,
                matmul_dtypes="fp16", shapes="1x64x64,32x32x32", matmul_min=0, matmul_max=0, models=(),
                micro_batch=3, seq=128, layer_dtype="", device="cpu", backend="gloo", output="/tmp/x")
    config = config_from_options(opts)
    ctx = worker.make_context("worker", config.to_argv())
    assert config_from_options(ctx.params) == config


def test_commands_need_no_torch():
    code = ("import sys; import parplan.cli.bench_cmd, parplan.calibrate.fit, parplan.calibrate.compare, "
            "parplan.calibrate.nccl_tests, parplan.bench.launch; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


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


def test_step_sharded_reads_the_fsdp_suffix_and_the_world():
    from parplan.calibrate.rows import step_mode, step_sharded
    from parplan.errors import ParplanError

    assert step_sharded("eager", 1) is False and step_sharded("eager", 2) is True
    assert step_sharded("eager-fsdp", 1) is True
    assert step_sharded("compiled-fp8-tensorwise-fsdp", 1) is True
    assert step_mode("compiled-fp8-rowwise-fsdp") == (True, "rowwise")
    with pytest.raises(ParplanError, match="unknown step mode"):
        step_sharded("compiled-fsdp-fp8-tensorwise", 1)
