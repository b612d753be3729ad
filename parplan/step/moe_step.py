"""What a mixture-of-experts model adds to the step's composition.

* The token all-to-alls a framework overlaps with the shared experts (Megatron-Core
  ``--moe-shared-expert-overlap``: the shared experts run on a side stream while the dispatcher
  communicates) hide under the same layer's shared-expert GEMMs: per layer, forward (and
  recompute) under the forward's, backward under the backward's; what outlasts them is exposed.
* Model states per device: the dense parameters by the dense divisors, the routed experts by the
  expert axis's (``parplan.layouts.strategies.expert``).
* The note that says which load imbalance the expert GEMMs were timed with.
"""
from __future__ import annotations

import numpy as np

from ..cost import moe as moe_mod
from .comms import link_sum

SHARED_OPS = ("shared_gate_up", "shared_up", "shared_activation", "shared_down")


def shared_expert_times(ops, times):
    """(forward, backward) seconds of the shared experts' kernels per layer."""
    fwd = sum((t[0] for o, t in zip(ops, times) if o.name in SHARED_OPS), np.float64(0.0))
    bwd = sum((t[1] for o, t in zip(ops, times) if o.name in SHARED_OPS), np.float64(0.0))
    return fwd, bwd


def _links(costs, axis: str):
    f = link_sum(costs, lambda c: c.axis == axis and c.hidden_by == "shared_experts" and c.phase != "backward")
    b = link_sum(costs, lambda c: c.axis == axis and c.hidden_by == "shared_experts" and c.phase == "backward")
    return f, b


def exposed(costs, axis: str, shared_fwd, shared_bwd):
    """Seconds per layer of ``axis``'s collectives hidden under the shared experts that outlast them."""
    f, b = _links(costs, axis)
    return np.maximum(0.0, f - shared_fwd) + np.maximum(0.0, b - shared_bwd)


def exposed_share(costs, cost, shared_fwd, shared_bwd):
    """The exposed seconds per step of one such collective: its share of its axis's exposure."""
    axis = cost.collective.axis
    f, b = _links(costs, axis)
    link = f + b
    return cost.link_s * exposed(costs, axis, shared_fwd, shared_bwd) / np.where(link > 0, link, 1.0)


def local_params(stage_params, expert_params, divisors: dict) -> dict:
    """Parameters per device of each model state: the dense ones over the dense divisors, the experts over
    those times the expert axis's multipliers (``expert_<state>``)."""
    dense = stage_params - expert_params
    return {k: dense / divisors[k] + expert_params / (divisors[k] * divisors.get(f"expert_{k}", 1.0))
            for k in ("weights", "gradients", "optimizer")}


def notes(model, dims) -> tuple[str, ...]:
    """Which load imbalance the expert GEMMs were timed with."""
    if not model.is_moe:
        return ()
    factor, how = moe_mod.imbalance(model, dims)
    return (f"MoE load: the busiest device's experts get {float(np.max(factor)):.3f}x the mean rows ({how})",)
