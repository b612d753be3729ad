"""How much a communication kernel running beside compute slows that compute: a profile's ``overlap``.

NCCL runs each collective as a kernel of one thread block per channel, and each block holds its SM
for the whole collective (NVIDIA/nccl issue 1656: NCCL blocks do not share an SM with compute
kernels). Compute overlapped with communication therefore runs on fewer SMs; a collective over the
scale-up link also streams HBM (it reads what it sends and writes what it receives). The profile
records how many SMs a collective holds on each link class and the measured slowdown of GEMMs,
fused attention and memory-bound passes against the fraction of SMs held (``scripts/gpu_overlap.py``).
A transfer on the copy engines holds no SM but still reads and writes HBM: ``copy_slowdown`` is the
measured GEMM slowdown beside copies that take a share of the device's copy rate
(``scripts/gpu_tp_overlap.py``, paced copies), the cost of a copy-engine exchange (a collective matmul's).
``ring_exchange`` is the measured time of a GEMM run as a ring exchange runs it on one device (``tp`` chunks,
each waiting for its peer copy; fed to a reduce-scatter, a last pass summing the received partials) over
the whole GEMM's, per collective and GEMM dtype (``scripts/gpu_tp_overlap.py``, ``ring``).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .yamlio import check_keys, number, require_mapping

LINK_CLASSES = ("scale_up", "network")     # a group inside the scale-up domain, or one spanning the network
OP_CLASSES = ("gemm", "attention", "memory")
OVERLAP_KEYS = ("collective_sms", "sm_fraction", "slowdown", "copy_slowdown", "ring_exchange")
RING_COLLECTIVES = ("all_gather", "reduce_scatter")
RING_DTYPES = ("bf16", "fp8")  # the GEMM's input dtype: 16-bit, or FP8
COPY_KEYS = ("copy_share", "gemm")


@dataclass(frozen=True)
class Contention:
    """SMs a collective holds per link class, and the compute slowdown per op class against the
    fraction of SMs held (``slowdown[link][op]`` has one value per entry of ``sm_fraction``)."""

    collective_sms: Mapping[str, int]
    sm_fraction: tuple[float, ...]
    slowdown: Mapping[str, Mapping[str, tuple[float, ...]]]
    # GEMM slowdown beside copies taking each share of the copy rate (None: not measured, priced as none)
    copy_slowdown: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # {collective: {dtype: ring-exchange GEMM time / whole GEMM time}} (None: not measured, priced as 1)
    ring_exchange: Mapping[str, Mapping[str, float]] | None = None


def contention_from_dict(data: Any, what: str) -> Contention | None:
    """Parse a profile's ``overlap`` section (None when the profile has none)."""
    if data is None:
        return None
    data = require_mapping(data, what)
    check_keys(data, OVERLAP_KEYS, what)
    sms = require_mapping(data.get("collective_sms"), f"{what}.collective_sms")
    check_keys(sms, LINK_CLASSES, f"{what}.collective_sms")
    held = {k: int(number(sms, k, f"{what}.collective_sms", integer=True, maximum=100_000)) for k in LINK_CLASSES}
    fractions = data.get("sm_fraction")
    if not isinstance(fractions, list) or len(fractions) < 2 or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1 for x in fractions) \
            or fractions != sorted(fractions):
        raise ParplanError(f"{what}.sm_fraction: expected an increasing list of at least two fractions in (0, 1)")
    table = require_mapping(data.get("slowdown"), f"{what}.slowdown")
    check_keys(table, LINK_CLASSES, f"{what}.slowdown")
    slowdown = {}
    for link in LINK_CLASSES:
        w = f"{what}.slowdown.{link}"
        per_op = require_mapping(table.get(link), w)
        check_keys(per_op, OP_CLASSES, w)
        rows = {}
        for op in OP_CLASSES:
            values = per_op.get(op)
            if not isinstance(values, list) or len(values) != len(fractions) or any(
                    isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 10 for x in values):
                raise ParplanError(f"{w}.{op}: expected {len(fractions)} slowdowns between 0 and 10, "
                                   f"one per sm_fraction")
            rows[op] = tuple(float(x) for x in values)
        slowdown[link] = MappingProxyType(rows)
    return Contention(MappingProxyType(held), tuple(float(x) for x in fractions), MappingProxyType(slowdown),
                      _copy_slowdown(data.get("copy_slowdown"), f"{what}.copy_slowdown"),
                      _ring_exchange(data.get("ring_exchange"), f"{what}.ring_exchange"))


def _ring_exchange(data: Any, what: str):
    """``ring_exchange``: per collective and dtype, a GEMM's time as a ring exchange runs it over its whole
    time, from 1 (no cost) to 10."""
    if data is None:
        return None
    data = require_mapping(data, what)
    check_keys(data, RING_COLLECTIVES, what)
    out = {}
    for op in RING_COLLECTIVES:
        per = require_mapping(data.get(op), f"{what}.{op}")
        check_keys(per, RING_DTYPES, f"{what}.{op}")
        ratios = {d: float(number(per, d, f"{what}.{op}", maximum=10.0)) for d in RING_DTYPES}
        for d, r in ratios.items():
            if r < 1.0:
                raise ParplanError(f"{what}.{op}.{d}: a ring exchange's GEMM time over the whole GEMM's is 1 or "
                                   f"more, got {r}")
        out[op] = MappingProxyType(ratios)
    return MappingProxyType(out)


def _copy_slowdown(data: Any, what: str):
    """``copy_slowdown``: increasing shares of the copy rate in (0, 1], and the GEMM slowdown at each."""
    if data is None:
        return None
    data = require_mapping(data, what)
    check_keys(data, COPY_KEYS, what)
    shares, gemm = data.get("copy_share"), data.get("gemm")
    if not isinstance(shares, list) or len(shares) < 2 or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 for x in shares) \
            or shares != sorted(shares):
        raise ParplanError(f"{what}.copy_share: expected an increasing list of at least two shares in (0, 1]")
    if not isinstance(gemm, list) or len(gemm) != len(shares) or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 10 for x in gemm):
        raise ParplanError(f"{what}.gemm: expected {len(shares)} slowdowns between 0 and 10, one per copy_share")
    return tuple(float(x) for x in shares), tuple(float(x) for x in gemm)
