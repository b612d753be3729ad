"""--recompute-layers N (Megatron's --recompute-method block): the first N layers of each pipeline chunk are
recomputed whole, the rest keep their activations."""
import numpy as np
import pytest
from click.testing import CliRunner

import parplan
from parplan.cli import cli
from parplan.cost.memory import recompute_share
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import model_from_dict

TOY = {"name": "toy", "layers": 16, "hidden": 2048, "heads": 16, "kv_heads": 16, "ffn_hidden": 8192,
       "activation": "gelu", "vocab": 32000, "seq_len": 2048}


def test_share_of_a_chunk_recomputed():
    assert float(recompute_share("full")) == 1.0
    assert float(recompute_share("full", 5, 32)) == pytest.approx(5 / 32)
    assert float(recompute_share("full", 40, 10)) == 1.0  # a chunk smaller than the block: every layer
    assert float(recompute_share("selective-layer")) == 0.5
    assert float(recompute_share("none", 5, 32)) == 0.0
    assert float(recompute_share("selective")) == 0.0
    codes = np.array([0, 2, 4])
    assert np.allclose(recompute_share(codes, 2, np.array([8.0, 8.0, 8.0])), [0.0, 0.25, 0.5])


def _estimates(**kw):
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x8")
    base = dict(dp=8, micro_batch=1, global_batch=8, seq_len=2048, **kw)
    return m, [parplan.estimate(m, cl, Layout(recompute=r, recompute_layers=k, **base))
               for r, k in (("none", None), ("full", None), ("full", 4))]


def test_a_quarter_of_the_layers_recomputed_costs_a_quarter_of_the_recompute():
    """16 layers on one stage, 4 recomputed: a quarter of full recompute's time and extra FLOPs."""
    _, (none, full, block) = _estimates()
    assert float(block.breakdown_s["recompute"]) == pytest.approx(float(full.breakdown_s["recompute"]) / 4)
    assert float(block.hardware_flops_per_step - block.model_flops_per_step) == pytest.approx(
        float(full.hardware_flops_per_step - full.model_flops_per_step) / 4)
    assert float(none.breakdown_s["recompute"]) == 0.0


def test_the_recomputed_block_keeps_its_inputs_and_the_rest_everything():
    """With one stage and one micro-batch in flight: no recompute holds 16 layers' activations A; full recompute
    16 inputs I plus one layer rebuilt (A / 16); 4 of 16 recomputed hold 4 I + 12 A / 16, and rebuild their
    layers only after the 12 later ones freed theirs (no higher peak)."""
    _, (none, full, block) = _estimates()
    a_none = float(none.memory_bytes["activations"])
    per_layer = a_none / 16
    kept = (float(full.memory_bytes["activations"]) - per_layer) / 16
    assert float(block.memory_bytes["activations"]) == pytest.approx(4 * kept + 12 * per_layer)
    assert kept < per_layer


def test_interleaved_chunks_each_recompute_their_first_layers():
    """16 layers over 2 stages x 2 virtual stages: chunks of 4 layers; 2 of each recomputed is half of them."""
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x8")
    base = dict(dp=4, pp=2, vpp=2, micro_batch=1, global_batch=16, seq_len=2048, schedule="interleaved")
    full, block = (parplan.estimate(m, cl, Layout(recompute="full", recompute_layers=k, **base)) for k in (None, 2))
    assert float(block.breakdown_s["recompute"]) == pytest.approx(float(full.breakdown_s["recompute"]) / 2)


def test_tensor_parallel_collectives_rerun_only_in_the_recomputed_layers():
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x8")
    base = dict(tp=4, dp=2, sp=True, micro_batch=1, global_batch=8, seq_len=2048, recompute="full")
    full, block = (parplan.estimate(m, cl, Layout(recompute_layers=k, **base)) for k in (None, 4))

    def calls(est):
        return {c.collective.name: float(c.collective.count) for c in est.collectives
                if c.collective.name.endswith("_recompute")}
    assert calls(full) and all(calls(block)[k] == pytest.approx(v / 4) for k, v in calls(full).items())


def test_selective_layer_reruns_its_blocks_collectives():
    """torchtitan's selective-layer recomputes every second block whole, its tensor-parallel collectives too."""
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x8")
    sw = resolve_software(load_framework("torchtitan"), dtype="bf16")
    base = dict(tp=4, dp=2, sp=True, micro_batch=1, global_batch=8, seq_len=2048)
    full, half = (parplan.estimate(m, cl, Layout(recompute=r, **base), software=sw)
                  for r in ("full", "selective-layer"))
    rec = {c.collective.name: float(c.collective.count) for c in half.collectives if "recompute" in c.collective.name}
    ref = {c.collective.name: float(c.collective.count) for c in full.collectives if "recompute" in c.collective.name}
    assert ref and all(rec[k] == pytest.approx(v / 2) for k, v in ref.items())


@pytest.mark.parametrize("kw, framework, message", [
    (dict(recompute="selective", recompute_layers=4), None, "needs --recompute full"),
    (dict(recompute="full", recompute_layers=0), None, "positive whole number"),
    (dict(recompute="full", recompute_layers=17), None, "exceeds the 16 layers of a pipeline chunk"),
    (dict(recompute="full", recompute_layers=4), "torchtitan", "has no block recompute"),
])
def test_bad_block_recomputes_are_refused(kw, framework, message):
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x8")
    sw = resolve_software(load_framework(framework), dtype="bf16") if framework else None
    with pytest.raises(ParplanError, match=message):
        parplan.estimate(m, cl, Layout(dp=8, global_batch=8, **kw), software=sw)


def test_cli_estimate_plan_and_megatron_flags_round_trip(tmp_path):
    run = CliRunner().invoke
    common = ["--model", "llama3.1-8b", "--hw", "h100x8", "--global-batch", "64", "--seq", "4096"]
    out = run(cli, ["estimate", *common, "--dp", "8", "--zero", "1", "--recompute-layers", "8"])
    assert out.exit_code == 0, out.output
    assert "recompute=full(8 per chunk)" in out.output
    out = run(cli, ["plan", *common, "--dp", "8", "--recompute-layers", "8", "--top", "1", "--emit", "megatron"])
    assert out.exit_code == 0, out.output
    assert "--recompute-method block --recompute-num-layers 8" in " ".join(out.output.replace("\\\n", " ").split())
    cfg = tmp_path / "run.sh"
    cfg.write_text(out.output)
    back = run(cli, ["estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--from-config", str(cfg)])
    assert back.exit_code == 0, back.output
    assert "recompute=full(8 per chunk)" in back.output
    refused = run(cli, ["plan", *common, "--dp", "8", "--recompute-layers", "8", "--emit", "torchtitan"])
    assert refused.exit_code != 0 and "block recompute" in refused.output and "Traceback" not in refused.output


def test_plan_searches_blocks_where_the_framework_runs_them():
    """Llama 3.1 8B on 8 H100s with the optimizer sharded: no recompute does not fit, full recompute does, and a
    block of each chunk between them is faster; torchtitan has no block recompute, so its search offers none."""
    from parplan.plan.planner import make_plan
    m, cl = parplan.load_model("llama3.1-8b"), parplan.load_cluster("h100x8")
    fixed = {"dp": 8, "zero": 1, "micro_batch": 1}
    best = make_plan(m, cl, global_batch=128, fixed=fixed, top=3, with_intervals=False)
    lay = best.layouts[0]
    assert lay.recompute == "full" and 0 < lay.recompute_layers < m.layers
    everything = make_plan(m, cl, global_batch=128, fixed={**fixed, "recompute": "full"}, top=50, with_intervals=False)
    assert (everything.candidates["recompute_layers"] == 0).all()  # --recompute full alone: every layer
    whole = everything.ranked["step_time_s"].min()
    assert float(best.ranked.iloc[0]["step_time_s"]) < float(whole)
    tt = make_plan(m, cl, global_batch=128, fixed={**fixed, "zero": 3}, top=3, with_intervals=False,
                   software=resolve_software(load_framework("torchtitan"), dtype="bf16"))
    assert (tt.candidates["recompute_layers"] == 0).all()


def test_a_fixed_block_keeps_the_layouts_whose_chunks_hold_it():
    """30 of Llama 3.1 8B's 32 layers: layouts cut into chunks of fewer layers are left out, not refused."""
    from parplan.plan.planner import make_plan
    m, cl = parplan.load_model("llama3.1-8b"), parplan.load_cluster("h100x8")
    best = make_plan(m, cl, global_batch=64, fixed={"recompute_layers": 30}, top=3, with_intervals=False)
    assert all(lay.recompute_layers == 30 and -(-32 // (lay.pp * lay.vpp)) >= 30 for lay in best.layouts)


def test_an_explicit_recompute_other_than_full_contradicts_a_block():
    out = CliRunner().invoke(cli, ["estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--recompute", "none",
                                   "--recompute-layers", "4"])
    assert out.exit_code != 0 and "needs --recompute full" in out.output and "Traceback" not in out.output


def test_the_largest_chunk_rounds_up():
    """61 layers over 32 chunks: some hold 2; 126 over 16: 8; arrays element by element; one chunk: all."""
    from parplan.cost.memory import largest_chunk_layers

    assert int(largest_chunk_layers(61, 32)) == 2 and int(largest_chunk_layers(126, 16)) == 8
    assert largest_chunk_layers(32, np.array([1, 4, 5])).tolist() == [32, 8, 7]
