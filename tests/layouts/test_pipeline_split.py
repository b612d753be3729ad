"""Pipeline splits as each framework runs them, the flow-shop schedule time, ZB-H1, memory per rank."""
import ast
from dataclasses import replace
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import software

from parplan.cost.memory import inflight_microbatches
from parplan.errors import ParplanError
from parplan.layouts import split
from parplan.layouts.layout import Layout
from parplan.layouts.rules import check_layout
from parplan.layouts.strategies.pipeline import pipeline_time, zb_h1_scale
from parplan.specs.cluster import load_cluster
from parplan.specs.framework import PipelineSplit
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate


def _split(name):
    return load_framework(name).pipeline.split


def test_flow_shop_time_of_equal_and_unequal_stages():
    """m identical micro-batches through ranks of t_i seconds: (m - 1) max t + sum t. Four ranks of 1 s and
    m = 8: 8 + 3 = 11 = (m + p - 1) t; ranks of 2, 1, 1, 1 s and m = 4: 4 x 2 + (5 - 2) = 11."""
    total, bubble = pipeline_time(1.0, 4.0, 8)
    assert (float(total), float(bubble)) == (11.0, 3.0)
    total, bubble = pipeline_time(2.0, 5.0, 4)
    assert (float(total), float(bubble)) == (11.0, 3.0)
    total, bubble = pipeline_time(1.0, 4.0, 8, vpp=2)       # interleaving halves the bubble
    assert float(bubble) == 1.5


def test_zb_h1_bubble_is_a_third_of_1f1b_with_equal_passes():
    """Qi et al. 2023, Table 2: 1F1B idles (p-1)(T_F+T_B+T_W), ZB-H1 (p-1)(T_F+T_B-T_W). With T_F = T_B = T_W = 1
    and p = 4: 9 s against 3 s."""
    assert float(zb_h1_scale(1.0, 1.0, 1.0)) == pytest.approx(1 / 3)
    assert float(zb_h1_scale(2.0, 1.0, 1.0)) == pytest.approx((2 + 1 - 1) / (2 + 1 + 1))
    p, t = 4, 3.0  # per rank: F + B + W
    _, one_f_one_b = pipeline_time(t, p * t, 16)
    _, zb = pipeline_time(t, p * t, 16, bubble_scale=zb_h1_scale(1.0, 1.0, 1.0))
    assert (float(one_f_one_b), float(zb)) == pytest.approx(((p - 1) * 3.0, (p - 1) * 1.0))


def test_inflight_micro_batches_per_rank():
    """1F1B: rank r holds min(p - r, m); interleaved: (2(p - r - 1) + (v - 1)p + 1)/v rank-layer-sets, on the first
    rank p + (p - 1)/v (Korthikanti 2022, Sec. 4.2.3); ZB-H1 keeps 1F1B's; GPipe holds all m."""
    assert [float(inflight_microbatches(8, 1, 64, "1f1b", r)) for r in (0, 1, 7)] == [8, 7, 1]
    assert float(inflight_microbatches(8, 1, 4, "1f1b", 0)) == 4
    assert float(inflight_microbatches(8, 3, 64, "interleaved", 0)) == pytest.approx(8 + 7 / 3)
    assert float(inflight_microbatches(8, 3, 64, "interleaved", 7)) == pytest.approx((0 + 16 + 1) / 3)
    assert float(inflight_microbatches(8, 1, 64, "zb-h1", 0)) == 8
    assert float(inflight_microbatches(8, 1, 64, "gpipe", 5)) == 64


def test_megatron_splits_evenly_or_by_its_flags():
    """Megatron-Core: L/p must divide; --decoder-first/last-pipeline-num-layers set the ends with the middle even
    (interleaved: each a multiple of vpp); the account-for flags make the ends one layer short; a layout string
    gives chunks any layers. 126 layers on 16 stages: 7 | 8 x 14 | 7, interleaved by 2 through the account-for
    flags (7 is odd), by 3 only through a layout string."""
    mc = _split("megatron-core")
    assert not bool(split.default_valid(126, 16, 1, mc)) and bool(split.default_valid(128, 16, 2, mc))
    assert bool(split.expressible(126, 16, 1, 7, 7, mc))
    assert bool(split.expressible(126, 16, 2, 7, 7, mc))            # (126 + 2) / 16 = 8 = 2 x 4
    assert bool(split.expressible(126, 16, 2, 6, 8, mc))            # 6, 8 and 112/14 = 8 all even
    assert not bool(split.expressible(126, 16, 2, 6, 6, mc))        # 114 layers over 14 middle stages
    assert bool(split.expressible(126, 16, 3, 7, 7, mc))            # uneven chunks: a layout string lists them
    counts_only = replace(mc, ends=("counts", "as-layers"))
    assert not bool(split.expressible(126, 16, 3, 7, 7, counts_only))  # 8 is no multiple of 3
    assert not bool(split.expressible(126, 16, 3, 2, 7, mc))        # the first rank's 3 chunks need a layer each
    assert split.suggest_ends(126, 16, 1, mc) == (7, 7)
    assert not bool(split.expressible(126, 16, 1, 7, 7, _split("megatron-lm")))  # no first/last counts before 0.9


def test_deepspeed_fills_the_stages_from_the_first():
    """partition_balanced over 78 equal layers on 12 stages: 7 on each but the last, which gets 1 (the BLOOM
    chronicles: 'the last stage has 1 block, while the rest have 7'); 'type:transformer|embedding' runs 70 layers
    as 5 | 6 x 10 | 5."""
    ds = _split("megatron-deepspeed")
    assert tuple(int(x) for x in split.default_ends(78, 12, 1, ds)) == (7, 1)
    assert int(split.middle_layers(78, 12, 7, 1)[0]) == 7
    assert bool(split.expressible(70, 12, 1, 5, 5, ds)) and not bool(split.expressible(70, 12, 1, 4, 4, ds))


def _torchtitan_generate():
    """torchtitan v0.2.2's own generate_llm_fqn_per_model_part, compiled from its source (the module itself imports
    triton, absent on CPU)."""
    spec = importlib.util.find_spec("torchtitan")
    if spec is None:
        pytest.skip("torchtitan not installed (pip install '.[emit-check]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "distributed" / "pipeline_parallel.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_llm_fqn_per_model_part")
    namespace = {}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace["generate_llm_fqn_per_model_part"]


@pytest.mark.parametrize("layers,pp,vpp", [(80, 4, 1), (80, 4, 2), (126, 16, 1), (126, 16, 2), (32, 8, 2), (61, 4, 3)])
def test_torchtitan_split_matches_its_code(layers, pp, vpp):
    generate = _torchtitan_generate()
    parts = generate(pp * vpp, layers, 1, 1)
    counts = [sum(m.startswith("layers.") for m in part) for part in parts]
    ranks = [sum(counts[c * pp + r] for c in range(vpp)) for r in range(pp)]
    first, last = (int(x) for x in split.default_ends(layers, pp, vpp, _split("torchtitan")))
    assert (first, last) == (ranks[0], ranks[-1])
    if pp > 2:
        assert int(split.middle_layers(layers, pp, first, last)[0]) == max(ranks[1:-1])


def test_colossalai_gives_the_remainder_to_the_middle():
    """distribute_layers: 70 layers on 12 stages, quotient 5, the 10 extra on stages 1-10; 70 on 4 x 2 chunks:
    quotient 8, the 6 extra on virtual stages 1-6, so rank 0 (stages 0, 4) holds 17 and rank 3 (3, 7) 17."""
    ca = _split("colossalai")
    assert tuple(int(x) for x in split.default_ends(70, 12, 1, ca)) == (5, 5)
    assert tuple(int(x) for x in split.default_ends(70, 4, 2, ca)) == (17, 17)


def test_search_offers_the_splits_the_framework_runs():
    assert split.end_choices(126, 16) == [(7, 7)]
    assert (9, 9) in split.end_choices(96, 8) and split.end_choices(96, 1) == []


def _est(layout, name="megatron-core", model="llama3.1-405b", hw="h100x2048"):
    return estimate(load_model(model), load_cluster(hw), layout, software=software(name))


def test_uneven_split_times_the_busiest_rank_and_sums():
    """126 layers as 7 | 8 x 14 | 7: the middle ranks pace the pipeline; the breakdown sums to the step."""
    lay = Layout(tp=8, pp=16, dp=16, global_batch=512, first_stage_layers=7, last_stage_layers=7, recompute="full")
    est = _est(lay)
    assert sum(float(v) for v in est.breakdown_s.values()) == pytest.approx(float(est.step_time_s), rel=1e-9)
    ranks = est.pipeline_ranks
    assert [int(ranks[k]["layers"]) for k in ("first", "middle", "last")] == [7, 8, 7]
    assert float(est.memory_bytes["total"]) == pytest.approx(max(float(r["memory_bytes"]) for r in ranks.values()))
    lighter = _est(Layout(tp=8, pp=16, dp=16, global_batch=512, first_stage_layers=6, last_stage_layers=8,
                          recompute="full"))
    assert float(lighter.pipeline_ranks["first"]["memory_bytes"]) < float(ranks["first"]["memory_bytes"])


def test_zb_h1_shrinks_the_bubble_not_the_memory():
    m, cl = load_model("llama3.1-70b"), load_cluster("h100x64")
    kw = dict(tp=8, pp=8, global_batch=64)
    one = estimate(m, cl, Layout(**kw), software=software("torchtitan"))
    zb = estimate(m, cl, Layout(**kw, schedule="zb-h1"), software=software("torchtitan"))
    assert 0 < float(zb.breakdown_s["bubble"]) < float(one.breakdown_s["bubble"])
    assert float(zb.memory_bytes["total"]) == pytest.approx(float(one.memory_bytes["total"]))
    assert float(zb.breakdown_s["pp_comm"]) == pytest.approx(float(one.breakdown_s["pp_comm"]))
    assert sum(float(v) for v in zb.breakdown_s.values()) == pytest.approx(float(zb.step_time_s), rel=1e-9)


def test_a_pipeline_without_a_split_keeps_its_frameworks_default():
    """An even split under Megatron-Core is what the layout gives when it names none."""
    base = Layout(tp=8, pp=8, dp=1, global_batch=64)
    a = estimate(load_model("gpt3"), load_cluster("a100x64"), base)
    b = estimate(load_model("gpt3"), load_cluster("a100x64"), Layout(tp=8, pp=8, dp=1, global_batch=64,
                                                                    first_stage_layers=12, last_stage_layers=12))
    assert float(a.step_time_s) == float(b.step_time_s)


@pytest.mark.parametrize("kw,words", [
    (dict(pp=1, first_stage_layers=4), "need pp > 1"),
    (dict(pp=2, first_stage_layers=60, last_stage_layers=60), "hold all 126 layers"),
    (dict(pp=16, first_stage_layers=100, last_stage_layers=20), "without a"),
    (dict(pp=16), "give the first and last stage's layers instead, e.g. --first-stage-layers 7"),
    (dict(pp=16, first_stage_layers=3, last_stage_layers=3), "cannot split"),
    (dict(pp=16, vpp=3, first_stage_layers=2, last_stage_layers=7), "cannot split"),
    (dict(pp=16, schedule="zb-h1", first_stage_layers=7, last_stage_layers=7), "not zb-h1"),
])
def test_bad_splits_say_what_would_work(kw, words):
    kw = dict(dict(tp=8, dp=256 // kw["pp"], global_batch=512), **kw)
    with pytest.raises(ParplanError, match=words.replace("(", r"\(")) as err:
        check_layout(Layout(**kw), load_model("llama3.1-405b"), load_cluster("h100x2048"),
                     load_framework("megatron-core"))
    assert "\n" not in str(err.value)


def test_zb_h1_needs_one_stage_per_rank():
    with pytest.raises(ParplanError, match="one stage per rank"):
        check_layout(Layout(tp=8, pp=8, vpp=2, schedule="zb-h1", global_batch=64), load_model("llama3.1-70b"),
                     load_cluster("h100x64"), load_framework("torchtitan"))


def test_zero2_under_torchtitans_pipeline_reduces_once_and_holds_the_gradients():
    """torch.distributed.pipelining defers FSDP's gradient sync to the last backward: one reduce-scatter per step
    and the stage's unsharded gradients until then; without a pipeline, one per micro-batch and a shard."""
    m, cl = load_model("llama3.1-8b"), load_cluster("h100x16")
    sw = software("torchtitan")
    piped = estimate(m, cl, Layout(pp=2, dp=8, zero=2, global_batch=64), software=sw)
    calls = {c.collective.name: float(c.calls_per_step) for c in piped.collectives if c.collective.axis == "dp"}
    assert calls["zero2_grad_reduce_scatter_step"] == 1 and calls["zero2_grad_reduce_scatter"] == 0
    # ZeRO-2 keeps whole fp32 parameters (4 bytes each); the deferred fp32 gradients are as large
    assert float(piped.memory_bytes["gradients"]) == pytest.approx(float(piped.memory_bytes["weights"]))
    flat = estimate(m, cl, Layout(dp=16, zero=2, global_batch=64), software=sw)
    calls = {c.collective.name: float(c.calls_per_step) for c in flat.collectives if c.collective.axis == "dp"}
    assert calls["zero2_grad_reduce_scatter"] == 4 and calls["zero2_grad_reduce_scatter_step"] == 0
    assert float(flat.memory_bytes["gradients"]) == pytest.approx(float(flat.memory_bytes["weights"]) / 16)


def test_framework_profiles_read_the_split():
    tt = load_framework("torchtitan").pipeline
    assert tt.split == PipelineSplit("spread", ("counts",), "any", 1) and tt.micro_batch == 1
    assert "zb-h1" in tt.schedules and "zb-h1" not in load_framework("megatron-core").pipeline.schedules
    assert load_framework("jax").pipeline.micro_batches == "stages"
    assert np.all(split.default_valid(np.array([96, 126]), 16, 1, PipelineSplit()) == [True, False])
