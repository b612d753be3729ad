"""Emitted launch configs run the plan: each is read back by the framework's own parser, and by
``estimate --from-config`` into the same prediction."""
from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.plan.emitters import emit, problem, read_config
from parplan.plan.emitters.megatron import megatron_flags
from parplan.specs.model_loader import load_model
from tests.helpers import software

CASES = {  # target -> plan options that give it a plan using its distinctive knobs
    "megatron": ("--model", "gpt3", "--hw", "a100x512"),
    "torchtitan": ("--model", "llama3.1-70b", "--hw", "h100x64"),
    "deepspeed": ("--model", "llama3.1-8b", "--hw", "a100x64"),
    "llm-foundry": ("--model", "llama3.1-8b", "--hw", "h100x16"),
    "maxtext": ("--model", "llama3.1-8b", "--hw", "tpu-v5px2x128"),
}
SUFFIX = {"megatron": ".sh", "torchtitan": ".toml", "deepspeed": ".json", "llm-foundry": ".yaml", "maxtext": ".yml"}


@pytest.mark.parametrize("target", list(CASES))
def test_emit_read_back_predicts_the_plan(run_cli, tmp_path, target):
    """plan --emit X, then estimate --from-config: the same step time as the plan for X's framework."""
    base = CASES[target]
    rc, out, err = run_cli("plan", *base, "--emit", target)
    assert rc == 0, err
    path = tmp_path / f"launch{SUFFIX[target]}"
    path.write_text(out)
    rc, plans, err = run_cli("plan", *base, "--emit", target, "--format", "json", "--top", "1")
    assert rc == 0, err
    best = json.loads(plans)[0]
    rc, est, err = run_cli("estimate", *base, "--from-config", str(path), "--format", "json")
    assert rc == 0, err
    assert json.loads(est)["step_time_s"] == pytest.approx(best["step_time_s"], rel=1e-9)


def test_torchtitan_batch_is_the_plans_micro_batch():
    m = load_model("llama3.1-8b")
    toml = emit("torchtitan", Layout(tp=2, pp=1, dp=8, micro_batch=2, global_batch=64, zero=3, sp=True,
                                     seq_len=8192), m)
    assert "local_batch_size = 2" in toml and "global_batch_size = 64" in toml


def test_frameworks_that_cannot_run_a_plan_say_so():
    m = load_model("llama3.1-8b")
    assert "ZeRO" in problem("torchtitan", Layout(dp=8, zero=1, seq_len=8192), m)
    assert "Ulysses" in problem("deepspeed", Layout(dp=4, cp=2, cp_mode="ring", seq_len=8192), m)
    assert "pipeline engine" in problem("deepspeed", Layout(pp=2, dp=4, zero=2, seq_len=8192), m)
    assert "tensor parallelism" in problem("llm-foundry", Layout(tp=2, dp=4, seq_len=8192), m)
    assert problem("megatron", Layout(tp=2, dp=4, zero=1, seq_len=8192), m) is None
    with pytest.raises(ParplanError, match="--emit torchtitan"):
        emit("torchtitan", Layout(dp=8, zero=1, seq_len=8192), m)


def test_emit_of_a_plan_the_framework_cannot_run_is_one_line(run_cli):
    rc, out, err = run_cli("plan", "--model", "llama3.1-8b", "--hw", "a100x64", "--emit", "torchtitan", "--zero", "1")
    assert rc == 1 and err.startswith("Error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    rc, _, err = run_cli("plan", "--model", "llama3.1-8b", "--hw", "a100x64", "--emit", "megatron",
                         "--framework", "torchtitan")
    assert rc == 1 and "contradicts --framework torchtitan" in err


def test_emit_implies_the_targets_framework(run_cli):
    base = ("plan", "--model", "llama3.1-8b", "--hw", "a100x64", "--format", "json", "--top", "3")
    rc, out, err = run_cli(*base, "--emit", "llm-foundry")
    assert rc == 0, err
    plans = json.loads(out)
    assert all(p["tp"] == 1 and p["pp"] == 1 and p["zero"] in (0, 2, 3) for p in plans)


def test_serving_flags_carry_the_serving_plan(run_cli):
    base = ("plan", "--mode", "inference", "--model", "llama3.1-70b", "--hw", "h100x8", "--input-len", "2048",
            "--output-len", "256", "--kv-dtype", "fp8")
    rc, plans, err = run_cli(*base, "--format", "json", "--top", "1")
    assert rc == 0, err
    best = json.loads(plans)[0]
    for target, batch_flag, context_flag, kv in (("vllm", "--max-num-seqs", "--max-model-len", "fp8"),
                                                 ("sglang", "--max-running-requests", "--context-length", "fp8_e4m3")):
        rc, out, err = run_cli(*base, "--emit", target)
        assert rc == 0, err
        words = out.split()
        flag = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        assert flag["--tensor-parallel-size"] == str(best["tp"]) and flag["--pipeline-parallel-size"] == str(best["pp"])
        assert flag[batch_flag] == str(best["batch"]) and flag[context_flag] == "2304" and flag["--kv-cache-dtype"] == kv
    rc, _, err = run_cli(*base, "--emit", "megatron")
    assert rc == 1 and err.startswith("Error:")


def test_megatron_flags_are_megatrons():
    """Every emitted flag is one Megatron-LM core_v0.14.0 parses (megatron_flags.txt, from its arguments.py)."""
    m = load_model("llama3.1-70b")
    from parplan.specs.framework_loader import load_framework
    from parplan.specs.framework import resolve_software

    sw = resolve_software(load_framework("megatron-core"), dtype="fp8", fp8_recipe="blockwise")
    for lay in (Layout(tp=8, pp=4, dp=2, cp=2, vpp=5, schedule="interleaved", sp=True, zero=1, micro_batch=1,
                       global_batch=64, recompute="full", dtype="fp8", cp_mode="ring"),
                Layout(tp=8, dp=8, zero=3, recompute="selective", global_batch=64)):
        flags = [a[2:] for a in emit("megatron", lay, m, sw).split() if a.startswith("--")]
        assert flags and set(flags) <= megatron_flags(), set(flags) - megatron_flags()
    assert len(megatron_flags()) > 400


def test_unknown_and_contradictory_keys_are_one_line(tmp_path):
    m = load_model("llama3.1-8b")
    cases = {"a.json": '{"train_batch_size": 64, "train_micro_batch_size_per_gpu": 1, '
                       '"gradient_accumulation_steps": 2}',
             "b.json": '{"train_batch": 64}',
             "c.sh": "--tensor-model-parallel-size 2 --num-layers 80",
             "d.sh": "--tensor-model-parallel-size 2 --not-a-megatron-flag 1",
             "e.yaml": "global_train_batch_size: 64\nfsdp_config: {sharding_strategy: HALF_SHARD}\n",
             "f.toml": "[parallelism]\ntensor_parallel_degree = 3\n",
             "g.sh": "--tensor-model-parallel-size 2 --num-layers x"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ParplanError):
            read_config(str(tmp_path / name), 8, m)


def test_command_line_flags_override_the_config(run_cli, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}}')
    base = ("estimate", "--model", "llama3.1-8b", "--hw", "a100x32", "--from-config", str(path), "--format", "json")
    rc, a, err = run_cli(*base)
    assert rc == 0, err
    rc, b, err = run_cli(*base, "--zero", "1")
    assert rc == 0, err
    rc, c, err = run_cli("estimate", "--model", "llama3.1-8b", "--hw", "a100x32", "--framework", "deepspeed",
                         "--zero", "1", "--micro-batch", "2", "--global-batch", "64", "--format", "json")
    assert json.loads(b)["step_time_s"] == pytest.approx(json.loads(c)["step_time_s"], rel=1e-9)
    assert json.loads(a)["memory_bytes"]["total"] < json.loads(b)["memory_bytes"]["total"]


def _torchtitan_config_manager():
    """torchtitan 0.2.2's ConfigManager without the package __init__ (which imports triton, absent on CPU)."""
    pytest.importorskip("tomllib")
    spec = importlib.util.find_spec("torchtitan")
    if spec is None:
        pytest.skip("torchtitan not installed (pip install '.[emit-check]')")
    if "torchtitan" not in sys.modules:
        pkg = types.ModuleType("torchtitan")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec  # find_spec on a module without one raises (tests on the same worker ask for it)
        sys.modules["torchtitan"] = pkg
    manager = importlib.import_module("torchtitan.config.manager")
    if not hasattr(manager.ConfigManager, "_dict_to_dataclass"):
        pytest.skip("torchtitan newer than 0.2.2 reads no TOML")
    return manager.ConfigManager


def test_torchtitan_parses_the_emitted_toml(tmp_path):
    ConfigManager = _torchtitan_config_manager()
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    m = load_model("llama3.1-70b")
    sw = resolve_software(load_framework("torchtitan"), dtype="fp8", compiled=True, fp8_recipe="rowwise")
    lay = Layout(tp=4, pp=4, dp=2, cp=2, vpp=2, schedule="interleaved", sp=True, zero=2, micro_batch=2,
                 global_batch=64, recompute="selective-op", dtype="fp8", cp_mode="ring", seq_len=8192)
    path = tmp_path / "t.toml"
    path.write_text(emit("torchtitan", lay, m, sw))
    c = ConfigManager().parse_args(["--job.config_file", str(path)])
    p, t = c.parallelism, c.training
    assert (p.tensor_parallel_degree, p.pipeline_parallel_degree, p.context_parallel_degree,
            p.data_parallel_shard_degree, p.data_parallel_replicate_degree) == (4, 4, 2, 2, 1)
    assert p.pipeline_parallel_microbatch_size == 2 and t.local_batch_size == 32 and t.global_batch_size == 64
    # Interleaved1F1B runs two stages per rank unless told otherwise: vpp=2 needs no stage key (v0.2.2 pipeline_llm)
    assert p.pipeline_parallel_schedule == "Interleaved1F1B" and p.pipeline_parallel_layers_per_stage is None
    assert p.fsdp_reshard_after_forward == "never" and p.context_parallel_rotate_method == "alltoall"
    assert (c.activation_checkpoint.mode, c.activation_checkpoint.selective_ac_option) == ("selective", "op")
    assert c.compile.enable and c.quantize.linear.float8.recipe_name == "rowwise" and t.seq_len == 8192
    back = read_config(str(path), 64, m)
    assert {k: back.layout[k] for k in ("tp", "pp", "cp", "dp", "micro_batch", "global_batch", "vpp", "zero",
                                        "recompute", "cp_mode")} == \
        dict(tp=4, pp=4, cp=2, dp=2, micro_batch=2, global_batch=64, vpp=2, zero=2, recompute="selective-op",
             cp_mode="ring")


def test_deepspeed_parses_the_emitted_json(monkeypatch):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime import config as ds_config

    m = load_model("llama3.1-8b")
    lay = Layout(tp=2, pp=2, dp=4, micro_batch=2, global_batch=64, zero=1, recompute="full", dtype="bf16")
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)  # one process stands for the job
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *a, **k: lay.dp)
    c = ds_config.DeepSpeedConfig(json.loads(emit("deepspeed", lay, m)))
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (64, 2, 8)
    assert c.zero_optimization_stage == 1 and c.bfloat16_config.enabled
    assert c.pipeline["stages"] == 2 and c.pipeline["activation_checkpoint_interval"] == 1


def test_megatron_yaml_and_explain_read_the_same_layout(run_cli, tmp_path):
    """A NeMo-style YAML (Megatron names under ``model``) and the same flags give one prediction."""
    (tmp_path / "n.yaml").write_text("model:\n  tensor_model_parallel_size: 8\n  pipeline_model_parallel_size: 8\n"
                                     "  micro_batch_size: 1\n  global_batch_size: 512\n  sequence_parallel: true\n"
                                     "  recompute_granularity: selective\n  num_layers: 96\n")
    (tmp_path / "f.sh").write_text("torchrun pretrain_gpt.py --tensor-model-parallel-size 8 \\\n"
                                   "  --pipeline-model-parallel-size 8 --micro-batch-size 1 --global-batch-size 512 "
                                   "--sequence-parallel --recompute-granularity selective  # the 2022 run\n")
    base = ("--model", "gpt3", "--hw", "a100x512", "--format", "json")
    outs = []
    for name in ("n.yaml", "f.sh"):
        rc, out, err = run_cli("explain", *base, "--from-config", str(tmp_path / name))
        assert rc == 0, err
        outs.append(json.loads(out))
    rc, out, err = run_cli("estimate", *base, "--tp", "8", "--pp", "8", "--micro-batch", "1", "--global-batch", "512",
                           "--sp", "--recompute", "selective")
    assert rc == 0, err
    assert outs[0]["step_time_s"] == outs[1]["step_time_s"] == pytest.approx(json.loads(out)["step_time_s"], rel=1e-12)
    rc, _, err = run_cli("estimate", *base, "--from-config", str(tmp_path / "n.yaml"), "--mode", "inference")
    assert rc == 1 and err.startswith("Error:")


@pytest.mark.parametrize("target,framework,layout,options", [
    ("torchtitan", "torchtitan", Layout(tp=2, dp=4, zero=3, shard_group=2, sp=True, micro_batch=2, global_batch=64,
                                        recompute="selective-layer", dtype="fp8"),
     dict(compiled=True, tp_overlap="collective-matmul")),
    ("torchtitan", "torchtitan", Layout(pp=2, dp=4, vpp=2, schedule="interleaved", zero=2, micro_batch=1,
                                        global_batch=64, recompute="full"), {}),
    ("megatron", "megatron-core", Layout(tp=2, pp=2, dp=2, vpp=2, schedule="interleaved", sp=True, zero=1,
                                         shard_group=1, global_batch=64, recompute="selective", dtype="fp8"),
     dict(fp8_recipe="tensorwise", tp_overlap="collective-matmul")),
    ("deepspeed", "deepspeed", Layout(tp=2, pp=2, dp=2, zero=1, micro_batch=2, global_batch=64, recompute="full",
                                      dtype="fp16"), {}),
    ("llm-foundry", "llm-foundry", Layout(dp=8, zero=3, shard_group=4, micro_batch=2, global_batch=64,
                                          recompute="full", dtype="fp8"), dict(compiled=True)),
])
def test_every_knob_survives_the_round_trip(tmp_path, target, framework, layout, options):
    from dataclasses import replace

    from parplan.layouts.rules import check_layout
    from parplan.specs.cluster import load_cluster
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework
    from parplan.step.train import estimate

    m, cl = load_model("llama3.1-8b"), load_cluster("h100x8")
    layout = replace(layout, seq_len=4096)
    sw = resolve_software(load_framework(framework), dtype=layout.dtype, **options)
    lay = check_layout(layout, m, cl, sw.framework)
    path = tmp_path / f"launch{SUFFIX[target]}"
    path.write_text(emit(target, lay, m, sw))
    back = read_config(str(path), cl.devices, m)
    fields = {k: v for k, v in back.layout.items() if v is not None or k == "shard_group"}
    fields.setdefault("seq_len", 4096)  # DeepSpeed's JSON has none
    sw2 = resolve_software(load_framework(back.framework), dtype=fields["dtype"], compiled=back.compiled,
                           fp8_recipe=back.fp8_recipe, tp_overlap=back.tp_overlap)
    lay2 = check_layout(Layout(**fields), m, cl, sw2.framework)
    assert sw2.name == sw.name and sw2.compiled == sw.compiled and sw2.fp8_recipe == sw.fp8_recipe
    assert sw2.tp_overlap == sw.tp_overlap
    assert float(estimate(m, cl, lay2, software=sw2).step_time_s) == \
        pytest.approx(float(estimate(m, cl, lay, software=sw).step_time_s), rel=1e-9)


def test_megatron_writes_and_reads_the_split():
    """7 | 8 x 14 | 7 of a 126-layer model: Megatron-Core's first/last-stage flags; interleaved by 2 the ends' 7
    layers are odd, so the embedding and loss count as layers (--account-for-*) with the virtual stages named."""
    m = load_model("llama3.1-405b")
    flat = Layout(tp=8, pp=16, dp=16, micro_batch=1, global_batch=512, first_stage_layers=7, last_stage_layers=7)
    text = emit("megatron", flat, m)
    assert "--decoder-first-pipeline-num-layers 7" in text and "--decoder-last-pipeline-num-layers 7" in text
    inter = Layout(tp=8, pp=16, dp=16, vpp=2, schedule="interleaved", micro_batch=1, global_batch=512,
                   first_stage_layers=7, last_stage_layers=7)
    text = emit("megatron", inter, m)
    assert "--account-for-embedding-in-pipeline-split" in text and "--account-for-loss-in-pipeline-split" in text
    assert "--num-virtual-stages-per-pipeline-rank 2" in text and "decoder-first" not in text
    assert {a[2:] for a in text.split() if a.startswith("--")} <= megatron_flags()
    for lay, source in ((flat, emit("megatron", flat, m)), (inter, text)):
        back = read_config_text(source, ".sh", 2048, m)
        assert (back.layout["first_stage_layers"], back.layout["last_stage_layers"], back.layout["vpp"]) == \
            (7, 7, lay.vpp)
    even = Layout(tp=8, pp=8, dp=32, micro_batch=1, global_batch=512)
    assert "pipeline-num-layers" not in emit("megatron", even, load_model("llama3.1-70b"))
    # Interleaved by 3, the ranks' 7 and 8 layers make uneven chunks: only a layout string gives them, chunk-major,
    # the first rank's chunks 2, 2, 3 (the embedding's first), the last rank's 3, 2, 2.
    three = Layout(tp=8, pp=16, dp=16, vpp=3, schedule="interleaved", micro_batch=1, global_batch=512,
                   first_stage_layers=7, last_stage_layers=7)
    text = emit("megatron", three, m)
    assert "--pipeline-model-parallel-layout" in text and "--num-virtual-stages" not in text
    string = text.split("--pipeline-model-parallel-layout ")[1].split()[0].strip("'")
    stages = string.split("|")
    assert len(stages) == 48 and stages[0] == "Ett" and stages[15] == "ttt" and stages[-1] == "ttL"
    assert sum(x.count("t") for x in stages) == 126
    back = read_config_text(text, ".sh", 2048, m)
    assert (back.layout["first_stage_layers"], back.layout["last_stage_layers"], back.layout["vpp"]) == (7, 7, 3)


def test_megatron_reads_a_repeated_layout_string_and_the_moe_overlap():
    """DeepSeek-V3's recipe layout 'Et|(tt|)*30mL' over pp=8: 32 virtual stages, the first rank 1+2+2+2 = 7
    layers, the last 2+2+2+0 = 6; --overlap-moe-expert-parallel-comm reads back as --moe-overlap micro-batch."""
    m = load_model("deepseek-v3")
    source = ("--tensor-model-parallel-size 2 --pipeline-model-parallel-size 8 --expert-model-parallel-size 64 "
              "--pipeline-model-parallel-layout 'Et|(tt|)*30mL' --mtp-num-layers 1 --overlap-moe-expert-parallel-comm "
              "--delay-wgrad-compute --micro-batch-size 1 --global-batch-size 8192\n")
    back = read_config_text(source, ".sh", 1024, m)
    assert (back.layout["first_stage_layers"], back.layout["last_stage_layers"], back.layout["vpp"]) == (7, 6, 4)
    assert back.moe_overlap == "micro-batch"
    sw = software("megatron-core", moe_overlap="micro-batch")
    lay = Layout(tp=2, pp=8, dp=64, vpp=4, schedule="interleaved", micro_batch=1, global_batch=8192,
                 first_stage_layers=7, last_stage_layers=6, axes=(("ep", 64), ("etp", 1)))
    text = emit("megatron", lay, m, sw)
    assert "--overlap-moe-expert-parallel-comm" in text and "--delay-wgrad-compute" in text
    assert read_config_text(text, ".sh", 1024, m).moe_overlap == "micro-batch"


def test_megatron_writes_and_reads_back_the_deepep_dispatcher():
    m = load_model("deepseek-v3")
    lay = Layout(tp=2, pp=8, dp=64, vpp=4, schedule="interleaved", micro_batch=1, global_batch=8192,
                 first_stage_layers=7, last_stage_layers=6, axes=(("ep", 64), ("etp", 1)))
    text = emit("megatron", lay, m, software("megatron-core", moe_dispatcher="deepep"))
    assert "--moe-token-dispatcher-type flex" in text and "--moe-enable-deepep" in text
    assert read_config_text(text, ".sh", 1024, m).moe_dispatcher == "deepep"
    plain = emit("megatron", lay, m, software("megatron-core"))
    assert "--moe-token-dispatcher-type alltoall" in plain and "deepep" not in plain
    assert read_config_text(plain, ".sh", 1024, m).moe_dispatcher is None


def read_config_text(text, suffix, world, model, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"launch{suffix}"
        path.write_text(text)
        return read_config(str(path), world, model)


def test_torchtitan_writes_the_split_and_the_zero_bubble_schedule():
    m = load_model("llama3.1-70b")
    lay = Layout(tp=4, pp=4, dp=4, vpp=2, schedule="interleaved", micro_batch=1, global_batch=64, zero=3, sp=True,
                 seq_len=8192, first_stage_layers=18, last_stage_layers=18)
    toml = emit("torchtitan", lay, m)
    assert "module_fqns_per_model_part" in toml and 'fsdp_reshard_after_forward = "always"' in toml
    back = read_config_text(toml, ".toml", 64, m)
    assert (back.layout["vpp"], back.layout["first_stage_layers"], back.layout["last_stage_layers"],
            back.layout["zero"]) == (2, 18, 18, 3)
    zb = Layout(tp=4, pp=4, dp=4, schedule="zb-h1", micro_batch=1, global_batch=64, sp=True, seq_len=8192)
    toml = emit("torchtitan", zb, m)
    assert 'pipeline_parallel_schedule = "InterleavedZeroBubble"' in toml and toml.count('"layers.0"') == 1
    back = read_config_text(toml, ".toml", 64, m)
    assert back.layout["schedule"] == "zb-h1" and back.layout["vpp"] == 1
    # torchtitan's own split of 80 layers over 4 ranks is 20 | 21 | 20 | 19 (the ends count a layer each)
    assert back.layout["first_stage_layers"] == 20 and back.layout["last_stage_layers"] == 19
    # Without a stage key torchtitan runs its multi-stage schedules with two stages per rank: ZB1P interleaved,
    # which the estimate refuses (the ZB-H1 bubble is the paper's, for one stage per rank)
    two = read_config_text('[parallelism]\npipeline_parallel_degree = 4\ntensor_parallel_degree = 4\n'
                           'pipeline_parallel_schedule = "InterleavedZeroBubble"\n', ".toml", 64, m)
    assert (two.layout["schedule"], two.layout["vpp"]) == ("zb-h1", 2)
    from parplan.layouts.rules import check_layout
    from parplan.specs.cluster import load_cluster
    from parplan.specs.framework_loader import load_framework
    with pytest.raises(ParplanError, match="one stage per rank"):
        check_layout(Layout(**dict(two.layout)), m, load_cluster("h100x64"), load_framework("torchtitan"))


def test_torchtitan_split_keys_are_read_as_torchtitan_splits():
    """pipeline_parallel_layers_per_stage 7 for 80 layers: ceil((80 + 1 + 1) / 7) = 12 stages, 3 per rank; the
    less-layers weights move layers off the ends."""
    m = load_model("llama3.1-70b")
    base = "[parallelism]\npipeline_parallel_degree = 4\ndata_parallel_shard_degree = 16\n"
    back = read_config_text(base + 'pipeline_parallel_schedule = "Interleaved1F1B"\n'
                            "pipeline_parallel_layers_per_stage = 7\n", ".toml", 64, m)
    assert (back.layout["vpp"], back.layout["first_stage_layers"]) == (3, None)
    back = read_config_text(base + "pipeline_parallel_first_stage_less_layers = 3\n", ".toml", 64, m)
    assert (back.layout["vpp"], back.layout["first_stage_layers"], back.layout["last_stage_layers"]) == (1, 18, 20)
    with pytest.raises(ParplanError, match="not a multiple of pipeline_parallel_degree"):
        read_config_text(base + "pipeline_parallel_layers_per_stage = 9\n", ".toml", 64, m)


def test_deepspeed_refuses_a_split_its_config_cannot_carry():
    """96 layers on 7 stages as 13 | 14 x 5 | 13: Megatron-DeepSpeed runs it (--pp-partition-method
    'type:transformer|embedding'), but a DeepSpeed JSON cannot say so; plain DeepSpeed runs only its own split."""
    from tests.helpers import software

    m = load_model("gpt3")
    assert problem("deepspeed", Layout(pp=7, global_batch=70), m) is None
    split = Layout(pp=7, global_batch=70, first_stage_layers=13, last_stage_layers=13)
    said = problem("deepspeed", split, m, software("megatron-deepspeed"))
    assert "carries no pipeline layer split" in said and "\n" not in said
    assert "only its own split" in problem("deepspeed", split, m)


@pytest.mark.parametrize("target,args", [
    ("megatron", ("--model", "llama3.1-405b", "--hw", "h100x2048", "--tp", "8", "--pp", "16", "--zero", "1",
                  "--micro-batch", "1", "--recompute", "full", "--sp")),
    ("torchtitan", ("--model", "llama3.1-70b", "--hw", "h100x64", "--tp", "4", "--pp", "4", "--zero", "3",
                    "--recompute", "full")),
])
def test_uneven_plans_round_trip(run_cli, tmp_path, target, args):
    """A plan whose split or interleaving is not the framework's default, emitted and read back: one prediction."""
    rc, out, err = run_cli("plan", *args, "--emit", target)
    assert rc == 0, err
    path = tmp_path / f"launch{SUFFIX[target]}"
    path.write_text(out)
    rc, plans, err = run_cli("plan", *args, "--emit", target, "--format", "json", "--top", "1")
    assert rc == 0, err
    best = json.loads(plans)[0]
    assert best["layout"]["first_stage_layers"] is not None or best["layout"]["vpp"] > 1
    rc, est, err = run_cli("estimate", *args[:4], "--from-config", str(path), "--format", "json")
    assert rc == 0, err
    assert json.loads(est)["step_time_s"] == pytest.approx(best["step_time_s"], rel=1e-9)


def test_megatron_writes_and_reads_the_recompute_modules_and_the_rank_order():
    m = load_model("qwen3-30b-a3b")
    lay = Layout(pp=2, dp=8, micro_batch=1, global_batch=512, recompute="norm-act", axes=(("ep", 8), ("etp", 1)))
    text = emit("megatron", lay, m)
    assert "--recompute-modules layernorm moe_act" in text and "--use-tp-pp-dp-mapping" not in text
    assert read_config_text(text, ".sh", 16, m).layout["recompute"] == "norm-act"
    dense = load_model("llama3.1-70b")
    inside = Layout(tp=8, pp=2, dp=8, micro_batch=1, global_batch=512, order=("tp", "cp", "pp", "dp"))
    text = emit("megatron", inside, dense)
    assert "--use-tp-pp-dp-mapping" in text
    assert tuple(read_config_text(text, ".sh", 128, dense).layout["order"]) == ("tp", "cp", "pp", "dp")
    with pytest.raises(ParplanError, match="--recompute-modules core_attn mlp: parplan models"):
        read_config_text("--recompute-granularity selective --recompute-modules mlp core_attn\n", ".sh", 16, m)
    yaml_back = read_config_text("recompute_granularity: selective\nrecompute_modules: [moe_act, layernorm]\n",
                                 ".yaml", 16, m)
    assert yaml_back.layout["recompute"] == "norm-act"
    ds = load_model("deepseek-v3")
    mla = Layout(pp=16, dp=16, micro_batch=1, global_batch=2048, recompute="mla-up-proj", axes=(("ep", 8), ("etp", 1)),
                 first_stage_layers=3, last_stage_layers=2)
    text = emit("megatron", mla, ds)
    assert "--recompute-modules mla_up_proj" in text
    assert read_config_text(text, ".sh", 256, ds).layout["recompute"] == "mla-up-proj"


def test_megatron_refuses_what_its_rank_mapping_and_layout_string_cannot_say():
    m = load_model("qwen3-30b-a3b")
    inside = Layout(pp=2, dp=8, micro_batch=1, global_batch=512, order=("tp", "cp", "pp", "dp"),
                    axes=(("ep", 8), ("etp", 1)))
    assert "--use-tp-pp-dp-mapping" in problem("megatron", inside, m)
    dense = load_model("llama3.1-70b")
    for source, words in (("--num-layers 80 --pipeline-model-parallel-size 4 "
                           "--pipeline-model-parallel-layout 'Et|(tt|)*10tL'\n", "places 22 transformer layers"),
                          ("--num-layers 80 --pipeline-model-parallel-size 2 --pipeline-model-parallel-layout "
                           "'((t)*99999)*99999'\n", "more than"),
                          ("--num-layers 80 --pipeline-model-parallel-size 2 --decoder-first-pipeline-num-layers 40 "
                           "--pipeline-model-parallel-layout 'E(t)*40|(t)*40L'\n", "excludes")):
        with pytest.raises(ParplanError, match=words):
            read_config_text(source, ".sh", 16, dense)
    assert read_config_text("--seq-length 4096 --recompute-granularity selective\n", ".sh", 8, dense).layout[
        "seq_len"] == 4096
