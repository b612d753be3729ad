"""The measured kernel tables a hardware profile may carry, and their strict readers: a matmul efficiency
curve, misaligned and FP8 GEMM rates, fused attention curves, eager element-wise rates per op family
and grouped (MoE) GEMM rates. Each value's source lives in the profile's ``sources``."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .yamlio import check_keys, number, require_mapping

EAGER_FAMILIES = ("rmsnorm", "layernorm", "rope", "swiglu", "residual", "transposes", "loss")
FP8_SCALINGS = ("tensorwise", "rowwise")
ATTENTION_CURVE_KEYS = ("seq", "forward", "backward", "forward_blocks_per_sm", "forward_lone_rate")


@dataclass(frozen=True)
class MatmulCurve:
    """A measured matmul efficiency curve: fraction of peak against FLOPs per call (log-interpolated)."""

    flops: tuple[float, ...]
    efficiency: tuple[float, ...]


@dataclass(frozen=True)
class AttentionCurve:
    """A fused attention kernel's measured rate: fraction of the large-GEMM rate against sequence length.

    ``forward`` and ``backward`` map a head size to one fraction per entry of ``seq`` (causal, the
    kernel's own FLOPs: the causal half of ``4 b a s^2 d`` forward, 2.5x that backward).
    ``forward_blocks_per_sm`` (1 or 2) thread blocks of the forward share an SM, and one left alone runs at
    ``forward_lone_rate`` of the SM's rate (``parplan.cost.kernels.tile_utilization``).
    """

    seq: tuple[float, ...]
    forward: Mapping[int, tuple[float, ...]]
    backward: Mapping[int, tuple[float, ...]]
    forward_blocks_per_sm: int = 1
    forward_lone_rate: float = 1.0


def curve_from_list(data: Any, what: str) -> MatmulCurve | None:
    if data is None:
        return None
    if not isinstance(data, list) or len(data) < 2:
        raise ParplanError(f"{what}: expected a list of at least two [flops, efficiency] pairs")
    pts = []
    for i, row in enumerate(data):
        if not (isinstance(row, list) and len(row) == 2):
            raise ParplanError(f"{what}[{i}]: expected [flops, efficiency]")
        pair = {"flops": row[0], "efficiency": row[1]}
        pts.append((number(pair, "flops", f"{what}[{i}]"), number(pair, "efficiency", f"{what}[{i}]", maximum=1.0)))
    pts.sort()
    return MatmulCurve(tuple(p[0] for p in pts), tuple(p[1] for p in pts))


MISALIGNED_BYTES = (1, 2, 4, 8)
# Expert-GEMM curves: one grouped kernel ("fraction") or one GEMM per expert over several CUDA streams
# ("streams"), each in 16 bits and in FP8 ("_fp8"); "fraction" is required.
GROUPED_CURVES = ("fraction", "fraction_fp8", "streams", "streams_fp8")


def misaligned_from_dict(data: Any, what: str) -> Mapping[int, float]:
    """``{bytes: fraction}``: the rate of GEMMs whose feature sizes are multiples of only that many bytes."""
    if data is None:
        return MappingProxyType({})
    data = require_mapping(data, what)
    out = {}
    for key in data:
        if isinstance(key, bool) or key not in MISALIGNED_BYTES:
            raise ParplanError(f"{what}: key {key!r} must be an alignment in bytes, one of "
                               f"{', '.join(map(str, MISALIGNED_BYTES))}")
        out[int(key)] = float(number(data, key, what, maximum=1.0))
    return MappingProxyType(out)


def grouped_from_dict(data: Any, what: str):
    """``{tokens_per_expert: [...], fraction: [...], ...}``: expert GEMMs' rate against the roofline's, as
    ``(tokens, {curve: fractions})`` over :data:`GROUPED_CURVES`."""
    if data is None:
        return None
    data = require_mapping(data, what)
    check_keys(data, ("tokens_per_expert",) + GROUPED_CURVES, what)
    tokens = data.get("tokens_per_expert")
    curves = {k: data[k] for k in GROUPED_CURVES if k in data}
    if not (isinstance(tokens, list) and len(tokens) >= 2 and "fraction" in curves) or any(
            not isinstance(c, list) or len(c) != len(tokens) for c in curves.values()) or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0
            for x in tokens + [v for c in curves.values() for v in c]) \
            or tokens != sorted(tokens) or max(v for c in curves.values() for v in c) > 1:
        raise ParplanError(f"{what}: expected increasing tokens_per_expert and as many fractions in (0, 1] in "
                           f"each of fraction (required), {', '.join(GROUPED_CURVES[1:])}")
    return tuple(float(x) for x in tokens), MappingProxyType({k: tuple(float(x) for x in c)
                                                               for k, c in curves.items()})


def _fractions(data: Any, keys, what: str) -> Mapping[str, float]:
    """A mapping of some of ``keys`` to fractions in (0, 1] (empty when absent)."""
    if data is None:
        return MappingProxyType({})
    data = require_mapping(data, what)
    check_keys(data, keys, what)
    return MappingProxyType({k: float(number(data, k, what, maximum=1.0)) for k in data})


def eager_from_dict(data: Any, what: str) -> Mapping[str, float]:
    return _fractions(data, EAGER_FAMILIES, what)


def fp8_from_dict(data: Any, what: str) -> Mapping[str, float]:
    return _fractions(data, FP8_SCALINGS, what)


def attention_kernels_from_dict(data: Any, what: str) -> Mapping[str, AttentionCurve]:
    if data is None:
        return MappingProxyType({})
    data = require_mapping(data, what)
    out = {}
    for kernel, curve in data.items():
        w = f"{what}.{kernel}"
        curve = require_mapping(curve, w)
        check_keys(curve, ATTENTION_CURVE_KEYS, w)
        seq = curve.get("seq")
        if not isinstance(seq, list) or len(seq) < 2 or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in seq) or seq != sorted(seq):
            raise ParplanError(f"{w}: 'seq' must be an increasing list of at least two positive lengths")
        passes = {}
        for key in ("forward", "backward"):
            table = require_mapping(curve.get(key), f"{w}.{key}")
            heads = {}
            for head_dim, fractions in table.items():
                if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
                    raise ParplanError(f"{w}.{key}: keys must be head sizes, got {head_dim!r}")
                if not isinstance(fractions, list) or len(fractions) != len(seq) or any(
                        isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 2 for x in fractions):
                    raise ParplanError(f"{w}.{key}.{head_dim}: expected {len(seq)} fractions in (0, 2] of the GEMM "
                                       f"rate")
                heads[head_dim] = tuple(float(x) for x in fractions)
            if not heads:
                raise ParplanError(f"{w}.{key}: no head size measured")
            passes[key] = MappingProxyType(heads)
        blocks = number(curve, "forward_blocks_per_sm", w, required=False, integer=True, default=1)
        if blocks not in (1, 2):
            raise ParplanError(f"{w}: 'forward_blocks_per_sm' must be 1 or 2 (the schedules parplan has), "
                               f"got {blocks!r}")
        lone = number(curve, "forward_lone_rate", w, required=False, default=1.0, maximum=1.0)
        if lone < 0.5:
            raise ParplanError(f"{w}: 'forward_lone_rate' must be in [0.5, 1] (a block alone gets at least its "
                               f"half of the SM), got {lone!r}")
        if blocks == 1 and lone != 1.0:
            raise ParplanError(f"{w}: 'forward_lone_rate' needs 'forward_blocks_per_sm: 2'")
        out[str(kernel)] = AttentionCurve(tuple(float(x) for x in seq), passes["forward"], passes["backward"],
                                          int(blocks), float(lone))
    return MappingProxyType(out)
