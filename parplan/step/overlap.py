"""How much of each collective the compute hides: the exposure half of the step composition.

Collectives come tagged by their strategies (``hidden_by``):

* ``none``: on the critical path, all of it exposed;
* ``attention``: issued per layer beside the attention core of the same layer (ring
  attention's ``cp - 1`` sends), exposed where they outlast it;
* ``matmul``: issued per layer in steps under the linear GEMMs they feed or follow (a collective
  matmul: :func:`matmul_exposed`), exposed where they outlast all but one chunk of them, or where the
  exchange kernels slow the GEMMs;
* ``forward`` / ``backward``: issued beside the forward or backward pass of a micro-batch
  (gradient reduction under the backward, the next weights' gather under the forward:
  FSDP prefetch, Megatron ``--overlap-grad-reduce`` / ``--overlap-param-gather``). All of a
  pass's overlapped traffic hides under that pass's compute, but it shares its link class
  (network or scale-up; on a TPU torus, its torus axes or the DCN) with the critical collectives
  that pass issues on the same links,
  which take their share of it first; a collective issued per micro-batch cannot hide the
  first layer's share of its calls (the first gather has nothing to prefetch behind). While
  they run, the compute they hide under slows by the share of SMs their kernels hold
  (:mod:`parplan.cost.contention`), so even a hidden collective exposes part of its time.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..cost.contention import copy_exchange_slowdown, exposed_s, slowdown
from .comms import link_sum, shared_links

OVERLAPPED = ("forward", "backward")


def attention_exposed(costs, axis: str, attn_fwd, attn_bwd, rerun):
    """(exposed seconds per layer, forward link seconds, backward link seconds) of ``axis``'s
    collectives hidden under the attention core: forward and recompute under the forward kernels (``1 +
    rerun`` times over, ``rerun`` the share of layers recomputed whole), backward under the backward ones."""
    ring_f = link_sum(costs, lambda c: c.axis == axis and c.hidden_by == "attention" and c.phase != "backward")
    ring_b = link_sum(costs, lambda c: c.axis == axis and c.hidden_by == "attention" and c.phase == "backward")
    exposed = np.maximum(0, ring_f - attn_fwd * (1 + np.asarray(rerun, float))) + np.maximum(0, ring_b - attn_bwd)
    return exposed, ring_f, ring_b


# The dense linears a sequence-parallel collective matmul chunks (Megatron's column- and row-parallel layers):
# an all-gather feeds the column-parallel forwards and the row-parallel data gradients, a reduce-scatter
# follows the row-parallel forwards and the column-parallel data gradients.
COLUMN_PARALLEL = ("qkv_proj", "mlp_gate_up", "mlp_up", "qkv_mlp_proj")
ROW_PARALLEL = ("out_proj", "mlp_down")


def chunked_gemm_s(ops, times) -> dict:
    """{(collective, backward): (16-bit seconds, FP8 seconds)} per layer of the dense linears' GEMMs a
    collective matmul runs in chunks beside each collective: forward the GEMM itself, backward its data
    gradient (half its backward: dX = dY W^T beside dW = X^T dY)."""
    out = {}
    for key, names in ((("all_gather", False), COLUMN_PARALLEL), (("reduce_scatter", False), ROW_PARALLEL),
                       (("all_gather", True), ROW_PARALLEL), (("reduce_scatter", True), COLUMN_PARALLEL)):
        run = [(o.fp8, t[1] / 2 if key[1] else t[0]) for o, t in zip(ops, times) if o.name in names]
        out[key] = (sum((t for fp8, t in run if not fp8), np.float64(0.0)),
                    sum((t for fp8, t in run if fp8), np.float64(0.0)))
    return out


def ring_extra_s(hw, how, chunked, op: str, backward: bool):
    """Seconds per layer a ring exchange adds to the GEMMs it chunks beside ``op`` in one pass: their time
    times the profile's measured ``overlap.ring_exchange`` ratio less one, per GEMM dtype (0 where the
    framework runs ``op`` otherwise or the profile measured none)."""
    ring = hw.contention.ring_exchange if hw is not None and hw.contention is not None else None
    if ring is None or not chunked or op not in how.ring:
        return np.float64(0.0)
    bf16_s, fp8_s = chunked[(op, backward)]
    return (ring[op]["bf16"] - 1.0) * bf16_s + (ring[op]["fp8"] - 1.0) * fp8_s


def matmul_exposed(costs, axis: str, gemm_fwd, gemm_bwd, rerun, steps, hw, how, chunked=None):
    """(exposed seconds per layer, forward link seconds, backward link seconds) of ``axis``'s collective
    matmuls, run as ``how`` (a :class:`parplan.specs.tp_overlap.TpOverlap`) runs them: each all-gather or
    reduce-scatter runs as ``steps - 1`` exchanges beside ``steps`` chunks of the GEMM it feeds or follows,
    so one chunk in ``steps`` has nothing beside it and ``(steps - 1) / steps`` of the pass's GEMMs hide
    them; a forward collective's ``tail`` share (a pipelined reduce-scatter's last chunk) hides under
    nothing; while they run, the GEMMs slow by the SMs the exchange kernels hold (``sms`` per collective,
    :func:`parplan.cost.contention.slowdown`) or, for copy-engine transfers (0 SMs), by the HBM traffic
    they add where the profile measured it (:func:`parplan.cost.contention.copy_exchange_slowdown`; no
    shipped profile has, so those cost nothing yet). A collective the framework runs as a ring exchange
    (``how.ring``) lengthens the GEMMs it chunks (``chunked``, :func:`chunked_gemm_s`) by ``E``, the
    profile's measured ``ring_exchange`` ratio (:func:`ring_extra_s`): chunking, each chunk's wait for its
    copy, a reduce-scatter's sum of the received partials; a measured ring holds its copies' HBM traffic, so
    no copy slowdown is added to it. Not priced: an SM margin the GEMMs keep beyond the exchange. Forward
    and recompute under the forward GEMMs (``1 + rerun`` times over), backward under the backward ones;
    per pass, ``t`` chunks of GEMMs of ``W + E`` beside ``t - 1`` exchanges of ``L`` take
    ``max(W + E, (W + E) / t + L)``, and with the slowdowns composed as :mod:`parplan.cost.contention`
    composes them the pass exposes
    ``max(L - W (t - 1) / t + E_ag / t, F + E_ag + sum over the collectives of (L_c - F_c) s_c / (1 + s_c))
    + E_rs``, ``F`` the tails: an all-gather ring's cost spreads over its chunks (``E_ag``), a reduce-scatter
    ring's (``E_rs``, mostly the sum of the partials, which waits for the last exchange) comes after them.
    A parallel attention + MLP block chunks both GEMMs its one reduce-scatter follows, and latent
    attention's projections are not in the chunked sets. A group beyond the scale-up domain has no peer copies to run them (Transformer Engine's
    userbuffers and PyTorch's symmetric memory are NVLink-domain only): its collectives stay exposed."""
    share = np.where(np.asarray(steps) > 1, (np.asarray(steps, float) - 1) / np.maximum(steps, 1), 0.0)
    exposed, links = np.float64(0.0), []
    for backward, window in ((False, gemm_fwd * (1 + np.asarray(rerun, float))), (True, gemm_bwd)):
        link, floor, outside = np.float64(0.0), np.float64(0.0), np.float64(0.0)
        spread, after = np.float64(0.0), np.float64(0.0)  # ring costs over the chunks; a reduce-scatter's, after
        for op in ("all_gather", "reduce_scatter"):
            mine = [c for c in costs if c.collective.axis == axis and c.collective.hidden_by == "matmul"
                    and c.collective.op == op and (c.collective.phase == "backward") == backward]
            on_link = sum((c.time_s * np.asarray(c.collective.count, float) for c in mine), np.float64(0.0))
            spans = sum((c.time_s * np.asarray(c.collective.count, float) * np.asarray(c.spans_nodes, float)
                         for c in mine), np.float64(0.0))
            inside = on_link - spans
            passes = 1.0 if backward else 1 + np.asarray(rerun, float)
            extra = np.where(inside > 0, ring_extra_s(hw, how, chunked, op, backward) * passes, 0.0)
            # A measured ring already holds its copies' HBM traffic: no copy slowdown on top of it.
            ring = bool(np.any(extra > 0))
            s = slowdown(hw, "scale_up", {"gemm": 1.0}, sms=how.sms[op]) if how.sms[op] else \
                (0.0 if ring else copy_exchange_slowdown(hw))
            tail = 0.0 if backward else how.tail[op] * inside
            link, floor, outside = link + inside, floor + tail + (inside - tail) * s / (1 + s), outside + spans
            spread, after = (spread + extra, after) if op == "all_gather" else (spread, after + extra)
        exposed = exposed + np.maximum(link - window * share + spread * (1 - share), floor + spread) + after \
            + outside
        links.append(link + outside)
    return exposed, links[0], links[1]


def _busy_per_mb(costs, phases, target, stage_layers):
    """Critical link seconds per micro-batch in ``phases`` on the links ``target`` runs on."""
    total = np.float64(0.0)
    for c in costs:
        col = c.collective
        if col.hidden_by in OVERLAPPED or col.phase not in phases or col.per == "step":
            continue
        same = shared_links(c, target)
        per_mb = np.asarray(col.count, float) * (stage_layers if col.per == "layer" else 1.0)
        total = total + same * c.time_s * per_mb
    return total


def _spread(costs, group, exposed, window, out, phase_key, slowed=0.0):
    """Give each member of a hiding group its share of the group's exposed time (and of the part of it
    that is the compute's slowdown); add it per axis."""
    link = sum(x[1] for x in group)
    axes = {costs[i].collective.axis for i, *_ in group}
    for idx, own, *_ in group:
        share = np.where(link > 0, own / np.where(link > 0, link, 1), 0)
        costs[idx] = replace(costs[idx], exposed_s=exposed * share, hide_window_s=window, link_s=own,
                             slowdown_s=slowed * share)
    for a in axes:
        mine = exposed if len(axes) == 1 else sum(exposed * x[1] / np.where(link > 0, link, 1) for x in group
                                                   if costs[x[0]].collective.axis == a)
        out.setdefault(a, {})[phase_key] = mine


def step_exposures(costs: list, stage_layers, micro_batches, fwd_window_mb, bwd_window_mb, hw=None,
                   mixes=None) -> dict[str, Any]:
    """Exposed seconds per step of every axis's overlapped and per-step critical collectives.

    Fills ``exposed_s``, ``hide_window_s``, ``slowdown_s`` and the shared ``link_s`` of those entries of
    ``costs`` (a list of ``CollectiveCost``, replaced in place). ``mixes`` maps ``forward`` and
    ``backward`` to the op-class seconds of that window (:func:`parplan.cost.contention.class_seconds`),
    which set how much the hidden collectives slow it on ``hw``. Returns ``{axis: seconds}``.
    """
    m = micro_batches
    hiding = []
    for idx, c in enumerate(costs):
        col = c.collective
        if col.hidden_by not in OVERLAPPED or not np.any(c.calls_per_step):
            continue
        # Candidates (array entries) that make no such call get no window and no floor from it.
        active = np.asarray(c.calls_per_step) > 0
        window = fwd_window_mb if col.hidden_by == "forward" else bwd_window_mb
        if col.per == "microbatch":  # behind that micro-batch's compute
            # The first layer's share of the calls cannot be prefetched.
            first_layer = c.time_s * np.asarray(col.count, float) / np.maximum(stage_layers, 1)
            hiding.append((idx, col.hidden_by, c.link_s, np.where(active, window * m, 0.0),
                           np.where(active, first_layer * m, 0.0)))
        else:
            hiding.append((idx, col.hidden_by, c.link_s, np.where(active, window, 0.0), 0.0))
    parts: dict[str, dict] = {}
    for phase in OVERLAPPED:
        group = [x for x in hiding if x[1] == phase]
        if not group:
            continue
        passes = ("forward",) if phase == "forward" else ("backward", "recompute")
        window_mb = np.maximum(fwd_window_mb if phase == "forward" else bwd_window_mb, 1e-12)
        shared = []
        for i, _, own, w, f in group:  # each collective against the links it runs on
            busy = _busy_per_mb(costs, passes, costs[i], stage_layers)
            shared.append((i, own / (1.0 - np.clip(busy / window_mb, 0.0, 0.9)), w, f))
        link = sum(x[1] for x in shared)
        window = np.max(np.broadcast_arrays(*[x[2] for x in shared]), axis=0)
        floor = sum(x[3] for x in shared)
        slow = np.float64(0.0)
        if hw is not None and mixes is not None:  # link-weighted over the members' link classes
            up, net = slowdown(hw, "scale_up", mixes[phase]), slowdown(hw, "network", mixes[phase])
            slow = sum(x[1] * np.where(costs[x[0]].spans_nodes, net, up) for x in shared) / \
                np.where(link > 0, link, 1.0)
        exposed = exposed_s(link, window, floor, slow)
        _spread(costs, shared, exposed, window, parts, phase,
                exposed - np.maximum(np.maximum(link - window, 0.0), np.minimum(floor, link)))
    # Per-step collectives on the critical path (after the last backward), axis by axis.
    for a in dict.fromkeys(c.collective.axis for c in costs):
        group = [(i, c.link_s) for i, c in enumerate(costs) if c.collective.axis == a and c.collective.per == "step"
                 and c.collective.hidden_by == "none" and np.any(c.calls_per_step)]
        if group:
            _spread(costs, group, sum(x[1] for x in group), 0.0, parts, "none")
    out = {}
    for a, p in parts.items():
        total = np.float64(0.0)
        for phase in ("forward", "backward", "none"):
            if phase in p:
                total = total + p[phase]
        out[a] = total
    return out
