"""Mixture-of-experts plans: the search enumerates the expert axes for MoE models only, the launch configs write
and read back their MoE flags, serving searches expert parallelism, validate reads the MoE runs, and bad input
is one line."""
import json

import pytest

import parplan
from parplan.layouts.layout import Layout
from parplan.layouts.rules import check_layout
from parplan.plan.candidates import SearchSpace, candidates
from parplan.plan.emitters import emit, read_config
from parplan.plan.emitters.megatron import megatron_flags
from parplan.plan.planner import make_plan
from parplan.plan.serve_search import search_inference
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from tests.cli.test_bad_input import assert_one_line_error


def test_the_search_enumerates_expert_axes_for_moe_models_only():
    cl = parplan.load_cluster("h100x16")
    moe = candidates(parplan.load_model("mixtral-8x7b"), cl, SearchSpace(global_batch=64, seq_len=4096))
    assert set(moe["ep"]) == {1, 2, 4, 8}
    assert set(moe["etp"]) <= {1, 2, 4, 8} and {1}.issubset(set(moe["etp"]))
    ranks = moe["tp"] * moe["cp"] * moe["dp"]
    assert ((ranks % (moe["ep"] * moe["etp"])) == 0).all() and ((moe["etp"] == 1) | (moe["etp"] == moe["tp"])).all()
    dense = candidates(parplan.load_model("llama3.1-8b"), cl, SearchSpace(global_batch=64, seq_len=4096))
    assert "ep" not in dense and "etp" not in dense


def test_a_moe_plan_fixes_ep_and_describes_it():
    result = make_plan(parplan.load_model("qwen3-30b-a3b"), parplan.load_cluster("h100x8"), global_batch=64, top=2,
                       fixed={"ep": 4})
    assert all(lay.size("ep") == 4 for lay in result.layouts)
    assert "ep=4" in result.layouts[0].describe()


@pytest.mark.parametrize("target,framework", [("megatron", "megatron-core"), ("torchtitan", "torchtitan")])
def test_moe_launch_configs_round_trip(tmp_path, target, framework):
    m, cl = parplan.load_model("qwen3-30b-a3b"), parplan.load_cluster("h100x16")
    sw = resolve_software(load_framework(framework))
    lay = check_layout(Layout(tp=2, dp=8, sp=True, micro_batch=1, global_batch=64, seq_len=4096, zero=1 if
                              target == "megatron" else 3, axes=(("ep", 8), ("etp", 2 if target == "torchtitan" else 1))),
                       m, cl, sw.framework)
    text = emit(target, lay, m, sw)
    path = tmp_path / ("launch.toml" if target == "torchtitan" else "launch.sh")
    path.write_text(text if target == "torchtitan" else text.replace(" \\\n", " "))
    back = read_config(str(path), cl.devices, m)
    assert dict(back.layout["axes"]) == {"ep": 8, "etp": lay.size("etp")}
    if target == "megatron":
        flags = [a[2:] for a in text.split() if a.startswith("--")]
        assert {"num-experts", "moe-router-topk", "expert-model-parallel-size", "moe-ffn-hidden-size"} <= set(flags)
        assert set(flags) <= megatron_flags()
    else:
        assert "expert_parallel_degree = 8" in text


def test_megatron_mla_and_moe_layer_pattern_flags():
    m = parplan.load_model("deepseek-v3")
    lay = Layout(tp=2, pp=8, dp=8, micro_batch=1, global_batch=64, seq_len=4096, axes=(("ep", 8), ("etp", 1)),
                 first_stage_layers=7, last_stage_layers=6)  # 61 layers: 7 | 8 x 6 | 6
    text = emit("megatron", lay, m, resolve_software(load_framework("megatron-core")))
    assert "--multi-latent-attention" in text and "--kv-lora-rank 512" in text and "--qk-head-dim 128" in text
    assert "--moe-layer-freq '[0,0,0,1,1" in text and "--moe-shared-expert-intermediate-size 2048" in text
    assert "--moe-router-score-function sigmoid" in text


def test_deepspeed_refuses_expert_parallelism_in_one_line():
    from parplan.plan.emitters import problem

    m = parplan.load_model("mixtral-8x7b")
    said = problem("deepspeed", Layout(dp=8, global_batch=64, seq_len=4096, axes=(("ep", 8), ("etp", 1))), m)
    assert "ep_size=8" in said and "ds_config.json" in said


def test_serving_search_puts_expert_parallel_layouts_on_the_table():
    df = search_inference(parplan.load_model("mixtral-8x7b"), parplan.load_cluster("h100x8"), input_len=512,
                          output_len=64, batch=8)
    assert set(df["ep"]) == {1, 2, 4, 8}  # tensor-parallel experts, or whole experts over every tp of 2, 4, 8
    assert ((df["ep"] == 1) | (df["ep"] == df["tp"])).all()


def test_validate_reads_the_moe_runs_as_their_own_file():
    from parplan.validate.published import load_runs

    files = {r["_file"] for r in load_runs(None)}
    assert "moe-runs.yaml" in files


def test_cli_takes_ep_and_etp_and_refuses_bad_expert_input(run_cli):
    rc, out, err = run_cli("estimate", "--model", "mixtral-8x7b", "--hw", "h100x16", "--mesh", "tp=1,dp=16,ep=8",
                           "--global-batch", "64", "--seq", "4096", "--format", "json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["layout"]["ep"] == 8 and d["breakdown_s"]["ep_comm"] > 0 and "MoE load" in d["notes"][0]
    assert_one_line_error(run_cli("estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--ep", "2"),
                          match="dense model")
    assert_one_line_error(run_cli("estimate", "--model", "mixtral-8x7b", "--hw", "h100x24", "--ep", "3",
                                  "--global-batch", "24"), match="ep=3 does not divide the 8 routed experts")
    assert_one_line_error(run_cli("plan", "--model", "llama3.1-8b", "--hw", "h100x8", "--ep", "2"),
                          match="dense model")
