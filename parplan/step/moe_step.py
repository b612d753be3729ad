"""What a mixture-of-experts model adds to the step's composition.

* The token all-to-alls a framework overlaps with the shared experts (Megatron-Core
  ``--moe-shared-expert-overlap``: the shared experts run on a side stream while the dispatcher
  communicates) hide under the same layer's shared-expert GEMMs: per layer, forward (and
  recompute) under the forward's, backward under the backward's; what outlasts them is exposed.
* With ``micro-batch`` overlap (Megatron-Core ``--overlap-moe-expert-parallel-comm``, its merged
  1F1B schedule: ``combined_1f1b_schedule_for_no_pipelining`` and the interleaved variant) the
  forward of one micro-batch runs with the backward of another, layer by layer, each one's
  all-to-alls on a communication stream under the other's compute. Per layer, the all-to-alls of
  both passes (``L``) run beside both passes' compute (``W``: forward, backward and recompute),
  exposed as :func:`parplan.cost.contention.exposed_s` says. Only paired passes overlap: on the
  first pipeline rank the warm-up forwards and the cool-down backwards run alone (one of each
  without a pipeline; ``2 (pp - 1) + (vpp - 1) pp + 1`` model chunks of the ``m vpp`` under the
  interleaved schedule: Megatron-Core's ``get_pp_rank_microbatches``, plus the one more warm-up chunk the
  merged schedule runs), their all-to-alls exposed whole. (That chunk's activations in flight are not
  added to the memory.)
* Model states per device: the dense parameters by the dense divisors, the routed experts by the
  expert axis's (``parplan.layouts.strategies.expert``).
* The note that says which load imbalance the expert GEMMs were timed with.
"""
from __future__ import annotations

import numpy as np

from ..cost import moe as moe_mod
from ..cost.contention import exposed_s, slowdown
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


def paired_share(layout, micro_batches):
    """Share of the first pipeline rank's passes that run beside another micro-batch's (module docstring)."""
    pp, vpp = np.asarray(layout.pp), np.asarray(layout.vpp)
    alone = np.where(pp > 1, 2 * (pp - 1) + (vpp - 1) * pp + 1, 1)  # the merged schedule warms up one more
    return np.clip(1.0 - alone / (np.asarray(micro_batches) * vpp), 0.0, 1.0)


def micro_batch_exposed(costs, axis: str, window_s, paired, hw=None, mix=None):
    """Seconds per layer and micro-batch of ``axis``'s all-to-alls overlapped with another micro-batch that
    stay on the critical path: those of paired passes beyond (or slowing) the other's compute ``window_s``,
    those of unpaired passes whole. ``mix``: the window's op-class seconds, for the slowdown."""
    mine = [c for c in costs if c.collective.axis == axis and c.collective.hidden_by == "micro_batch"]
    link = link_sum(costs, lambda c: c.axis == axis and c.hidden_by == "micro_batch")
    if not mine:
        return np.float64(0.0)
    slow = np.float64(0.0)
    if hw is not None and mix is not None:
        up, net = slowdown(hw, "scale_up", mix), slowdown(hw, "network", mix)
        slow = sum(np.where(c.spans_nodes, net, up) * c.time_s * np.asarray(c.collective.count, float)
                   for c in mine) / np.where(link > 0, link, 1.0)
    return paired * exposed_s(link, window_s, 0.0, slow) + (1.0 - paired) * link


def micro_batch_share(costs, cost, exposed_per_layer):
    """The exposed seconds per step of one such all-to-all: its share of its axis's exposure."""
    link = link_sum(costs, lambda c: c.axis == cost.collective.axis and c.hidden_by == "micro_batch")
    return cost.link_s * exposed_per_layer / np.where(link > 0, link, 1.0)


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
