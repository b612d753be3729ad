"""How a framework overlaps its sequence-parallel TP collectives with the GEMMs they feed: a profile's
``parallelism.tp_overlap*`` keys.

``collective-matmul`` runs each all-gather and reduce-scatter in ``tp`` steps under the GEMM it feeds or
follows (XLA's windowed einsum; Transformer Engine's userbuffers, Megatron-Core ``--tp-comm-overlap``;
PyTorch's async TP, torchtitan ``enable_async_tensor_parallel``). What the implementations differ in is data:

* ``tp_overlap`` / ``tp_overlaps``: the default, and what a run may choose (``--tp-overlap``);
* ``tp_overlap_sms``: the SMs the exchange kernels hold beside the GEMMs, per collective (0: the peer copies
  run on the copy engines);
* ``tp_overlap_tail``: the share of each forward collective no GEMM chunk hides (a pipelined
  reduce-scatter's last chunk);
* ``tp_overlap_backward``: the backward collectives it overlaps (the rest stay on the critical path);
* ``tp_overlap_compiled``: the overlap is a compiler pass, which eager runs do not get;
* ``tp_overlap_ring``: the collectives it runs as a ring exchange (the GEMM in ``tp`` chunks, each waiting
  for its peer copy; a reduce-scatter's received partials summed after), whose measured cost per GEMM is
  the hardware profile's ``overlap.ring_exchange``; the others (all where a profile names none) run beside
  whole GEMMs or in pipelined chunks on SM kernels, or add as they go (XLA's windowed einsum).

:func:`parplan.step.overlap.matmul_exposed` prices it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .yamlio import check_keys, choices, flag, number, require_mapping, text

TP_OVERLAPS = ("none", "collective-matmul")
COLLECTIVES = ("all_gather", "reduce_scatter")
KEYS = ("tp_overlap", "tp_overlaps", "tp_overlap_sms", "tp_overlap_tail", "tp_overlap_backward",
        "tp_overlap_compiled", "tp_overlap_ring")


@dataclass(frozen=True)
class TpOverlap:
    default: str = "none"
    offered: tuple[str, ...] = ("none",)
    sms: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict.fromkeys(COLLECTIVES, 0)))
    tail: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(dict.fromkeys(COLLECTIVES, 0.0)))
    backward: tuple[str, ...] = COLLECTIVES
    compiled: bool = False
    ring: tuple[str, ...] = ()


def tp_overlap_from_dict(q: Mapping[str, Any], what: str) -> TpOverlap:
    """The ``tp_overlap*`` keys of a profile's ``parallelism`` block (the block's other keys are its own)."""
    default = text(q, "tp_overlap", what, required=False, choices=TP_OVERLAPS, default="none")
    offered = choices(q, "tp_overlaps", what, TP_OVERLAPS, tuple(dict.fromkeys(("none", default))))
    if default not in offered:
        raise ParplanError(f"{what}: tp_overlap '{default}' is not one of its tp_overlaps ({', '.join(offered)})")
    return TpOverlap(default=default, offered=offered,
                     sms=_per_collective(q, "tp_overlap_sms", what, integer=True, maximum=1024),
                     tail=_per_collective(q, "tp_overlap_tail", what, integer=False, maximum=1.0),
                     backward=choices(q, "tp_overlap_backward", what, COLLECTIVES, COLLECTIVES),
                     compiled=flag(q, "tp_overlap_compiled", what, False),
                     ring=choices(q, "tp_overlap_ring", what, COLLECTIVES, ()))


def _per_collective(q, key, what, *, integer: bool, maximum: float) -> Mapping[str, Any]:
    """A {all_gather, reduce_scatter} mapping of numbers, 0 or more (a collective left out: 0)."""
    data = require_mapping(q.get(key) or {}, f"{what}: {key}")
    check_keys(data, COLLECTIVES, f"{what}: {key}")
    out = {c: number(data, c, f"{what}: {key}", required=False, positive=False, integer=integer,
                     default=0, maximum=maximum) for c in COLLECTIVES}
    for c, v in out.items():
        if v < 0:
            raise ParplanError(f"{what}: {key}: {c} must be 0 or more, got {v}")
    return MappingProxyType(out)
