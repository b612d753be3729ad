"""What plan prints a person: conventions named, ties and placements explained, verdicts that do not depend
on how many plans are shown, time and money, and every fixed knob estimate takes."""
import json

import pytest

from parplan.plan.budget import budget, cost_per_token
from parplan.plan.planner import make_plan
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model


def test_mfu_names_its_convention_and_gives_the_causal_figure(run_cli):
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--seq", "32768",
                             "--global-batch", "8", "--format", "json")
    d = json.loads(out)
    assert code == 0 and "full attention" in d["mfu_definition"] and "causal" in d["mfu_causal_definition"]
    # At 32k tokens attention is a large share of the FLOPs: counting half of it lowers MFU visibly.
    assert 0.6 * d["mfu"] < d["mfu_causal"] < 0.95 * d["mfu"]
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--seq", "32768",
                             "--global-batch", "8")
    assert "full attention (PaLM App. B)" in out and "causal" in out


def test_an_mfu_above_the_matmul_ceiling_is_flagged():
    from parplan.layouts.layout import Layout
    from parplan.step.train import estimate
    from parplan.views.records import mfu_notes

    from parplan.specs.model import model_from_dict

    # Llama 3.2 1B's width with 128-wide heads at 131k tokens: attention is most of the work, and the
    # full-attention count doubles it.
    model = model_from_dict(dict(name="llama-1b", layers=16, hidden=2048, heads=16, kv_heads=8, ffn_hidden=8192,
                                 activation="swiglu", norm="rmsnorm", position="rope", bias=False,
                                 tied_embeddings=True, vocab=128256, seq_len=131072), "test")
    cluster = load_cluster("h100x1")
    est = estimate(model, cluster, Layout(global_batch=1))
    ceiling = cluster.hardware.matmul_efficiency
    assert float(est.mfu) > ceiling > float(est.mfu_causal)
    assert "counts attention FLOPs that causal kernels skip" in mfu_notes(est)[0]


def test_plan_flags_shown_plans_above_the_matmul_ceiling():
    from parplan.specs.model import with_seq_len
    from parplan.views.plan_text import plan_report

    result = make_plan(with_seq_len(load_model("llama3.2-1b"), 131072), load_cluster("a100x8"), global_batch=8,
                       top=2)
    ceiling = result.cluster.hardware.matmul_efficiency
    assert all(float(e.mfu) > ceiling > float(e.mfu_causal) for e in result.estimates)
    text = plan_report(result)
    assert text.count("note: ") == 1 and "note: #1's (and #2) MFU" in text and "causal kernels skip" in text
    assert all(p["mfu_above_ceiling"] == "full" for p in json.loads(plan_report(result, "json")))


def test_long_layouts_keep_the_columns_apart(run_cli):
    code, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x512", "--tp", "4", "--cp", "2", "--pp", "8",
                             "--vpp", "2", "--shard-group", "2", "--recompute", "selective", "--top", "1")
    assert code == 0, err
    head, row = out.splitlines()[2:4]
    assert "rc=selective " in row and row.index("dp,pp") == head.index("placement")


def test_rank_verdicts_do_not_change_with_top():
    model, cluster = load_model("gpt3-13b"), load_cluster("a100x64")
    three = make_plan(model, cluster, top=3)
    twelve = make_plan(model, cluster, top=12)
    assert three.stability == twelve.stability[:3]


def test_ties_and_placements_are_explained(run_cli):
    code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--hw", "h100x64", "--top", "6")
    assert code == 0
    assert "s/step faster" not in out and ("take the same step time" in out or "% faster than #2" in out)
    assert "placement: the order of the outer mesh axes" in out


def test_fixed_tensor_parallel_beyond_a_node_points_at_the_flag(run_cli):
    code, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x64", "--tp", "16")
    assert code == 1 and "--allow-cross-node-tp" in err


@pytest.mark.parametrize("flags, check", [
    (["--mesh", "tp=8,dp=8,pp=8"], lambda p: (p["tp"], p["dp"], p["pp"], p["order"][:3]) == (8, 8, 8, ["tp", "dp", "pp"])),
    (["--tp", "8", "--pp", "8", "--vpp", "3", "--sp"], lambda p: p["vpp"] == 3 and p["sp"]),
    (["--tp", "8", "--pp", "8", "--no-sp"], lambda p: not p["sp"]),
    (["--tp", "8", "--pp", "8", "--schedule", "gpipe", "--framework", "torchtitan"],
     lambda p: p["layout"]["schedule"] == "gpipe"),
    (["--zero", "3", "--shard-group", "8", "--pp", "1"], lambda p: p["layout"]["shard_group"] == 8),
])
def test_plan_takes_the_fixed_knobs_estimate_takes(run_cli, flags, check):
    code, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x512", "--top", "2", "--format", "json", *flags)
    assert code == 0, err
    assert all(check(p) for p in json.loads(out))


def test_cp_and_tp_schemes_can_be_fixed(run_cli):
    code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--hw", "h100x64", "--cp", "4", "--cp-mode",
                             "allgather", "--top", "1", "--format", "json")
    assert code == 0 and json.loads(out)[0]["layout"]["cp_mode"] == "allgather"
    code, out, err = run_cli("plan", "--model", "gpt3-13b", "--hw", "a100x64", "--tp", "4", "--tp-mode", "2d",
                             "--framework", "colossalai", "--top", "1", "--format", "json")
    assert code == 0 and json.loads(out)[0]["layout"]["tp_mode"] == "2d"


def test_time_and_money_follow_from_throughput(run_cli, tmp_path):
    b = budget(1e12, tokens_per_s=1e6, devices=512, price_per_device_hour=2.0)
    assert b.time_to_train_s == pytest.approx(1e6) and b.device_hours == pytest.approx(1e6 * 512 / 3600)
    assert b.cost == pytest.approx(b.device_hours * 2.0)
    assert cost_per_token(1e6, 512, 2.0) * 1e12 == pytest.approx(b.cost)
    path = tmp_path / "cluster.yaml"
    path.write_text("hardware: a100-80gb\ndevices: 512\nprice_per_device_hour: 1.25\n")
    code, out, err = run_cli("plan", "--model", "gpt3", "--hw", str(path), "--tokens", "3e11", "--top", "1",
                             "--format", "json")
    p = json.loads(out)[0]
    assert p["budget"]["cost"] == pytest.approx(3e11 / p["tokens_per_s"] * 512 / 3600 * 1.25)
    code, out, err = run_cli("estimate", "--model", "gpt3", "--hw", "a100x512", "--tp", "8", "--pp", "8",
                             "--price-per-device-hour", "2")
    assert code == 1 and "needs --tokens" in err
