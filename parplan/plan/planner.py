"""``parplan plan``: run the search, rank what fits, check how far each rank holds and what binds it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ParplanError
from ..layouts.rules import check_recompute_layers
from ..specs.cluster import Cluster
from ..specs.model import ModelSpec
from ..step.software import default_software
from ..step.train import bottleneck, estimate
from ..units import GIB
from .candidates import SearchSpace, default_batch_note, default_global_batch
from .emitters import emit
from .interval import intervals
from .search import describe_row, fewest_devices, layout_of, rank, search
from .trust import rank_stability, sensitivity

MAX_BATCH_CHOICES = 16
STABILITY_REFERENCE = 10  # a plan's rank under perturbation is judged against the ten fastest that fit


def parse_global_batch(text: str | None) -> list[int] | None:
    """``1536``, ``512,1024,2048`` or a range ``512..4096`` (powers of two times the start)."""
    if text is None:
        return None
    text = str(text).strip()
    try:
        if ".." in text:
            lo_s, hi_s = text.split("..", 1)
            lo, hi = int(lo_s), int(hi_s)
            if lo < 1 or hi < lo:
                raise ValueError
            values, v = [], lo
            while v <= hi:
                values.append(v)
                v *= 2
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ParplanError(f"--global-batch takes a number, a list like 512,1024 or a range like 512..4096; "
                           f"got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise ParplanError(f"--global-batch values must be positive whole numbers, got '{text}'")
    if len(values) > MAX_BATCH_CHOICES:
        raise ParplanError(f"--global-batch gives {len(values)} values; at most {MAX_BATCH_CHOICES}")
    return values


def _search_all(model, cluster, batches, space_kw):
    import pandas as pd

    frames, evaluated, spaces, last_error = [], 0, [], None
    for gb in batches:
        space = SearchSpace(global_batch=gb, **space_kw)
        try:
            df, n = search(model, cluster, space)
        except ParplanError as exc:
            last_error = exc
            continue
        frames.append(df)
        evaluated += n
        spaces.append(space)
    if not frames:
        raise last_error
    return pd.concat(frames, ignore_index=True), evaluated, spaces[0]


def binding_constraint(df, ranked, headroom, hbm_bytes, host_bytes=None) -> str:
    """What keeps the best plan from being faster: if some faster layout does not fit, memory, told by the
    one nearest to fitting (the least memory among the faster ones; the host's where its HBM fits and its
    offloaded activations do not); else what the best plan's time goes to."""
    best = ranked.iloc[0]
    faster = df[(~df["fits"]) & (df["tokens_per_s"] > best["tokens_per_s"] * 1.001)]
    usable = hbm_bytes * (1 - headroom)
    if not faster.empty:
        near = faster.sort_values(["memory_bytes", "tokens_per_s"], ascending=[True, False], kind="stable").iloc[0]
        gain = near["tokens_per_s"] / best["tokens_per_s"] - 1
        if near["memory_bytes"] <= usable and host_bytes:  # fits the HBM: its offloaded activations do not
            return (f"host memory: {describe_row(near)} offloads {near['host_memory_bytes'] / GIB:.1f} GiB a device, "
                    f"more than the host's {host_bytes / GIB:.0f} GiB, and would run {gain:.1%} faster")
        return (f"memory: with {(near['memory_bytes'] - usable) / GIB:.1f} GiB more usable HBM per device, "
                f"{describe_row(near)} ({near['memory_bytes'] / GIB:.1f} GiB of the {usable / GIB:.1f} usable) "
                f"would run {gain:.1%} faster")
    return f"none of the layout rules: no faster layout exists that does not fit; its time goes to {bottleneck(best)}"


@dataclass(frozen=True)
class PlanResult:
    """What ``parplan plan`` found: every candidate, the ranked ones that fit, and the top plans with
    their full estimates and trust checks."""

    model: ModelSpec
    cluster: Cluster
    objective: str
    batches: list
    batch_note: str            # given, searched, or the default rule
    evaluated: int
    candidates: Any            # DataFrame of every distinct candidate
    ranked: Any                # the ones that fit, best first
    top: Any                   # the first ``top`` rows of ``ranked``
    layouts: list              # their Layouts
    estimates: list            # their full Estimates
    stability: list            # rank_stability of each
    binding_constraint: str | None = None
    sensitivity: list | None = None
    emitted: str | None = None  # the launch config of the best plan
    emit_target: str | None = None
    intervals: list | None = None  # the Interval of each top plan's step time


def make_plan(model, cluster, *, global_batch=None, dtype="bf16", objective="throughput", top=10,
              headroom=0.10, allow_cross_node_tp=False, fixed=None, software=None,
              emit_target=None, explain=False, schedule=None, placements=None, with_intervals=True) -> PlanResult:
    """Search, rank, check the ranks' stability and (with ``explain``) what binds the best plan.

    ``fixed`` pins axes and knobs (``tp``, ``cp``, ``pp``, ``dp``, ``micro_batch``, ``zero``, ``vpp``, ``sp``,
    ``recompute``, ``tp_mode``, ``cp_mode``, ``shard_group``); ``schedule`` and ``placements`` (mesh orders)
    pin the pipeline schedule and the placement; ``software`` (a :class:`parplan.specs.framework.Software`)
    is what runs it (by default the device's default framework), and bounds the layouts searched.
    ``with_intervals``: each top plan's step-time interval (validate, whose errors the intervals are drawn
    from, predicts without them)."""
    seq = model.seq_len
    batches = parse_global_batch(global_batch) if not isinstance(global_batch, int) else [global_batch]
    note = "given" if batches and len(batches) == 1 else "searched"
    if batches is None:
        batches = [default_global_batch(model, cluster, seq)]
        note = default_batch_note(batches[0], seq)
    cluster.hardware.peak(dtype)
    software = software or default_software(cluster, dtype)
    if (fixed or {}).get("recompute_layers") is not None:  # a block recompute is a full one of some layers
        fixed = {**fixed, "recompute": fixed.get("recompute", "full")}
        check_recompute_layers(fixed["recompute_layers"], fixed["recompute"], software.framework, model.layers)
    space_kw = dict(seq_len=seq, dtype=dtype, allow_cross_node_tp=allow_cross_node_tp, fixed=fixed or {},
                    software=software, headroom=headroom, schedule=schedule, placements=placements)
    df, evaluated, space = _search_all(model, cluster, batches, space_kw)
    ranked = rank(df, objective)
    if ranked.empty:
        need = fewest_devices(model, cluster, SearchSpace(global_batch=batches[0], **space_kw))
        more = f"; the fewest {cluster.hardware.name} devices on which some layout fits: {need}" if need else ""
        raise ParplanError(f"{model.name} does not fit on {cluster.label} at any layout "
                           f"(global batch {', '.join(map(str, batches))}, {100 * headroom:.0f}% HBM headroom){more}")
    best = ranked.head(top)
    checked = [layout_of(row, space, cluster) for _, row in ranked.head(max(top, STABILITY_REFERENCE)).iterrows()]
    layouts = checked[:top]
    binding = sens = None
    if explain:
        binding = binding_constraint(df, ranked, headroom, cluster.hardware.hbm_bytes,
                                     cluster.hardware.host_memory_bytes)

        def best_time(cl):
            d2, _, _ = _search_all(model, cl, batches, space_kw)
            r2 = rank(d2, objective)
            return float(r2.iloc[0]["step_time_s"]) if not r2.empty else float("nan")
        sens = sensitivity(best_time, cluster, float(ranked.iloc[0]["step_time_s"]))
    estimates = [estimate(model, cluster, lay, headroom=headroom, software=software) for lay in layouts]
    return PlanResult(
        model=model, cluster=cluster, objective=objective, batches=batches, batch_note=note, evaluated=evaluated,
        candidates=df, ranked=ranked, top=best, layouts=layouts, estimates=estimates,
        intervals=intervals(model, cluster, layouts, [float(e.step_time_s) for e in estimates], software, headroom)
        if with_intervals else None,
        stability=rank_stability(model, cluster, checked, headroom, reference=STABILITY_REFERENCE,
                                 software=software)[:top],
        binding_constraint=binding,
        sensitivity=sens, emitted=emit(emit_target, layouts[0], model, software) if emit_target else None,
        emit_target=emit_target)


__all__ = ["PlanResult", "binding_constraint", "make_plan", "parse_global_batch"]
