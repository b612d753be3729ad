"""DualPipeV (deepseek-ai/DualPipe, the cut-in-half DualPipe): its bubble, memory and placement by hand,
and the rules and launch config around it."""
from dataclasses import replace

import pytest

from parplan.cost.memory import inflight_microbatches
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.layouts.rules import check_layout
from parplan.layouts.strategies.base import StageTimes
from parplan.layouts.split import v_rank_layers
from parplan.layouts.strategies.pipeline import PipelineParallel, dualpipe_scale
from parplan.plan.emitters import emit
from parplan.specs.cluster import load_cluster
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model


def test_no_tied_embedding_all_reduce_when_both_ends_share_the_first_rank():
    from parplan.step.train import estimate

    model = load_model("gpt3-1.3b")
    assert model.tied_embeddings
    cluster = load_cluster("h100-sxmx8")
    sw = resolve_software(load_framework("torchtitan"), dtype="bf16")
    for schedule, vpp, calls in (("1f1b", 1, 1), ("dualpipev", 2, 0)):
        est = estimate(model, cluster, Layout(pp=4, dp=2, vpp=vpp, schedule=schedule, global_batch=16), software=sw)
        tied = [c for c in est.collectives if c.collective.name == "pp_embedding_grad_allreduce"]
        assert float(tied[0].collective.count) == calls


def test_the_bubble_is_p_minus_one_times_f_and_b_plus_b_minus_three_w():
    assert float(dualpipe_scale(1.0, 2.0, 1.0)) == pytest.approx(2 / 3)   # (3 + 2 - 3) / 3
    # 4 ranks, 6 layers: torchtitan's split gives 8 stages of one unit each, so the first rank holds the
    # embedding and the head (one layer's time each), the others two one-layer chunks; F = 1, B = 2 (W = 1)
    # per layer, 8 micro-batches. Every rank works 6 per micro-batch; the bubble (p - 1)(F&B + B - 3W) = 3 x 2.
    model = replace(load_model("llama3-8b"), layers=6)
    lay = Layout(pp=4, vpp=2, schedule="dualpipev", micro_batch=1, global_batch=8)
    t = StageTimes(8, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0, 2.0, 1.0)
    total, busy, parts = PipelineParallel().compose(model, lay, t)
    assert float(parts["bubble"]) == pytest.approx(6.0)
    assert float(total) == pytest.approx(8 * 6.0 + 6.0)


def test_every_rank_holds_two_p_plus_one_chunks_and_the_first_holds_both_ends():
    assert float(inflight_microbatches(4, 2, 16, "dualpipev", 0)) == 4.5
    assert float(inflight_microbatches(4, 2, 16, "dualpipev", 3)) == 4.5
    model = load_model("llama3-8b")
    lay = Layout(pp=4, vpp=2, schedule="dualpipev", micro_batch=1, global_batch=16)
    first, _, last = PipelineParallel().memory_stages(model, lay, 16)
    assert bool(first.head) and not bool(last.head)
    # torchtitan splits 32 layers + embedding + head over 8 stages as 4|5|4|4|4|4|4|3 (the ends weighted as a
    # layer each); the V pairs stages 0+7, 1+6, 2+5, 3+4: ranks of 7, 9, 8 and 8 layers
    assert [int(x) for x in v_rank_layers(32, 4)] == [7, 9, 8, 17]
    layer = model.layer_params()
    assert float(first.params) == pytest.approx(7 * layer + model.embedding_params() + model.output_params())
    assert float(last.params) == pytest.approx(8 * layer)


def _check(layout, framework="torchtitan", model="llama3-8b"):
    sw = resolve_software(load_framework(framework), dtype="bf16")
    return check_layout(layout, load_model(model), load_cluster("h100-sxmx8"), sw)


@pytest.mark.parametrize("layout, framework, match", [
    (Layout(pp=4, dp=2, vpp=1, schedule="dualpipev", global_batch=16), "torchtitan", "use --vpp 2"),
    (Layout(pp=4, dp=2, vpp=2, schedule="dualpipev", global_batch=8), "torchtitan",
     "at least as many micro-batches as its 2\\*pp = 8 stages; 4 per step"),
    (Layout(pp=4, dp=2, vpp=2, schedule="dualpipev", global_batch=16), "megatron-core", "not dualpipev"),
    (Layout(pp=4, dp=2, vpp=2, schedule="dualpipev", global_batch=16, first_stage_layers=6, last_stage_layers=8),
     "torchtitan", "drop --first-stage-layers"),
])
def test_impossible_dualpipe_layouts_are_one_line_errors(layout, framework, match):
    with pytest.raises(ParplanError, match=match):
        _check(layout, framework)


def test_torchtitan_writes_and_reads_the_schedule(tmp_path):
    from parplan.plan.emitters import read_config

    lay = _check(Layout(pp=4, dp=2, vpp=2, schedule="dualpipev", global_batch=16))
    sw = resolve_software(load_framework("torchtitan"), dtype="bf16")
    text = emit("torchtitan", lay, load_model("llama3-8b"), sw)
    assert 'pipeline_parallel_schedule = "DualPipeV"' in text
    path = tmp_path / "run.toml"
    path.write_text(text)
    back = read_config(str(path), 8, load_model("llama3-8b"))
    assert back.layout["schedule"] == "dualpipev" and back.layout["vpp"] == 2
