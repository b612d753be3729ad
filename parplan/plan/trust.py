"""How far to trust a plan: does its rank survive +-15% on the hardware's numbers, what binds it,
and which hardware parameter would buy the most.

A ranking is only useful if the winner does not change when the efficiencies and
bandwidths the model assumes are somewhat off. We perturb each of them by +-15%
one at a time and re-estimate the top plans; a plan's rank "holds" when it stays
first (within 1%) under every perturbation. The sensitivity re-runs the whole
search with one parameter 10% better, since more HBM can admit new layouts.
"""
from __future__ import annotations

from dataclasses import fields, replace
from types import MappingProxyType

import numpy as np

from ..step.train import estimate
from ..specs.cluster import Cluster, make_cluster
from ..layouts.layout import RECOMPUTE, Layout

PERTURBED = ("matmul efficiency", "element-wise efficiency", "HBM bandwidth", "scale-up bandwidth",
             "network bandwidth")
SENSITIVITY = ("peak FLOP/s", "HBM bandwidth", "HBM capacity", "scale-up bandwidth", "network bandwidth")
SWING = 0.15  # how far off a profile value is taken to be: the rank check's and the interval's perturbation


def scaled_cluster(cluster: Cluster, what: str, factor: float) -> Cluster:
    """The cluster with one hardware parameter multiplied by ``factor`` (efficiencies capped at 1)."""
    hw, intra, inter = cluster.hardware, cluster.intra_node, cluster.inter_node
    if what == "matmul efficiency":
        curve = hw.matmul_curve and replace(hw.matmul_curve, efficiency=tuple(
            min(1.0, e * factor) for e in hw.matmul_curve.efficiency))
        hw = replace(hw, matmul_efficiency=min(1.0, hw.matmul_efficiency * factor), matmul_curve=curve)
    elif what == "element-wise efficiency":
        hw = replace(hw, elementwise_efficiency=min(1.0, hw.elementwise_efficiency * factor))
    elif what == "HBM bandwidth":
        hw = replace(hw, hbm_bandwidth=hw.hbm_bandwidth * factor)
    elif what == "HBM capacity":
        hw = replace(hw, hbm_bytes=hw.hbm_bytes * factor)
    elif what == "peak FLOP/s":
        hw = replace(hw, peak_flops=MappingProxyType({k: v * factor for k, v in hw.peak_flops.items()}))
    elif what in ("scale-up bandwidth", "network bandwidth"):
        group = "intra" if what == "scale-up bandwidth" else "inter"
        if group == "intra":
            intra = replace(intra, bandwidth=intra.bandwidth * factor)
        else:
            inter = replace(inter, bandwidth=inter.bandwidth * factor)
        # Measured collective fits (a calibrated profile) override the link's bandwidth: scale them too.
        hw = replace(hw, collective_fits=tuple(replace(f, busbw=f.busbw * factor) if f.group == group else f
                                               for f in hw.collective_fits))
    else:
        raise ValueError(what)
    return make_cluster(hw, cluster.devices, devices_per_node=cluster.devices_per_node, inter_node=inter,
                        intra_node=intra, name=cluster.name, slices=cluster.slices,
                        slice_shape=cluster.slice_shape or None, wraps=cluster.wraps or None,
                        pod_devices=cluster.pod_devices, oversubscription=cluster.oversubscription)


NUMERIC = ("tp", "pp", "dp", "cp", "micro_batch", "global_batch", "zero", "sp", "vpp")
# Every other Layout field must be equal for layouts to share one array estimate.
CATEGORICAL = tuple(f.name for f in fields(Layout) if f.name not in NUMERIC + ("recompute", "shard_group"))


def stack_layouts(layouts: list) -> list[tuple[list[int], Layout]]:
    """Layouts that differ only in numeric knobs, stacked into array Layouts (one estimate call each)."""
    groups: dict[tuple, list[int]] = {}
    for i, lay in enumerate(layouts):
        groups.setdefault(tuple(getattr(lay, k) for k in CATEGORICAL), []).append(i)
    out = []
    for idx in groups.values():
        first = layouts[idx[0]]
        arrays = {k: np.array([getattr(layouts[i], k) for i in idx]) for k in NUMERIC}
        arrays["recompute"] = np.array([RECOMPUTE.index(layouts[i].recompute) for i in idx])
        arrays["shard_group"] = np.array([layouts[i].shard_group or layouts[i].dp for i in idx])
        out.append((idx, replace(first, **arrays)))
    return out


def rank_stability(model, cluster: Cluster, layouts: list, headroom: float, swing: float = SWING,
                   tolerance: float = 0.01, reference: int | None = None, software=None) -> list[dict]:
    """For each plan (in rank order): under how many of the 2x5 perturbations it is (within 1% of) the
    fastest of the first ``reference`` plans (all of them by default), and its worst rank among those.

    A fixed reference set keeps a plan's verdict the same however many plans are shown."""
    ref = len(layouts) if reference is None else max(1, min(reference, len(layouts)))
    cases = [(w, f) for w in PERTURBED for f in (1 - swing, 1 + swing)]
    firsts = [0] * len(layouts)
    worst = [1] * len(layouts)
    flips = []
    groups = stack_layouts(layouts)
    for what, factor in cases:
        cl = scaled_cluster(cluster, what, factor)
        times = [0.0] * len(layouts)
        for idx, stacked in groups:
            t = np.broadcast_to(estimate(model, cl, stacked, headroom=headroom, check=False,
                                         software=software).step_time_s, len(idx))
            for i, v in zip(idx, t):
                times[i] = float(v)
        best = min(times[:ref])
        for i, t in enumerate(times):
            if t <= best * (1 + tolerance):
                firsts[i] += 1
            rank = 1 + sum(1 for j in range(ref) if j != i and (times[j], j) < (t, i))
            worst[i] = max(worst[i], rank)
        if times[0] > best * (1 + tolerance):
            flips.append(f"{what} {'-' if factor < 1 else '+'}{swing:.0%}")
    out = []
    for i in range(len(layouts)):
        out.append({"first_in": firsts[i], "cases": len(cases), "worst_rank": worst[i],
                    "holds": firsts[i] == len(cases)})
    if out:
        out[0]["loses_first_under"] = flips
    return out


def sensitivity(run_search, cluster: Cluster, best_time_s: float, gain: float = 0.10) -> list[dict]:
    """Best step time with each hardware parameter 10% better; ``run_search(cluster)`` returns the best time."""
    rows = []
    for what in SENSITIVITY:
        t = run_search(scaled_cluster(cluster, what, 1 + gain))
        rows.append({"parameter": what, "step_time_s": t,
                     "speedup": (best_time_s / t - 1.0) if t else 0.0})
    return sorted(rows, key=lambda r: -r["speedup"])
