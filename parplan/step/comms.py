"""The strategies' collectives priced on the cluster: time per call, calls per step, time on the link."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cost.collectives import collective_time_s, place
from ..layouts.strategies import Collective, Context


@dataclass(frozen=True)
class CollectiveCost:
    """A collective with its time: per call, per step on link, and exposed on the critical path."""

    collective: Collective
    time_s: Any          # one call
    calls_per_step: Any
    link_s: Any          # total time on the link per step
    exposed_s: Any       # part not hidden by compute
    spans_nodes: Any = False  # runs over the network (else over the scale-up link)
    hide_window_s: Any = 0.0  # compute per step it may hide under (0: critical path)
    slowdown_s: Any = 0.0     # part of exposed_s that is the overlapped compute's slowdown


def price_collectives(strategies, ctx: Context) -> list[CollectiveCost]:
    """Every strategy's collectives placed on the cluster, with time per call and calls per step."""
    per = {"layer": ctx.stage_layers * ctx.micro_batches, "microbatch": ctx.micro_batches, "step": 1.0}
    costs = []
    for s in strategies:
        for c in s.collectives(ctx):
            where = place(c.group, c.stride, ctx.cluster)
            t = collective_time_s(c.op, c.size_bytes, where, ctx.cluster)
            per_step = np.asarray(c.count, float) * per[c.per]
            costs.append(CollectiveCost(c, t, per_step, t * per_step, None, where.spans_nodes))
    return costs


def link_sum(costs, pred):
    """Seconds on the link of the collectives that ``pred`` selects, per one ``per`` unit."""
    return sum((c.time_s * np.asarray(c.collective.count, float) for c in costs if pred(c.collective)),
               np.float64(0.0))
