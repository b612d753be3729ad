"""An FSDP step pays the measured slowdown of the compute its hidden collectives run beside."""
from dataclasses import replace

import numpy as np
import pytest

import parplan
from parplan.layouts.layout import Layout
from parplan.views.records import axis_rows, explain_dict


def test_fsdp_exposes_its_hidden_collectives_slowdown_and_explain_shows_it():
    model = parplan.load_model("llama3.1-8b")
    cluster = parplan.load_cluster("h100x64")
    lay = Layout(dp=64, zero=3, micro_batch=2, global_batch=128, recompute="none")
    est = parplan.estimate(model, cluster, lay, software=None)
    free = replace(cluster, hardware=replace(cluster.hardware, contention=None))
    base = parplan.estimate(model, free, lay)
    dp = [c for c in est.collectives if c.collective.axis == "dp" and np.any(c.calls_per_step)]
    slowed = sum(float(c.slowdown_s) for c in dp)
    assert slowed > 0
    # Without the measured contention the same step is faster by exactly that slowdown.
    assert float(est.step_time_s) - float(base.step_time_s) == pytest.approx(slowed, rel=1e-6)
    rows = {r["axis"]: r for r in axis_rows(est)}
    assert rows["dp"]["compute_slowdown_s"] == pytest.approx(slowed)
    assert rows["dp"]["hidden_s"] + rows["dp"]["exposed_s"] - slowed == pytest.approx(rows["dp"]["link_s"])
    assert "SMs" in explain_dict(est)["contention"]
