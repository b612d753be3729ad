"""Step time, throughput, utilization and memory of one layout (or many, as arrays).

The composition (per device, busiest pipeline stage):

* per micro-batch: forward + backward (+ recompute) compute of the stage's layers,
  the exposed tensor/context-parallel collectives, and the pipeline sends;
* the pipeline: ``m`` micro-batches through the slowest stage plus a bubble of
  ``(p-1)/v`` average micro-batch times (Narayanan et al. 2021, Sec. 2.2);
* data parallel: gradient reduction (and ZeRO weight gathers) beyond what the
  overlapped compute hides; then the optimizer step (memory-bound).

Model FLOPs (for MFU) count the matmuls of forward and backward with full (not
causal-halved) attention, as Korthikanti et al. 2022 (Appendix) and PaLM
(Chowdhery et al. 2022, App. B) do; hardware FLOPs (HFU, Narayanan et al. 2021
eq. 3) add the recomputed forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..cost import ops as ops_mod
from ..cost.flops import model_flops_per_step, recompute_flops_per_step
from ..cost.kernels import op_times
from ..cost.collectives import collective_time_s, place
from ..specs.hardware import BYTES_PER_ELEMENT, Cluster
from ..layouts.layout import Layout, check_layout
from ..cost.memory import (ADAM_STATE_BYTES_PER_PARAM, DEFAULT_HEADROOM, inflight_microbatches,
    layer_activation_bytes, optimizer_step_bytes, recompute_code)
from ..specs.model import ModelSpec, vocab_shard, with_seq_len
from ..cost.roofline import ALIGNED_BYTES, alignment_bytes, arithmetic_intensity, memory_time_s, misalignment_fraction
from ..layouts.strategies import Collective, Context, strategies_for
from ..layouts.strategies.pipeline import bubble_fraction

BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm", "cp_comm", "pp_comm", "bubble", "dp_comm", "optimizer")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CollectiveCost:
    """A collective with its time: per call, per step on link, and exposed on the critical path."""

    collective: Collective
    time_s: Any          # one call
    calls_per_step: Any
    link_s: Any          # total time on the link per step
    exposed_s: Any       # part not hidden by compute
    spans_nodes: Any = False  # runs over the network (else over the scale-up link)
    hide_window_s: Any = 0.0  # compute per step it may hide under (0: critical path)


@dataclass(frozen=True)
class Estimate:
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    step_time_s: Any
    tokens_per_s: Any
    model_flops_per_step: Any
    hardware_flops_per_step: Any
    mfu: Any
    hfu: Any
    tflops_per_device: Any
    memory_bytes: dict
    fits: Any
    breakdown_s: dict
    layer_forward_s: Any
    layer_backward_s: Any
    ops: list = field(default_factory=list)
    op_times: list = field(default_factory=list)
    collectives: list = field(default_factory=list)
    headroom: float = DEFAULT_HEADROOM


# --------------------------------------------------------------------------- the model


def _stage_layers(model: ModelSpec, pp):
    """Layers on the busiest stage (uneven splits give some stages one more)."""
    return np.ceil(model.layers / np.asarray(pp, float))


def estimate(model: ModelSpec, cluster: Cluster, layout: Layout, *, headroom: float = DEFAULT_HEADROOM,
             check: bool = True, dropout: bool | None = None) -> Estimate:
    """Predict one training step of ``model`` on ``cluster`` under ``layout``.

    With ``check=False`` the layout's fields may be numpy arrays of candidates (the
    search); every result field is then an array.
    """
    if check:
        layout = check_layout(layout, model, cluster)
    seq = layout.seq_len or model.seq_len
    model = with_seq_len(model, int(seq)) if np.ndim(seq) == 0 else model
    hw, dtype = cluster.hardware, layout.dtype
    bpe = BYTES_PER_ELEMENT[dtype]
    use_dropout = model_has_dropout(model) if dropout is None else dropout
    rc = recompute_code(layout.recompute)

    # ---- per-device shapes: each axis shrinks what it shards
    strategies = strategies_for(layout)
    fields = dict(batch=np.asarray(layout.micro_batch), seq=np.asarray(seq, float),
                  seq_kv=np.asarray(seq, float), hidden=model.hidden, heads=model.heads,
                  kv_heads=model.kv_heads, head_dim=model.head_dim, ffn=model.ffn_hidden,
                  vocab=vocab_shard(model.vocab, 1), norm_shard=1, hidden_shard=1, causal=True)
    for s in strategies:
        fields = s.local_dims(fields, model, layout)
    dims = ops_mod.LocalDims(**fields)

    # ---- compute per layer, per micro-batch
    lops = ops_mod.layer_ops(model, dims, dtype, layout.flash_attention, use_dropout, layout.fused_kernels)
    times = [op_times(hw, o, dtype) for o in lops]
    layer_fwd = sum((t[0] for t in times), np.float64(0.0))
    layer_bwd = sum((t[1] for t in times), np.float64(0.0))
    attn_fwd = sum((t[0] for o, t in zip(lops, times) if o.attention_core), np.float64(0.0))
    attn_bwd = sum((t[1] for o, t in zip(lops, times) if o.attention_core), np.float64(0.0))
    layer_rec = np.where(rc == 2, layer_fwd, np.where(rc == 1, attn_fwd, 0.0))
    emb_ops, head_ops = ops_mod.embedding_ops(model, dims, dtype), ops_mod.head_ops(model, dims, dtype)
    emb_t = [op_times(hw, o, dtype) for o in emb_ops]
    head_t = [op_times(hw, o, dtype) for o in head_ops]
    emb_f, emb_b = sum(t[0] for t in emb_t), sum(t[1] for t in emb_t)
    head_f, head_b = sum(t[0] for t in head_t), sum(t[1] for t in head_t)

    # ---- stages
    pp, vpp = np.asarray(layout.pp), np.asarray(layout.vpp)
    m = np.asarray(layout.global_batch) // (np.asarray(layout.micro_batch) * np.asarray(layout.dp))
    m = np.maximum(m, 1)
    stage_layers = _stage_layers(model, pp)
    layer_p = model.layer_params()
    first_params = stage_layers * layer_p + model.embedding_params()
    last_params = stage_layers * layer_p + model.output_params() + \
        np.where(pp > 1, model.vocab * model.hidden if model.tied_embeddings else 0, model.embedding_params())
    last_params = np.where(pp > 1, last_params, first_params + model.output_params())
    stage_params = np.maximum(first_params, last_params)

    ctx = Context(model=model, cluster=cluster, layout=layout, dims=dims, bpe=bpe, seq=seq,
                  stage_layers=stage_layers, micro_batches=m, layer_params=layer_p,
                  stage_params=stage_params, recompute=rc)

    # ---- collectives: time per call, calls per step, exposure
    costs: list[CollectiveCost] = []
    for s in strategies:
        for c in s.collectives(ctx):
            where = place(c.group, c.stride, cluster)
            t = collective_time_s(c.op, c.size_bytes, where, cluster)
            per_step = np.asarray(c.count, float) * {"layer": stage_layers * m, "microbatch": m, "step": 1.0}[c.per]
            costs.append(CollectiveCost(c, t, per_step, t * per_step, None, where.spans_nodes))

    def link_sum(pred):
        return sum((c.time_s * np.asarray(c.collective.count, float) for c in costs if pred(c.collective)),
                   np.float64(0.0))

    # Per layer per micro-batch: critical TP/CP collectives; CP ring hidden behind attention.
    tp_layer = link_sum(lambda c: c.axis == "tp" and c.per == "layer")
    tp_mb = link_sum(lambda c: c.axis == "tp" and c.per == "microbatch")
    cp_crit = link_sum(lambda c: c.axis == "cp" and c.per == "layer" and c.hidden_by == "none")
    ring_f = link_sum(lambda c: c.axis == "cp" and c.hidden_by == "attention" and c.phase != "backward")
    ring_b = link_sum(lambda c: c.axis == "cp" and c.hidden_by == "attention" and c.phase == "backward")
    ring_exposed = np.maximum(0, ring_f - attn_fwd * np.where(rc == 2, 2, 1)) + np.maximum(0, ring_b - attn_bwd)
    cp_layer = cp_crit + ring_exposed
    p2p = link_sum(lambda c: c.axis == "pp" and c.per == "microbatch")

    # ---- one micro-batch on a stage
    compute_mb = stage_layers * (layer_fwd + layer_bwd)
    compute_first = compute_mb + emb_f + emb_b
    compute_last = compute_mb + head_f + head_b
    single = pp == 1
    compute_busiest = np.where(single, compute_mb + emb_f + emb_b + head_f + head_b,
                               np.maximum(compute_first, compute_last))
    recompute_mb = stage_layers * layer_rec
    comm_mb = stage_layers * (tp_layer + cp_layer) + tp_mb / np.where(single, 1, 2) + p2p
    t_mb_max = compute_busiest + recompute_mb + comm_mb
    t_mb_avg = np.where(single, t_mb_max,
                        (compute_mb * model.layers / (stage_layers * pp)) + (emb_f + emb_b + head_f + head_b) / pp
                        + recompute_mb + comm_mb)
    pipeline_s = m * t_mb_max + bubble_fraction(pp, vpp, m) * m * t_mb_avg

    # ---- data parallel: hide what the compute can
    fwd_window_mb = stage_layers * layer_fwd
    bwd_window_mb = stage_layers * (layer_bwd + layer_rec)
    dp_exposed = np.float64(0.0)
    dp_costs = []
    for idx, c in enumerate(costs):
        col = c.collective
        if col.axis != "dp" or not np.any(c.calls_per_step):
            continue
        # Candidates (array entries) that make no such call get no window and no floor from it.
        active = np.asarray(c.calls_per_step) > 0
        if col.per == "microbatch":  # ZeRO-3: per micro-batch, behind that micro-batch's compute
            window = fwd_window_mb if col.hidden_by == "forward" else bwd_window_mb
            # The first layer's gather cannot be prefetched: one layer's share of the calls.
            first_layer = c.time_s * np.asarray(col.count, float) / np.maximum(stage_layers, 1)
            dp_costs.append((idx, col.hidden_by, c.link_s, np.where(active, window * m, 0.0),
                             np.where(active, first_layer * m, 0.0)))
        else:
            window = {"backward": bwd_window_mb, "forward": fwd_window_mb}.get(col.hidden_by, 0.0)
            dp_costs.append((idx, col.hidden_by, c.link_s, np.where(active, window, 0.0), 0.0))
    # Link sharing: while DP traffic hides under a pass, the other axes' collectives of that pass
    # that use the same link class (network or scale-up) take their share of it first.
    def busy_per_mb(phases, on_network):
        total = np.float64(0.0)
        for c in costs:
            col = c.collective
            if col.axis == "dp" or col.phase not in phases or col.per == "step":
                continue
            same = np.where(c.spans_nodes, 1.0, 0.0) if on_network else np.where(c.spans_nodes, 0.0, 1.0)
            per_mb = np.asarray(col.count, float) * (stage_layers if col.per == "layer" else 1.0)
            total = total + same * c.time_s * per_mb
        return total

    for phase in ("forward", "backward", "none"):
        group = [x for x in dp_costs if x[1] == phase]
        if not group:
            continue
        if phase != "none":
            passes = ("forward",) if phase == "forward" else ("backward", "recompute")
            window_mb = np.maximum(fwd_window_mb if phase == "forward" else bwd_window_mb, 1e-12)
            busy_net, busy_local = busy_per_mb(passes, True), busy_per_mb(passes, False)
            shared = []
            for i, ph, own, w, f in group:  # each collective against the link class it runs on
                busy = np.where(costs[i].spans_nodes, busy_net, busy_local)
                shared.append((i, ph, own / (1.0 - np.clip(busy / window_mb, 0.0, 0.9)), w, f))
            group = shared
        link = sum(x[2] for x in group)
        window = np.max(np.broadcast_arrays(*[x[3] for x in group]), axis=0) if phase != "none" else 0.0
        floor = sum(x[4] for x in group)
        exposed = np.maximum(link - window, floor) if phase != "none" else link
        dp_exposed = dp_exposed + exposed
        for idx, _, own, *_ in group:
            share = np.where(link > 0, own / np.where(link > 0, link, 1), 0)
            costs[idx] = replace(costs[idx], exposed_s=exposed * share, hide_window_s=window, link_s=own)
    step_extra = link_sum(lambda c: c.axis == "pp" and c.per == "step")

    # ---- optimizer
    divisors = {"weights": 1, "gradients": 1, "optimizer": 1}
    for s in strategies:
        for k, v in s.state_divisors(ctx).items():
            divisors[k] = divisors[k] * v
    grad_bytes = 4 if layout.grad_accum_fp32 else bpe
    opt_params = stage_params / divisors["optimizer"]
    optimizer_s = memory_time_s(hw, optimizer_step_bytes(opt_params, grad_bytes))

    step = pipeline_s + dp_exposed + step_extra + optimizer_s

    # ---- exposures for the remaining collectives (critical-path ones are fully exposed)
    for i, c in enumerate(costs):
        if c.exposed_s is None:
            col = c.collective
            exposed = c.link_s if col.hidden_by == "none" else np.zeros_like(c.link_s)
            if col.hidden_by == "attention":
                ring_link = (ring_f + ring_b) * stage_layers * m
                exposed = ring_exposed * stage_layers * m * c.link_s / np.where(ring_link > 0, ring_link, 1)
            costs[i] = replace(c, exposed_s=exposed)

    # ---- breakdown (sums to the step time)
    tp_total = m * (stage_layers * tp_layer + tp_mb / np.where(single, 1, 2))
    breakdown = {
        "compute": m * compute_busiest,
        "recompute": m * recompute_mb,
        "tp_comm": tp_total,
        "cp_comm": m * stage_layers * cp_layer,
        "pp_comm": m * p2p + step_extra,
        "bubble": bubble_fraction(pp, vpp, m) * m * t_mb_avg,
        "dp_comm": dp_exposed,
        "optimizer": optimizer_s,
    }

    # ---- memory
    act_layer = layer_activation_bytes(model, dims, dtype, layout.flash_attention, use_dropout, rc)
    inflight = inflight_microbatches(pp, vpp, m, layout.schedule)
    act_full_layer = layer_activation_bytes(model, dims, dtype, layout.flash_attention, use_dropout, "none")
    activations = stage_layers * act_layer * inflight + np.where(rc == 2, act_full_layer, 0.0)
    logits = dims.batch * dims.seq * dims.vocab * (bpe + 4)  # 16-bit logits and the fp32 loss softmax
    weights = stage_params * bpe / divisors["weights"]
    gradients = stage_params * grad_bytes / divisors["gradients"]
    optimizer_state = stage_params * ADAM_STATE_BYTES_PER_PARAM / divisors["optimizer"]
    gathered = np.where(np.asarray(layout.zero) == 3, 2 * layer_p / np.asarray(layout.tp) * bpe, 0.0)
    memory = {
        "weights": weights,
        "gradients": gradients,
        "optimizer": optimizer_state,
        "activations": activations,
        "logits": logits,
        "gathered_weights": gathered,
    }
    memory["total"] = sum(memory.values())
    fits = memory["total"] <= hw.hbm_bytes * (1.0 - headroom)

    # ---- throughput and utilization
    batch = np.asarray(layout.global_batch, float)
    tokens = batch * seq
    model_flops = model_flops_per_step(model, seq, batch, dtype)
    hw_flops = model_flops + recompute_flops_per_step(model, seq, batch, rc, dtype)
    peak_total = hw.peak(dtype) * cluster.devices
    return Estimate(
        model=model, cluster=cluster, layout=layout,
        step_time_s=step,
        tokens_per_s=tokens / step,
        model_flops_per_step=model_flops,
        hardware_flops_per_step=hw_flops,
        mfu=model_flops / (step * peak_total),
        hfu=hw_flops / (step * peak_total),
        tflops_per_device=model_flops / step / cluster.devices / 1e12,
        memory_bytes=memory,
        fits=fits,
        breakdown_s=breakdown,
        layer_forward_s=layer_fwd,
        layer_backward_s=layer_bwd,
        ops=lops,
        op_times=times,
        collectives=costs,
        headroom=headroom,
    )


def model_has_dropout(model: ModelSpec) -> bool:
    """GPT-style recipes (learned or ALiBi positions) train with dropout; Llama-style ones without."""
    return model.position in ("learned", "alibi")


def op_table(est: Estimate, hw=None) -> list[dict]:
    """Per-op rows for one layer: FLOPs, bytes, intensity, time and the bound."""
    hw = hw or est.cluster.hardware
    ridge = hw.peak(est.layout.dtype) / hw.hbm_bandwidth
    rows = []
    for op, (tf, tb) in zip(est.ops, est.op_times):
        intensity = arithmetic_intensity(op.fwd_flops, op.fwd_bytes)
        aligned = 1.0
        if op.kind in (ops_mod.MATMUL, ops_mod.BATCHED):
            aligned = float(misalignment_fraction(hw, op.gemm[1:3], est.layout.dtype))
        rows.append({
            "op": op.name, "kind": op.kind,
            "fwd_flops": float(op.fwd_flops), "bwd_flops": float(op.bwd_flops),
            "fwd_bytes": float(op.fwd_bytes), "bwd_bytes": float(op.bwd_bytes),
            "intensity_flops_per_byte": float(intensity),
            "bound": "compute" if float(intensity) >= ridge else "memory",
            "forward_s": float(tf), "backward_s": float(tb),
            "aligned_rate_fraction": aligned,  # < 1: GEMM rows not 16-byte multiples
            "misaligned_rows": [float(d) for d in (op.gemm[1:3] if aligned < 1.0 else ())
                                if alignment_bytes(d, BYTES_PER_ELEMENT[est.layout.dtype]) < ALIGNED_BYTES],
        })
    return rows
