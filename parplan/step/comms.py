"""The strategies' collectives priced on the cluster: time per call, calls per step, time on the link."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..cost.collectives import collective_time_s, place
from ..cost.torus import DCN_LINK, torus_collective_time_s
from ..layouts.strategies import Collective, Context
from ..layouts.torus_map import default_map, group_on_torus


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
    links: Any = None         # TPU: bit mask of the torus axes and DCN it uses (None: by spans_nodes)


def shared_links(a: CollectiveCost, b: CollectiveCost):
    """1 where ``a`` runs on links ``b`` runs on, else 0 (arrays allowed): on GPUs the same link class
    (network or scale-up); on a TPU torus any common torus axis or the DCN, so collectives of mesh axes
    laid over distinct torus axes run side by side without sharing (scaling book, "Sharded Matrices":
    gathers over distinct mesh axes use distinct ICI links)."""
    if a.links is None or b.links is None:
        return np.where(np.asarray(a.spans_nodes) == np.asarray(b.spans_nodes), 1.0, 0.0)
    return np.where((np.asarray(a.links) & np.asarray(b.links)) != 0, 1.0, 0.0)


def price_collectives(strategies, ctx: Context) -> list[CollectiveCost]:
    """Every strategy's collectives placed on the cluster, with time per call and calls per step."""
    per = {"layer": ctx.stage_layers * ctx.micro_batches, "microbatch": ctx.micro_batches, "step": 1.0}
    layout = ctx.layout
    if ctx.cluster.is_torus and layout.torus_map is None:
        layout = replace(layout, torus_map=default_map(_whole_mesh(layout, ctx.cluster), ctx.cluster))
    costs, groups = [], {}
    for s in strategies:
        for c in s.collectives(ctx):
            per_step = np.asarray(c.count, float) * per[c.per]
            if ctx.cluster.is_torus:
                key = (id(c.group), id(c.stride))  # the collectives of one axis share their group's arrays
                if key not in groups:
                    groups[key] = (group_on_torus(c.group, c.stride, layout, ctx.cluster), c.group, c.stride)
                group = groups[key][0]
                t = torus_collective_time_s(c.op, c.size_bytes, group, ctx.cluster)
                links = group.links if c.op != "send_recv" else np.where(group.spans_nodes, DCN_LINK, 1)
                costs.append(CollectiveCost(c, t, per_step, t * per_step, None, group.spans_nodes, links=links))
                continue
            where = place(c.group, c.stride, ctx.cluster)
            t = collective_time_s(c.op, c.size_bytes, where, ctx.cluster, fanout=c.fanout)
            costs.append(CollectiveCost(c, t, per_step, t * per_step, None, where.spans_nodes))
    return costs


def _whole_mesh(layout, cluster) -> dict:
    """The mesh sizes over every chip: a layout of fewer chips (one serving replica) is one of several
    replicas, counted into its outermost data-parallel axis."""
    sizes = layout.sizes()
    n = int(np.prod(list(sizes.values())))
    if n < cluster.devices and cluster.devices % n == 0 and "dp" in sizes:
        sizes["dp"] = sizes["dp"] * (cluster.devices // n)
    return sizes


def link_sum(costs, pred):
    """Seconds on the link of the collectives that ``pred`` selects, per one ``per`` unit."""
    return sum((c.time_s * np.asarray(c.collective.count, float) for c in costs if pred(c.collective)),
               np.float64(0.0))
