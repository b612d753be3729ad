"""bf16 optimizer state (NeMo's distributed_fused_adam dtype: bf16; Megatron-Core's precision-aware optimizer with
bf16 moments and the master's 16-bit remainders) halves the optimizer's bytes, in memory and in the step's traffic,
where the framework offers it and its distributed optimizer runs; a one-line refusal elsewhere."""
from dataclasses import replace

import pytest

from parplan.cost.elementwise import optimizer_bytes_per_param
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.plan.emitters import emit, read_config
from parplan.specs.cluster import load_cluster
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate
from tests.cli.test_bad_input import assert_one_line_error


def test_the_adam_step_reads_and_writes_each_state_at_its_width():
    # fused Adam, fp32 master copy: read master, m, v and the gradient, write master, m, v and the 16-bit weight
    assert optimizer_bytes_per_param("fused", "fp32-copy", 2) == 3 * 4 + 2 + 3 * 4 + 2
    assert optimizer_bytes_per_param("fused", "fp32-copy", 2, 2, 2) == 3 * 2 + 2 + 3 * 2 + 2
    assert optimizer_bytes_per_param("fused", "fp32-copy", 2, 4, 2) == (4 + 2 + 2) + 2 + (4 + 2 + 2) + 2
    # fp32 parameters are the weights themselves: only m and v narrow
    assert optimizer_bytes_per_param("fused", "fp32-params", 4, 4, 2) == (4 + 2 * 2) * 2 + 4


def test_bf16_state_halves_the_optimizer_memory_and_shortens_its_step():
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxmx8")
    lay = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=1, seq_len=4096)
    mcore = load_framework("megatron-core")
    fp32, bf16, moments = (estimate(model, cluster, lay, software=resolve_software(mcore, optimizer_states=s))
                           for s in ("fp32", "bf16", "bf16-moments"))
    assert bf16.memory_bytes["optimizer"] == pytest.approx(fp32.memory_bytes["optimizer"] / 2)
    assert moments.memory_bytes["optimizer"] == pytest.approx(bf16.memory_bytes["optimizer"])
    assert bf16.memory_bytes["weights"] == fp32.memory_bytes["weights"]
    assert bf16.breakdown_s["optimizer"] < fp32.breakdown_s["optimizer"]
    assert "bf16 optimizer state" in bf16.software.describe() and "optimizer" not in fp32.software.describe()


def test_a_framework_without_bf16_state_and_megatrons_flags_refuse_it():
    with pytest.raises(ParplanError, match="torchtitan' keeps its optimizer state in fp32; not 'bf16'"):
        resolve_software(load_framework("torchtitan"), optimizer_states="bf16")
    replicated = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=0, seq_len=4096)
    for states in ("bf16", "bf16-moments"):
        sw = resolve_software(load_framework("megatron-core"), optimizer_states=states)
        with pytest.raises(ParplanError, match=f"--optimizer-states {states} runs in megatron-core's distributed "
                                               f"optimizer: zero must be 1 or more, not 0"):
            estimate(load_model("llama3-8b"), load_cluster("h100-sxmx8"), replicated, software=sw)
    lay = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=1, seq_len=4096)
    bf16 = resolve_software(load_framework("megatron-core"), optimizer_states="bf16")
    with pytest.raises(ParplanError, match="--emit megatron: Megatron-LM's flags keep fp32 or fp16 main parameters"):
        emit("megatron", lay, load_model("llama3-8b"), bf16)
    assert "--use-distributed-optimizer" in emit("megatron", lay, load_model("llama3-8b"),
                                                 replace(bf16, optimizer_states="fp32"))


def test_bf16_moments_are_megatrons_precision_aware_flags_both_ways(tmp_path):
    model = load_model("llama3-8b")
    lay = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=1, seq_len=4096)
    moments = resolve_software(load_framework("megatron-core"), optimizer_states="bf16-moments")
    text = emit("megatron", lay, model, moments)
    flat = " ".join(text.replace("\\\n", " ").split())
    assert "--use-precision-aware-optimizer --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16" in flat
    path = tmp_path / "run.sh"
    path.write_text(text)
    assert read_config(str(path), 8, model).optimizer_states == "bf16-moments"
    path.write_text(text.replace("--exp-avg-dtype bf16", "--exp-avg-dtype fp8"))
    with pytest.raises(ParplanError, match="parplan models fp32 ones and bf16 moments"):
        read_config(str(path), 8, model)
    path.write_text(emit("megatron", lay, model))
    assert read_config(str(path), 8, model).optimizer_states is None


def test_the_cli_takes_the_flag_and_names_the_choices(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "llama3-8b", "--hw", "h100-sxmx8", "--dp", "8", "--zero", "3",
                                  "--framework", "llm-foundry", "--optimizer-states", "bf16"),
                          match="keeps its optimizer state in fp32; not 'bf16'")
    import json

    runs = {s: run_cli("estimate", "--model", "llama3-8b", "--hw", "h100-sxmx8", "--dp", "8", "--zero", "1",
                       "--optimizer-states", s, "--format", "json") for s in ("fp32", "bf16")}
    got = {s: json.loads(out) for s, (code, out, _) in runs.items() if code == 0}
    assert got["bf16"]["software"]["optimizer_states"] == "bf16"
    assert got["bf16"]["memory_bytes"]["optimizer"] == pytest.approx(got["fp32"]["memory_bytes"]["optimizer"] / 2)
    code, out, _ = run_cli("estimate", "--model", "llama3-8b", "--hw", "h100-sxmx8", "--dp", "8", "--zero", "1",
                           "--optimizer-states", "bf16-moments")
    assert code == 0 and "software megatron-core" in out and "bf16-moments optimizer state" in out


def test_a_nemo_config_with_bf16_distributed_fused_adam_reads_back_as_bf16_state(tmp_path):
    """Nemotron-4 340B's NeMo config (NeMo-Framework-Launcher conf/training/nemotron/nemotron_340b.yaml): optim
    distributed_fused_adam with dtype bf16, a sharded optimizer (zero 1) with 2-byte state."""
    import yaml

    model = load_model("llama3-8b")
    conf = {"model": {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1, "micro_batch_size": 1,
                      "global_batch_size": 64, "optim": {"name": "distributed_fused_adam", "dtype": "bf16"}}}
    path = tmp_path / "nemo.yaml"
    path.write_text(yaml.safe_dump(conf))
    read = read_config(str(path), 8, model)
    assert read.optimizer_states == "bf16" and read.layout["zero"] == 1
    conf["model"]["optim"] = {"name": "fused_adam"}
    path.write_text(yaml.safe_dump(conf))
    read = read_config(str(path), 8, model)
    assert read.optimizer_states is None and read.layout["zero"] == 0
