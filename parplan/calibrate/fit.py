"""Fit a hardware profile to bench rows: alpha-beta per collective, a matmul efficiency curve, HBM copy
efficiency and kernel overhead; render it as a profile YAML that ``--hw PATH`` loads.

Collective model (as :func:`parplan.collectives.collective_time_s` uses it)::

    time = alpha_s + size_bytes * bus_factor(op, ranks) / busbw

fitted per (op, intra|inter, ranks) by least squares in *relative* error,
``min sum(((alpha + x / busbw) / t - 1)^2)`` with ``x = size * bus_factor``: small sizes pin
alpha, large sizes pin busbw, and neither swamps the other.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from ..cost.collectives import bus_factor
from ..errors import ParplanError
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.hardware import CollectiveFit, Hardware, hardware_from_dict, hardware_names, load_hardware
from ..specs.yamlio import read_yaml
from .rows import Row

MATMUL_DTYPE_PREFERENCE = ("bf16", "fp16", "fp32")
CURVE_BIN_OCTAVES = 0.5
COPY_TOP_SIZES = 3


@dataclass(frozen=True)
class Calibration:
    fits: tuple[CollectiveFit, ...]
    matmul_dtype: str
    matmul_curve: tuple[tuple[float, float], ...]
    hbm_efficiency: float | None
    kernel_overhead_s: float | None
    intra_efficiency: float | None
    notes: tuple[str, ...]
    matmul_efficiency: float | None = None  # the roofline's shape model fitted to the compute-bound rows
    in_layer_scale: float | None = None  # GEMM rate inside measured layers over the matmul rows' rate
    in_layer_passes: int = 0


# --------------------------------------------------------------------------- fitting


def fit_alpha_beta(x: Sequence[float], t: Sequence[float]) -> tuple[float, float, float]:
    """``(alpha_s, busbw, rms relative error)`` of ``t = alpha + x / busbw``, in relative error.

    ``alpha`` is kept non-negative; when the times do not grow with ``x`` the bandwidth is the
    best observed ``x / t``.
    """
    xs = np.asarray(x, dtype=float)
    ts = np.asarray(t, dtype=float)
    if len(xs) < 2 or np.any(ts <= 0):
        raise ParplanError("an alpha-beta fit needs at least two sizes with positive times")
    design = np.column_stack([1.0 / ts, xs / ts])
    (alpha, beta), *_ = np.linalg.lstsq(design, np.ones_like(ts), rcond=None)
    if alpha < 0:
        u = xs / ts
        alpha, beta = 0.0, float(np.sum(u) / np.sum(u * u)) if np.any(u > 0) else 0.0
    if beta <= 0 or not math.isfinite(beta):
        best = float(np.max(xs / ts))
        if best <= 0:
            raise ParplanError("no size moved any bytes; cannot fit a bandwidth")
        beta = 1.0 / best
        alpha = float(max(0.0, np.median(ts - xs * beta)))
    predicted = alpha + xs * beta
    rms = float(np.sqrt(np.mean((predicted / ts - 1.0) ** 2)))
    return float(alpha), float(1.0 / beta), rms


def fit_collectives(rows: Sequence[Row]) -> tuple[list[CollectiveFit], list[str]]:
    """One fit per (op, group class, ranks) from the correct collective rows."""
    notes: list[str] = []
    points: dict[tuple[str, str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    wrong = 0
    for r in rows:
        if r.kind != "collective":
            continue
        if not r.correct:
            wrong += 1
            continue
        if bus_factor(r.op, r.group_size) <= 0 or r.size_bytes <= 0:
            continue
        points[(r.op, r.group_class, r.group_size)][r.size_bytes].append(r.time_s)
    if wrong:
        notes.append(f"left out {wrong} collective rows that failed their correctness check")
    fits = []
    for (op, group, ranks), by_size in sorted(points.items()):
        sizes = sorted(by_size)
        if len(sizes) < 2:
            notes.append(f"{op} {group} {ranks} ranks: only one size measured; no fit")
            continue
        factor = bus_factor(op, ranks)
        alpha, bw, rms = fit_alpha_beta([s * factor for s in sizes], [median(by_size[s]) for s in sizes])
        fits.append(CollectiveFit(op, group, ranks, alpha, bw, len(sizes), rms))
    return fits, notes


def kernel_overhead(rows: Sequence[Row]) -> float | None:
    """The fastest copy or matmul: what a kernel costs when it does almost nothing."""
    times = [r.time_s for r in rows if r.kind in ("copy", "matmul") and r.correct]
    return min(times) if times else None


def hbm_efficiency(rows: Sequence[Row], hw: Hardware, overhead_s: float) -> tuple[float | None, list[str]]:
    """Copy bandwidth (bytes read + written over time less kernel overhead) of the largest copies
    over the datasheet bandwidth, as the roofline's memory term uses it."""
    copies = [r for r in rows if r.kind == "copy" and r.correct and r.bytes_moved > 0]
    if not copies:
        return None, []
    top = sorted({r.size_bytes for r in copies})[-COPY_TOP_SIZES:]
    bw = median(r.bytes_moved / max(r.time_s - overhead_s, 0.5 * r.time_s) for r in copies if r.size_bytes in top)
    eff = bw / hw.hbm_bandwidth
    if eff > 1.0:
        return 1.0, [f"copies reached {bw / 1e9:.0f} GB/s, above the base profile's hbm_bandwidth; "
                     f"efficiency clipped to 1.0 (is --hw the right base profile?)"]
    return eff, []


def matmul_curve(rows: Sequence[Row], hw: Hardware, overhead_s: float,
                 hbm_bytes_per_s: float) -> tuple[str, list[tuple[float, float]], list[str]]:
    """Efficiency against FLOPs per call, as the roofline uses it: ``FLOPs / (peak * (time - overhead))``.

    Rows whose operand traffic alone takes half their time or more are memory-bound (the
    roofline's bandwidth term explains them) and stay out; of the rest, the median shape in
    each half-octave of FLOPs is the typical efficiency at that size (the best one would
    flatter every other shape of that size).
    """
    notes: list[str] = []
    mm = [r for r in rows if r.kind == "matmul" and r.correct and r.flops > 0]
    for dtype in MATMUL_DTYPE_PREFERENCE:
        chosen = [r for r in mm if r.dtype == dtype]
        if chosen and hw.peak_flops.get(dtype):
            break
    else:
        if mm:
            notes.append("matmul rows in no dtype the base profile has a peak for; no matmul curve")
        return "", [], notes
    peak = hw.peak(dtype)
    element = BYTES_PER_ELEMENT[dtype]

    def points(skip_memory_bound: bool) -> list[tuple[float, float]]:
        out = []
        for r in chosen:
            busy = r.time_s - overhead_s
            if busy <= 0:
                continue
            traffic_s = (r.m * r.k + r.k * r.n + r.m * r.n) * element / hbm_bytes_per_s
            if skip_memory_bound and traffic_s >= 0.5 * busy:
                continue
            out.append((r.flops, r.flops / busy / peak))
        return out

    found = points(True)
    if len({round(math.log2(f) / CURVE_BIN_OCTAVES) for f, _ in found}) < 2:
        found = points(False)
    above = sum(1 for r in chosen if r.flops / r.time_s > peak)
    if above:
        notes.append(f"{above} {dtype} matmul rows ran above the base profile's peak; efficiency clipped to 1.0 "
                     f"(is --hw the right base profile?)")
    bins: dict[int, list[tuple[float, float]]] = {}
    for flops, eff in found:
        bins.setdefault(round(math.log2(flops) / CURVE_BIN_OCTAVES), []).append((flops, min(eff, 1.0)))
    curve = sorted((median(f for f, _ in pts), median(e for _, e in pts)) for pts in bins.values())
    if len(curve) < 2:
        notes.append("matmul rows span fewer than two sizes; no matmul curve")
        return dtype, [], notes
    return dtype, curve, notes


def shape_model_efficiency(rows: Sequence[Row], hw: Hardware, dtype: str, overhead_s: float,
                           hbm_bytes_per_s: float) -> float | None:
    """``efficiency.matmul`` for the roofline's shape model: the median over compute-bound rows of
    achieved/(peak x wave utilization x k-loop fill), so that the model's size and shape effects
    stay and only the device's typical rate is measured."""
    from ..cost.roofline import k_efficiency, wave_utilization

    peak, element = hw.peak(dtype), BYTES_PER_ELEMENT[dtype]
    ratios = []
    for r in rows:
        if r.kind != "matmul" or not r.correct or r.dtype != dtype or r.flops <= 0:
            continue
        busy = r.time_s - overhead_s
        traffic_s = (r.m * r.k + r.k * r.n + r.m * r.n) * element / hbm_bytes_per_s
        shape = float(wave_utilization(hw, r.m, r.n) * k_efficiency(r.k))
        if busy <= 0 or traffic_s >= 0.5 * busy or min(r.m, r.n) < 128 or r.flops < 1e11:
            continue
        ratios.append((r.m == r.k == r.n, r.flops / busy / peak / shape))
    # Square GEMMs flatter the device; fit to the non-square (layer-like) ones when there are some.
    layer_like = [v for square, v in ratios if not square]
    chosen = layer_like if len(layer_like) >= 3 else [v for _, v in ratios]
    return min(1.0, median(chosen)) if chosen else None


def in_layer_scale(rows: Sequence[Row], hw: Hardware) -> tuple[float, int] | None:
    """How fast a layer's matmuls run inside measured layers, relative to what ``hw`` (fitted to
    matmuls alone) predicts: per layer pass, the matmul and attention ops' predicted time over
    the measured time less the other ops' predicted time; the median over passes.

    In a layer the GEMMs share the GPU with the kernels, launches and syncs between them: on
    two H200s, a profile fitted to isolated GEMMs predicted whole layers 13-27% fast
    (reports/multi-gpu/README.md). The layer rows measure that directly.
    """
    from ..cost.kernels import op_times
    from ..cost.ops import BATCHED, FLASH, MATMUL
    from .compare import layer_row_ops

    ratios = []
    for r in rows:
        if r.kind != "layer" or not r.correct or r.op not in ("forward", "backward") or r.time_s <= 0:
            continue
        try:
            side = 0 if r.op == "forward" else 1
            gemm = other = 0.0
            for op in layer_row_ops(r):
                t = float(op_times(hw, op, r.dtype)[side])
                if op.kind in (MATMUL, BATCHED, FLASH):
                    gemm += t
                else:
                    other += t
        except ParplanError:
            continue
        if gemm > 0 and r.time_s > other:
            ratios.append(gemm / (r.time_s - other))
    return (median(ratios), len(ratios)) if ratios else None


def apply_in_layer_scale(data: dict[str, Any], base: Hardware, rows: Sequence[Row]) -> tuple[float, int] | None:
    """Scale the fitted matmul rate in ``data`` (a profile being written) by :func:`in_layer_scale`."""
    eff = data.get("efficiency", {})
    if "matmul" not in eff:
        return None
    found = in_layer_scale(rows, hardware_from_dict(data, base.name))
    if found is None:
        return None
    scale, passes = found
    eff["matmul"] = min(1.0, eff["matmul"] * scale)
    if data.get("matmul_curve"):
        data["matmul_curve"] = [_Flow([float(f), min(1.0, float(e) * scale)]) for f, e in data["matmul_curve"]]
    layer_rows = [r for r in rows if r.kind == "layer"]
    sources = data.setdefault("sources", {})
    sources["efficiency.matmul"] = (f"{sources.get('efficiency.matmul', '')}; x {scale:.3f} in-layer scale: "
                                    f"{provenance(layer_rows)} (median over {passes} layer passes of predicted "
                                    f"matmul time over measured time less the other ops' predicted time)")
    return scale, passes


def intra_efficiency(fits: Sequence[CollectiveFit], hw: Hardware) -> float | None:
    """Bus bandwidth of the widest intra-node all-gather (else reduce-scatter) fit over the link's line rate."""
    for op in ("all_gather", "reduce_scatter"):
        cands = [f for f in fits if f.op == op and f.group == "intra"]
        if cands:
            best = max(cands, key=lambda f: f.ranks)
            return best.busbw / hw.intra_node.bandwidth
    return None


def calibrate(rows: Sequence[Row], hw: Hardware) -> Calibration:
    fits, notes = fit_collectives(rows)
    overhead = kernel_overhead(rows)
    overhead_s = hw.kernel_overhead_s if overhead is None else overhead
    hbm, hbm_notes = hbm_efficiency(rows, hw, overhead_s)
    hbm_bytes_per_s = hw.hbm_bandwidth * (hw.hbm_efficiency if hbm is None else hbm)
    dtype, curve, mm_notes = matmul_curve(rows, hw, overhead_s, hbm_bytes_per_s)
    intra = intra_efficiency(fits, hw)
    if intra is not None and intra > 1.0:
        notes.append(f"intra-node busbw is {intra:.2f}x the base profile's line rate; intra_node.efficiency kept")
        intra = None
    shaped = shape_model_efficiency(rows, hw, dtype, overhead_s, hbm_bytes_per_s) if dtype else None
    result = Calibration(tuple(fits), dtype, tuple(curve), hbm, overhead, intra,
                         tuple(notes + mm_notes + hbm_notes), shaped)
    if not (result.fits or result.matmul_curve or result.hbm_efficiency or result.kernel_overhead_s):
        raise ParplanError("nothing to calibrate: the results hold no usable collective, matmul or copy rows")
    return result


# --------------------------------------------------------------------------- provenance


def _date(rows: Sequence[Row]) -> str:
    stamps = sorted(r.timestamp[:10] for r in rows if r.timestamp)
    return stamps[0] if stamps else _dt.date.today().isoformat()


def provenance(rows: Sequence[Row]) -> str:
    """``measured by parplan bench on HOST DATE`` (and the nccl-tests logs, if any)."""
    parts = []
    bench = [r for r in rows if not r.source.startswith("nccl-tests")]
    if bench:
        hosts = ", ".join(sorted({r.host for r in bench if r.host})) or "unknown host"
        parts.append(f"measured by parplan bench on {hosts} {_date(bench)}")
    nccl = [r for r in rows if r.source.startswith("nccl-tests")]
    if nccl:
        hosts = ", ".join(sorted({r.host for r in nccl if r.host})) or "unknown host"
        files = ", ".join(sorted({r.source.split(":", 1)[1] for r in nccl}))
        parts.append(f"measured by nccl-tests on {hosts} ({files}), fitted by parplan calibrate "
                     f"{_dt.date.today().isoformat()}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the profile


class _Flow(list):
    """A YAML list written on one line: ``[flops, efficiency]``."""


class _Dumper(yaml.SafeDumper):
    pass


def _float(dumper: yaml.SafeDumper, value: float) -> yaml.Node:
    """Floats as ``2.039e+12`` or ``0.96``: always with a dot, so YAML 1.1 reads them back as floats."""
    if not math.isfinite(value):
        return dumper.represent_float(value)
    text = f"{value:.6g}"
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e")
    elif "e" not in text and "." not in text:
        text += ".0"
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(float, _float)


def guess_base(rows: Sequence[Row]) -> str:
    """The shipped profile whose name or alias appears in the measured device name."""
    devices = sorted({re.sub(r"[\s_]+", "-", r.device_name.lower()) for r in rows if r.device_name})
    scores: dict[str, int] = {}
    for name in hardware_names():
        hw = load_hardware(name)
        for alias in (hw.name, *hw.aliases):
            alias = alias.lower()
            if any(alias in d for d in devices):
                scores[name] = max(scores.get(name, 0), len(alias))
    if not scores:
        shown = ", ".join(devices) or "no device name"
        raise ParplanError(f"cannot tell which profile to start from ({shown}); pass --hw BASE_PROFILE")
    best = max(scores.values())
    winners = sorted(n for n, s in scores.items() if s == best)
    if len(winners) > 1:
        raise ParplanError(f"the device matches several profiles ({', '.join(winners)}); pass --hw BASE_PROFILE")
    return winners[0]


def profile_dict(base_raw: Mapping[str, Any], base: Hardware, cal: Calibration, rows: Sequence[Row],
                 name: str) -> dict[str, Any]:
    """The base profile's fields with the measured ones replaced."""
    data = copy.deepcopy(dict(base_raw))
    source = provenance(rows)
    data["name"] = name
    data.pop("aliases", None)
    data["description"] = f"{base.name} calibrated: {source}"
    sources = dict(data.get("sources") or {})
    data.setdefault("efficiency", {})
    if cal.fits:
        coll_rows = [r for r in rows if r.kind == "collective"]
        measured = {(f.op, f.group, f.ranks) for f in cal.fits}
        kept = [dict(op=f.op, group=f.group, ranks=f.ranks, alpha_s=f.alpha_s, busbw=f.busbw)
                for f in base.collective_fits if (f.op, f.group, f.ranks) not in measured]
        data["collective_fits"] = kept + [dict(op=f.op, group=f.group, ranks=int(f.ranks), alpha_s=f.alpha_s,
                                               busbw=f.busbw) for f in cal.fits]
        sources["collective_fits"] = (f"{provenance(coll_rows)} (alpha-beta per collective and group class, "
                                      f"least squares in relative error)")
    if cal.intra_efficiency is not None:
        data["intra_node"] = dict(data["intra_node"], efficiency=cal.intra_efficiency)
        sources["intra_node.efficiency"] = (f"{provenance([r for r in rows if r.kind == 'collective'])} "
                                            f"(intra-node all-gather busbw over line rate)")
    mm_rows = [r for r in rows if r.kind == "matmul"]
    if cal.matmul_efficiency is not None:
        # The shape model (wave utilization x k-loop fill) with the measured typical rate; a
        # FLOPs-only curve would lose the shape effects that dominate real layers.
        data.pop("matmul_curve", None)
        data["efficiency"]["matmul"] = cal.matmul_efficiency
        sources["efficiency.matmul"] = (f"{provenance(mm_rows)} (median {cal.matmul_dtype} achieved/(peak x wave "
                                        f"utilization x k/(k+128)) over compute-bound matmuls of 1e11+ FLOPs)")
    elif cal.matmul_curve:
        data["matmul_curve"] = [_Flow([float(f), float(e)]) for f, e in cal.matmul_curve]
        data["efficiency"]["matmul"] = max(e for _, e in cal.matmul_curve)
        note = f"({cal.matmul_dtype} matmul, achieved over peak, median shape per half-octave of FLOPs)"
        sources["matmul_curve"] = f"{provenance(mm_rows)} {note}"
        sources["efficiency.matmul"] = f"{provenance(mm_rows)} (median {cal.matmul_dtype} matmul over peak per size)"
    if cal.hbm_efficiency is not None:
        data["efficiency"]["hbm"] = cal.hbm_efficiency
        sources["efficiency.hbm"] = (f"{provenance([r for r in rows if r.kind == 'copy'])} "
                                     f"(largest device copies, bytes read + written, over hbm_bandwidth)")
    if cal.kernel_overhead_s is not None:
        data["kernel_overhead_s"] = cal.kernel_overhead_s
        sources["kernel_overhead_s"] = (f"{provenance([r for r in rows if r.kind in ('copy', 'matmul')])} "
                                        f"(fastest copy or matmul)")
    data["sources"] = sources
    return data


def render(data: Mapping[str, Any], header: str) -> str:
    body = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def calibrated_profile(rows: Sequence[Row], name: str, base_name: str | None = None,
                       load_as: str = "") -> tuple[Calibration, str, Hardware]:
    """Calibrate ``rows`` against a base profile: the calibration, the profile YAML text named ``name``,
    and that profile as ``--hw`` will load it (checked before anyone writes it)."""
    base = load_hardware(base_name or guess_base(rows))
    if not base.path:
        raise ParplanError(f"base profile {base.name} has no file to start from")
    base_raw = read_yaml(Path(base.path))
    cal = calibrate(rows, base)
    data = profile_dict(base_raw, base, cal, rows, name)
    if cal.matmul_efficiency is not None or cal.matmul_curve:
        scaled = apply_in_layer_scale(data, base, rows)
        if scaled is not None:
            cal = replace(cal, in_layer_scale=scaled[0], in_layer_passes=scaled[1])
    header = (f"Hardware profile calibrated by parplan calibrate from {base.name}.\n"
              f"{provenance(rows)}.\nLoad it with --hw {load_as or name + '.yaml'}")
    text = render(data, header)
    where = load_as or name
    return cal, text, hardware_from_dict(yaml.safe_load(text), where, load_as)
