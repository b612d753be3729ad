"""Fit a hardware profile's numbers to bench rows: alpha-beta per collective, a matmul efficiency curve,
HBM copy efficiency and kernel overhead (``parplan.calibrate.profile`` writes them into a profile).

Collective model (as :func:`parplan.collectives.collective_time_s` uses it)::

    time = alpha_s + size_bytes * bus_factor(op, ranks) / busbw

fitted per (op, intra|inter, ranks) by least squares in *relative* error,
``min sum(((alpha + x / busbw) / t - 1)^2)`` with ``x = size * bus_factor``: small sizes pin
alpha, large sizes pin busbw, and neither swamps the other.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import median
from typing import Sequence

import numpy as np

from ..cost.collectives import bus_factor
from ..errors import ParplanError
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.hardware import CollectiveFit, Hardware
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
    (reports/multi-gpu/README.md). The layer rows measure that directly. An MoE layer's rows are left out:
    its experts' GEMMs run at the profile's own grouped-GEMM curve, not the matmul rate this scales.
    """
    from ..cost.kernels import op_times
    from ..cost.ops import BATCHED, FLASH, MATMUL
    from .compare import layer_row_env, layer_row_ops, shape_fields

    ratios = []
    for r in rows:
        if r.kind != "layer" or not r.correct or r.op not in ("forward", "backward") or r.time_s <= 0 \
                or "experts" in shape_fields(r.shape):
            continue
        try:
            side = 0 if r.op == "forward" else 1
            gemm = other = 0.0
            env = layer_row_env(r)
            for op in layer_row_ops(r):
                t = float(op_times(hw, op, r.dtype, env=env)[side])
                if op.kind in (MATMUL, BATCHED, FLASH):
                    gemm += t
                else:
                    other += t
        except ParplanError:
            continue
        if gemm > 0 and r.time_s > other:
            ratios.append(gemm / (r.time_s - other))
    return (median(ratios), len(ratios)) if ratios else None


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
