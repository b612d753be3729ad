"""What communication overlapped with compute costs: the compute slowdown, and the time exposed.

A collective of link time ``L`` runs beside compute that takes ``W`` alone. While both run, the
compute progresses at ``1 / (1 + s)`` of its rate, ``s`` being the slowdown the profile measured for
the SMs the collective holds (:mod:`parplan.specs.contention`). If the collective ends first
(``L <= W (1 + s)``), the compute has done ``L / (1 + s)`` of its work by then and the rest at full
rate: ``T = W + L s / (1 + s)``. Otherwise the compute ends at ``W (1 + s)`` and the collective goes
on alone: ``T = L``. The time beyond ``W`` is the exposed time:

    exposed = max(L - W, L s / (1 + s))

and a part ``F`` of ``L`` that nothing can hide (the first layer's weight gather, with nothing to
prefetch behind) is exposed whole: ``exposed = max(L - W, F + (L - F) s / (1 + s))``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..specs.contention import OP_CLASSES
from . import ops as ops_mod


def op_class(op: ops_mod.Op) -> str:
    """The contention class of a layer op: a GEMM, the fused attention kernel, or a memory-bound pass."""
    if op.kind in (ops_mod.MATMUL, ops_mod.BATCHED):
        return "gemm"
    if op.kind == ops_mod.FLASH:
        return "attention"
    return "memory"


def class_seconds(ops, times, which: int) -> dict[str, Any]:
    """Seconds of forward (``which`` 0) or backward (1) per op class over one layer's ops."""
    out = {c: np.float64(0.0) for c in OP_CLASSES}
    for op, t in zip(ops, times):
        out[op_class(op)] = out[op_class(op)] + t[which]
    return out


def slowdown(hw, link: str, mix: Mapping[str, Any], sms: int | None = None):
    """Slowdown of compute with the op-class time ``mix`` beside a collective on ``link`` (``scale_up`` or
    ``network``): each class's measured slowdown at the fraction of SMs the collective holds (an NCCL
    collective's, or ``sms``), weighted by the class's share of the compute time. 0 when the profile
    measured no contention, or the collective holds no SMs (a copy-engine transfer)."""
    c = hw.contention
    if c is None or sms == 0:
        return np.float64(0.0)
    held = (c.collective_sms[link] if sms is None else sms) / hw.compute_units
    total = sum(mix.values(), np.float64(0.0))
    s = np.float64(0.0)
    for op in OP_CLASSES:
        rate = np.interp(held, (0.0,) + c.sm_fraction, (0.0,) + c.slowdown[link][op])
        s = s + rate * np.asarray(mix.get(op, 0.0))
    return s / np.where(total > 0, total, 1.0)


def copy_exchange_slowdown(hw):
    """GEMM slowdown beside a copy-engine exchange over the scale-up link (a collective matmul's all-gather
    steps): the profile's measured ``copy_slowdown`` at the exchange's share of the device's copy rate, which
    reads what it sends and writes what it receives at the link's rate: 2 x link / (HBM x copy efficiency).
    0 where the profile measured none."""
    c = hw.contention
    if c is None or c.copy_slowdown is None:
        return np.float64(0.0)
    shares, gemm = c.copy_slowdown
    link = hw.intra_node.bandwidth * hw.intra_node.efficiency
    share = min(1.0, 2.0 * link / (hw.hbm_bandwidth * hw.hbm_efficiency))
    return np.float64(np.interp(share, (0.0,) + shares, (0.0,) + gemm))


def exposed_s(link_s, window_s, floor_s, slow):
    """Seconds beyond the compute ``window_s`` of collectives of ``link_s`` run beside it, ``floor_s`` of
    them unhideable, the compute slowed by ``slow`` while they run (module docstring)."""
    link_s, window_s, floor_s, slow = (np.asarray(x, float) for x in (link_s, window_s, floor_s, slow))
    floor_s = np.minimum(floor_s, link_s)
    return np.maximum(np.maximum(link_s - window_s, 0.0), floor_s + (link_s - floor_s) * slow / (1.0 + slow))
