"""The plug-in contract: an axis registered here, in the test alone, shows up in estimate, explain and
the step breakdown without any change to the package. One multiplies the device count; one is
folded over the data-parallel ranks, as expert parallelism is."""
import numpy as np
import pytest

import parplan
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout, mesh_order, parse_mesh, plugin_axes
from parplan.layouts.strategies import Collective, Strategy, breakdown_keys, register, unregister
from parplan.step.train import bottleneck
from parplan.views.records import estimate_dict, explain_dict
from parplan.views.text import format_explain

CALL_BYTES = 64 * 2**20


class Toy(Strategy):
    """Shards nothing; one critical all-reduce of 64 MiB per layer forward over its group."""

    axis = "toy"

    def collectives(self, ctx):
        n = np.asarray(ctx.layout.size("toy"))
        return [Collective("toy_allreduce", "all_reduce", "toy", n, ctx.stride("toy"), CALL_BYTES,
                           np.where(n > 1, 1, 0), "layer", "forward", "none")]


class FoldedToy(Strategy):
    """Laid over the data-parallel ranks: one all-to-all per layer forward and backward."""

    axis = "ftoy"
    folded_over = ("dp",)

    def collectives(self, ctx):
        n = ctx.layout.size("ftoy")
        return [Collective(f"ftoy_all_to_all_{p}", "all_to_all", "ftoy", n, ctx.stride("ftoy"), CALL_BYTES, 1,
                           "layer", p, "none") for p in ("forward", "backward")]


@pytest.fixture
def toy_axes():
    register(Toy)
    register(FoldedToy)
    yield
    unregister("toy")
    unregister("ftoy")


def _layout(**kw):
    return Layout(tp=2, dp=2, micro_batch=1, global_batch=4, recompute="none", **kw)


def test_a_registered_axis_appears_in_estimate_explain_and_breakdown(toy_axes):
    model = parplan.load_model("gpt3-1.3b")
    plain = parplan.estimate(model, parplan.load_cluster("a100x4"), _layout())
    sizes = parse_mesh("tp=2,dp=2,toy=2")
    lay = _layout(order=mesh_order(sizes), axes=plugin_axes(sizes))
    assert lay.devices == 8 and lay.stride("toy") == 4
    est = parplan.estimate(model, parplan.load_cluster("a100x8"), lay)

    keys = list(est.breakdown_s)
    assert keys == list(breakdown_keys()) and keys[-4:] == ["toy_comm", "ftoy_comm", "offload", "optimizer"]
    toy = [c for c in est.collectives if c.collective.axis == "toy"]
    assert len(toy) == 1 and int(toy[0].collective.group) == 2
    # The toy axis is outermost: every other axis keeps its placement, so the step grows by exactly
    # the toy all-reduces on the critical path, once per layer of each micro-batch.
    expected = float(toy[0].time_s) * model.layers * est.layout.micro_batches
    assert float(est.breakdown_s["toy_comm"]) == pytest.approx(expected)
    assert float(est.step_time_s) == pytest.approx(float(plain.step_time_s) + expected)

    d = explain_dict(est)
    assert d["layout"]["toy"] == 2 and d["breakdown_s"]["toy_comm"] == pytest.approx(expected)
    assert [c["name"] for c in d["collectives"] if c["axis"] == "toy"] == ["toy_allreduce"]
    assert "toy_allreduce" in format_explain(d)
    assert "toy=2" in est.layout.describe()

    row = {f"{k}_s": float(v) for k, v in est.breakdown_s.items()} | {"step_time_s": float(est.step_time_s)}
    row["toy_comm_s"] = 0.9 * row["step_time_s"]
    assert bottleneck(row) == "TOY comm"


def test_a_folded_axis_lies_over_its_ranks(toy_axes):
    model = parplan.load_model("gpt3-1.3b")
    cluster = parplan.load_cluster("a100x8")
    sizes = parse_mesh("tp=2,dp=4,ftoy=2")
    lay = Layout(tp=2, dp=4, global_batch=8, order=mesh_order(sizes), axes=plugin_axes(sizes))
    assert "ftoy" not in lay.order and lay.devices == 8 and lay.stride("ftoy") == lay.stride("dp") == 2
    est = parplan.estimate(model, cluster, lay)
    mine = [c for c in est.collectives if c.collective.axis == "ftoy"]
    assert [int(c.collective.group) for c in mine] == [2, 2]
    assert float(est.breakdown_s["ftoy_comm"]) == pytest.approx(
        sum(float(c.time_s) for c in mine) * model.layers * est.layout.micro_batches)
    assert estimate_dict(est)["layout"]["ftoy"] == 2

    with pytest.raises(ParplanError, match="ftoy=3 is folded over dp = 4 ranks and must divide them"):
        parplan.estimate(model, cluster, Layout(tp=2, dp=4, global_batch=8, axes=(("ftoy", 3),)))


def test_registry_refuses_bad_axes():
    class Nameless(Strategy):
        axis = ""

    class OverUnknown(Strategy):
        axis = "ovx"
        folded_over = ("nope",)

    with pytest.raises(ParplanError, match="lower-case identifier"):
        register(Nameless)
    with pytest.raises(ParplanError, match="folds over 'nope'"):
        register(OverUnknown)
    with pytest.raises(ParplanError, match="already registered"):
        register(type("Again", (Strategy,), {"axis": "tp"}))
    with pytest.raises(ParplanError, match="built-in"):
        unregister("dp")
    with pytest.raises(ParplanError, match="unknown axis 'toyy'"):
        parse_mesh("tp=2,toyy=2")


def test_explain_summarises_a_registered_axis(toy_axes):
    from parplan.views.records import axis_rows

    sizes = parse_mesh("tp=2,dp=2,toy=2")
    lay = _layout(order=mesh_order(sizes), axes=plugin_axes(sizes))
    est = parplan.estimate(parplan.load_model("gpt3-1.3b"), parplan.load_cluster("a100x8"), lay)
    rows = {r["axis"]: r for r in axis_rows(est)}
    assert rows["toy"]["exposed_s"] == pytest.approx(float(est.breakdown_s["toy_comm"]))
    assert rows["toy"]["note"] == "critical path"
