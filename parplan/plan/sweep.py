"""Best plan across a grid of clusters and batches: ``parplan sweep`` and the report's scaling curves.

Each point of the grid runs the plan search (``search.search`` + ``search.rank``)
and keeps the fastest layout that fits, with its step-time breakdown. The
scaling curves of ``parplan report`` are two such grids: device counts in
powers of two up to the cluster size (the global batch following the default
batch rule), and global batches around the chosen one at the full cluster.

``--vary`` values: ``a..b`` is ``a, 2a, 4a, ...`` up to ``b``; ``a,b,c`` lists
values; both mix (``8..64,96``).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from ..errors import ParplanError
from ..step.train import estimate
from ..layouts.strategies import breakdown_keys
from ..cost.memory import DEFAULT_HEADROOM
from ..specs.hardware import MAX_DEVICES, load_hardware
from ..specs.cluster import Cluster, load_cluster, make_cluster
from ..specs.framework import resolve_software
from ..specs.framework_loader import load_framework
from ..specs.model import ModelSpec, with_seq_len
from ..step.software import default_software
from .candidates import DEFAULT_BATCH_TOKENS, SearchSpace, default_global_batch
from ..step.train import bottleneck
from .search import describe_row, layout_of, rank, search

VARY_KEYS = ("devices", "global-batch", "seq")
_KEY_ALIASES = {"devices": "devices", "device": "devices", "global-batch": "global-batch",
                "global_batch": "global-batch", "gb": "global-batch", "batch": "global-batch",
                "seq": "seq", "seq-len": "seq", "seq_len": "seq"}
MAX_POINTS = 2000
_INT = re.compile(r"^\d+$")

# Columns copied from the best row of the search into a sweep point.
PLAN_COLUMNS = ("tp", "pp", "dp", "cp", "zero", "micro_batch", "recompute", "sp", "vpp", "order",
                "step_time_s", "tokens_per_s", "mfu", "hfu", "tflops_per_device", "memory_bytes")


# --------------------------------------------------------------------------- --vary parsing


def _positive(text: str, spec: str) -> int:
    if not _INT.match(text) or int(text) < 1:
        raise ParplanError(f"--vary {spec}: '{text}' is not a positive whole number")
    return int(text)


def parse_values(text: str, spec: str = "") -> list[int]:
    """``64..4096`` (doubling), ``512,1024,2048``, or a mix; duplicates dropped, order kept."""
    spec = spec or text
    values: list[int] = []
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ParplanError(f"--vary {spec}: no values; give a range like 64..4096 or a list like 512,1024")
    for part in parts:
        if not part:
            raise ParplanError(f"--vary {spec}: empty item in the list")
        if ".." in part:
            lo_text, _, hi_text = part.partition("..")
            lo, hi = _positive(lo_text.strip(), spec), _positive(hi_text.strip(), spec)
            if lo > hi:
                raise ParplanError(f"--vary {spec}: empty range {lo}..{hi} (the start is above the end)")
            v = lo
            while v <= hi:
                values.append(v)
                v *= 2
        else:
            values.append(_positive(part, spec))
    return list(dict.fromkeys(values))


def parse_vary(specs: Iterable[str]) -> dict[str, list[int]]:
    """``["devices=64..4096", "global-batch=512,1024"]`` -> ``{"devices": [...], "global-batch": [...]}``."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ParplanError(f"--vary '{spec}': expected KEY=VALUES such as devices=64..4096 "
                               f"or global-batch=512,1024")
        if key not in _KEY_ALIASES:
            from ..specs.yamlio import suggest

            raise ParplanError(f"--vary: unknown key '{key}'{suggest(key, VARY_KEYS)}; "
                               f"keys are {', '.join(VARY_KEYS)}")
        name = _KEY_ALIASES[key]
        if name in out:
            raise ParplanError(f"--vary: '{name}' given twice")
        out[name] = parse_values(values.strip(), spec)
        if name == "devices" and max(out[name]) > MAX_DEVICES:
            raise ParplanError(f"--vary {spec}: at most {MAX_DEVICES} devices")
    if not out:
        raise ParplanError("give at least one --vary KEY=VALUES, e.g. --vary devices=64..4096")
    points = 1
    for v in out.values():
        points *= len(v)
    if points > MAX_POINTS:
        raise ParplanError(f"--vary: {points} combinations is more than {MAX_POINTS}; narrow the ranges")
    return out


# --------------------------------------------------------------------------- clusters


def base_cluster(spec: str) -> tuple[Cluster, bool]:
    """The cluster ``--hw`` names and whether it fixes a device count (a bare profile name does not)."""
    try:
        hw = load_hardware(spec)
    except ParplanError:
        return load_cluster(spec), True
    return make_cluster(hw, hw.devices_per_node), False


def with_devices(cluster: Cluster, devices: int) -> Cluster:
    """The same servers and network with another device count."""
    if devices == cluster.devices:
        return cluster
    return make_cluster(cluster.hardware, devices, devices_per_node=cluster.devices_per_node,
                        inter_node=cluster.inter_node, intra_node=cluster.intra_node)


def device_counts(cluster: Cluster, start: int = 8) -> list[int]:
    """Powers of two from ``start`` to the cluster size (and the cluster size itself)."""
    n = cluster.devices
    counts = []
    v = min(start, n)
    while v < n:
        counts.append(v)
        v *= 2
    counts.append(n)
    return counts


def scaled_batch(model: ModelSpec, cluster: Cluster, seq: int, global_batch: int | None) -> int:
    """The default batch rule at this cluster size, or a given batch rounded up to a multiple of the devices."""
    if global_batch is None:
        return default_global_batch(model, cluster, seq)
    n = cluster.devices
    return int(-(-max(global_batch, n) // n) * n)


# --------------------------------------------------------------------------- one point


# The FSDP baseline of a sweep whose framework does not shard parameters (Megatron-Core): PyTorch FSDP2.
FSDP_FRAMEWORK = "torchtitan"


@dataclass(frozen=True)
class Options:
    """Search settings shared by every point of a sweep."""

    dtype: str = "bf16"
    headroom: float = DEFAULT_HEADROOM
    objective: str = "throughput"
    allow_cross_node_tp: bool = False
    software: Any = None       # a parplan.specs.framework.Software (None: the device's default framework)
    fixed: dict | None = None


def _plan_columns(row, est=None, prefix: str = "") -> dict[str, Any]:
    """One plan as flat columns: its knobs from the search row, its numbers from ``estimate`` when given."""
    out = {f"{prefix}layout": describe_row(row), f"{prefix}bottleneck": bottleneck(row)}
    for c in PLAN_COLUMNS:
        v = row[c]
        out[f"{prefix}{c}"] = v.item() if hasattr(v, "item") else v
    for k in breakdown_keys():
        out[f"{prefix}{k}_s"] = float(row[f"{k}_s"])
    if est is not None:
        cols = {k: float(v) for k, v in est.columns().items() if k != "fits"}
        for k in ("step_time_s", "tokens_per_s", "mfu", "hfu", "tflops_per_device", "memory_bytes"):
            out[f"{prefix}{k}"] = cols[k]
        for k in breakdown_keys():
            out[f"{prefix}{k}_s"] = cols[f"{k}_s"]
        out[f"{prefix}bottleneck"] = bottleneck(cols)
    return out


def best_point(model: ModelSpec, cluster: Cluster, global_batch: int, options: Options = Options(), *,
               fsdp: bool = False) -> dict[str, Any]:
    """The best plan of ``model`` on ``cluster`` at ``global_batch`` as one flat row.

    ``status`` is ``ok``, ``no layout fits`` or the reason no layout exists. With
    ``fsdp=True`` the best fully sharded data-parallel plan (ZeRO-3) is added with
    ``fsdp_`` column names.
    """
    seq = model.seq_len
    point: dict[str, Any] = {"devices": cluster.devices, "global_batch": global_batch, "seq_len": seq,
                             "tokens_per_device": global_batch * seq / cluster.devices}
    software = options.software or default_software(cluster, options.dtype)
    space = SearchSpace(global_batch=global_batch, seq_len=seq, dtype=options.dtype,
                        allow_cross_node_tp=options.allow_cross_node_tp, fixed=options.fixed or {},
                        software=software, headroom=options.headroom)
    try:
        df, evaluated = search(model, cluster, space)
    except ParplanError as exc:
        point.update(status=f"no layout: {exc}", candidates=0, fitting=0)
        return point
    ranked = rank(df, options.objective)
    point.update(candidates=evaluated, fitting=len(ranked), framework=software.name)

    def columns(row, sp, prefix=""):
        est = estimate(model, cluster, layout_of(row, sp, cluster), headroom=options.headroom, software=sp.software)
        return _plan_columns(row, est, prefix)

    if ranked.empty:
        point["status"] = "no layout fits"
    else:
        point["status"] = "ok"
        point.update(columns(ranked.iloc[0], space))
    if fsdp:
        point.update(_fsdp_point(model, cluster, space, options))
    return point


def _fsdp_point(model, cluster, space, options) -> dict[str, Any]:
    """The best fully sharded data-parallel plan (ZeRO-3, no pipeline), with ``fsdp_`` columns; under the
    run's framework when it shards parameters, else under :data:`FSDP_FRAMEWORK` (named in ``fsdp_framework``)."""
    sw = space.software
    if 3 not in sw.framework.data_parallel.zero:
        sw = resolve_software(load_framework(FSDP_FRAMEWORK), dtype=options.dtype)
    sp = replace(space, software=sw, fixed={**(space.fixed or {}), "zero": 3, "pp": 1})
    try:
        df, _ = search(model, cluster, sp)
    except ParplanError:
        return {}
    ranked = rank(df, options.objective)
    if ranked.empty:
        return {}
    row = ranked.iloc[0]
    est = estimate(model, cluster, layout_of(row, sp, cluster), headroom=options.headroom, software=sw)
    return {**_plan_columns(row, est, "fsdp_"), "fsdp_framework": sw.name}


def _report(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _frame(points: list[dict], attrs: dict):
    import pandas as pd

    df = pd.DataFrame(points)
    df.attrs.update(attrs)
    return df


def _attrs(model: ModelSpec, cluster: Cluster, options: Options, **extra) -> dict:
    hw = cluster.hardware
    return {"model": model.name, "hardware": hw.name, "cluster": cluster.name, "dtype": options.dtype,
            "hbm_bytes": float(hw.hbm_bytes), "headroom": options.headroom,
            "cw_tokens_per_device": float(hw.ratios(options.dtype)["flops_per_inter_node_byte"]), **extra}


# --------------------------------------------------------------------------- the report's scaling curves


def device_scaling(model: ModelSpec, cluster: Cluster, *, global_batch: int | None = None,
                   options: Options = Options(), start: int = 8, progress=None):
    """Best plan (and best FSDP plan) at 8, 16, ... devices up to the cluster size.

    The global batch follows the default rule at each size (about 4M tokens, at
    least one sequence per device), or a given batch rounded up to a multiple of
    the device count. ``progress(done, total)`` is called after each point.
    """
    points = []
    counts = device_counts(cluster, start)
    for n in counts:
        cl = with_devices(cluster, n)
        points.append(best_point(model, cl, scaled_batch(model, cl, model.seq_len, global_batch), options,
                                 fsdp=True))
        _report(progress, len(points), len(counts))
    return _frame(points, _attrs(model, cluster, options, x="devices"))


def batch_grid(cluster: Cluster, seq: int, global_batch: int, threshold_tokens: float,
               below: int = 5, above: int = 2, max_points: int = 12) -> list[int]:
    """Global batches ``global_batch * 2^k`` around the chosen one, widened to bracket the C/W threshold."""
    lo, hi = -below, above
    threshold_batch = threshold_tokens * cluster.devices / seq
    while global_batch * 2.0 ** lo > threshold_batch / 2 and hi - lo + 1 < max_points:
        lo -= 1
    while global_batch * 2.0 ** hi < threshold_batch * 2 and hi - lo + 1 < max_points:
        hi += 1
    values = [int(round(global_batch * 2.0 ** k)) for k in range(lo, hi + 1)]
    return sorted({v for v in values if v >= 1})


def batch_scaling(model: ModelSpec, cluster: Cluster, *, global_batch: int | None = None,
                  options: Options = Options(), progress=None):
    """Best plan (and best FSDP plan) on the whole cluster at global batches around the chosen one;
    ``progress(done, total)`` is called after each point."""
    gb = global_batch or default_global_batch(model, cluster, model.seq_len)
    threshold = cluster.hardware.ratios(options.dtype)["flops_per_inter_node_byte"]
    batches = batch_grid(cluster, model.seq_len, gb, threshold)
    points = []
    for b in batches:
        points.append(best_point(model, cluster, b, options, fsdp=True))
        _report(progress, len(points), len(batches))
    return _frame(points, _attrs(model, cluster, options, x="global_batch", chosen_global_batch=gb))


# --------------------------------------------------------------------------- parplan sweep


def run_sweep(model: ModelSpec, hw_spec: str, vary: dict[str, Sequence[int]], *, global_batch: int | None = None,
              options: Options = Options(), progress=None):
    """Best plan for every combination of the varied values, as a DataFrame (one row per combination);
    ``progress(done, total)`` is called after each combination."""
    cluster, has_count = base_cluster(hw_spec)
    if "devices" not in vary and not has_count:
        raise ParplanError(f"--hw {hw_spec} gives no device count: add --vary devices=A..B "
                           f"or name a cluster such as {hw_spec}x512")
    if global_batch is not None and "global-batch" in vary:
        raise ParplanError("give the global batch either with --global-batch or with --vary global-batch, not both")
    keys = list(vary)
    points = []
    combos = list(itertools.product(*(vary[k] for k in keys)))
    for combo in combos:
        values = dict(zip(keys, combo))
        m = with_seq_len(model, values["seq"]) if "seq" in values else model
        cl = with_devices(cluster, values["devices"]) if "devices" in values else cluster
        gb = values.get("global-batch") or scaled_batch(m, cl, m.seq_len, global_batch)
        points.append(best_point(m, cl, gb, options))
        _report(progress, len(points), len(combos))
    batch_note = ("varied" if "global-batch" in vary else
                  f"{global_batch} sequences, rounded up to a multiple of the devices" if global_batch else
                  f"the default budget of {DEFAULT_BATCH_TOKENS / 1e6:.1f}M tokens per step at every point "
                  f"(--global-batch sets another)")
    attrs = _attrs(model, cluster, options, vary=keys, hw_spec=hw_spec, batch_note=batch_note)
    return _frame(points, attrs)
