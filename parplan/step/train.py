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

from ..cost import host as host_mod, mla as mla_mod, moe as moe_mod, ops as ops_mod
from ..cost.contention import class_seconds
from ..cost.flops import model_flops_per_step, recompute_flops_per_step
from ..cost.kernels import op_times
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.cluster import Cluster
from ..layouts.layout import Layout
from ..layouts.rules import check_layout
from ..layouts.torus_map import enumerate_maps
from ..layouts.split import with_ends
from ..cost.memory import DEFAULT_HEADROOM, layer_activation_bytes, recompute_code, recompute_share
from ..specs.framework import Software
from . import software as sw_mod
from ..specs.model import ModelSpec, vocab_shard, with_seq_len
from ..cost.roofline import memory_time_s
from ..layouts.strategies import Context, StageTimes, axis, axis_names, breakdown_labels, stages_of, strategies_for
from ..layouts.strategies.base import STAGES
from .comms import link_sum, price_collectives
from .overlap import attention_exposed, chunked_gemm_s, matmul_exposed, step_exposures
from . import moe_step as moe_overlap
from . import mtp as mtp_mod
from . import offload as offload_mod
from .peak_memory import freed_gradients_at_peak, gradient_note


# --------------------------------------------------------------------------- results

# The ops Megatron-Core's --recompute-modules layernorm moe_act runs again in the backward (an MoE layer's
# pre-MLP norm, its own TENorm, and the experts' activation; the other norms are fused into their linears).
NORM_ACT_OPS = ("post_attn_norm", "expert_activation")
# What mla-up-proj runs again: the latent attention's up projections and its rotary embedding.
MLA_UP_OPS = mla_mod.UP_PROJECTIONS + ("rope",)

@dataclass(frozen=True)
class Estimate:
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    step_time_s: Any
    tokens_per_s: Any
    model_flops_per_step: Any
    hardware_flops_per_step: Any
    mfu: Any               # model FLOPs with full attention (PaLM's convention) over peak
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
    mfu_causal: Any = None  # the same with the causal half of attention: the FLOPs the kernels execute
    software: Any = None    # the Software the step was predicted for
    notes: tuple = ()       # what the numbers assume that a reader should know (an MoE model's load imbalance)
    pipeline_ranks: dict = field(default_factory=dict)  # first/middle/last rank: {"layers", "memory_bytes"}
    host_memory_bytes: Any = 0.0  # offloaded activations in host memory, per device (--offload-layers)

    def columns(self) -> dict[str, Any]:
        """The estimate's numbers as flat columns: ``step_time_s``, ``tokens_per_s``, ``mfu``, ``hfu``,
        ``tflops_per_device``, ``memory_bytes`` (the total), ``host_memory_bytes``, ``fits`` and ``<breakdown key>_s``, the
        names of ``estimate --format json`` and of the search's rows (arrays for candidate arrays)."""
        out = {"step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu,
               "hfu": self.hfu, "tflops_per_device": self.tflops_per_device,
               "memory_bytes": self.memory_bytes["total"], "host_memory_bytes": self.host_memory_bytes, "fits": self.fits}
        out.update({f"{k}_s": v for k, v in self.breakdown_s.items()})
        return out


# --------------------------------------------------------------------------- the model
def estimate(model: ModelSpec, cluster: Cluster, layout: Layout, *, software: Software | None = None,
             headroom: float = DEFAULT_HEADROOM, check: bool = True, dropout: bool | None = None) -> Estimate:
    """Predict one training step of ``model`` on ``cluster`` under ``layout``, run by ``software``
    (a :class:`parplan.specs.framework.Software`; by default Megatron-Core on GPUs, JAX on TPUs).

    With ``check=False`` the layout's fields may be numpy arrays of candidates (the
    search); every result field is then an array.
    """
    sw = software or sw_mod.default_software(cluster, layout.dtype)
    fw = sw.framework
    if check:
        layout = check_layout(layout, model, cluster, sw)
        if cluster.is_torus and layout.torus_map is None:
            layout = fastest_torus_map(model, cluster, layout, sw, headroom, dropout)
    given_layout, layout = layout, with_ends(layout, model.layers, fw.pipeline.split)
    seq = layout.seq_len or model.seq_len
    model = with_seq_len(model, int(seq)) if np.ndim(seq) == 0 else model
    hw, dtype = cluster.hardware, layout.dtype
    act = sw_mod.activation_dtype(dtype)
    bpe = BYTES_PER_ELEMENT[act]
    use_dropout = model_has_dropout(model) if dropout is None else dropout
    rc = recompute_code(layout.recompute)
    env = sw_mod.kernel_env(sw)

    # ---- per-device shapes: each axis shrinks what it shards; the vocabulary padded as the framework pads it
    strategies = strategies_for(layout)
    stages = stages_of(strategies)
    fields = dict(batch=np.asarray(layout.micro_batch), seq=np.asarray(seq, float),
                  seq_kv=np.asarray(seq, float), hidden=model.hidden, heads=model.heads,
                  kv_heads=model.kv_heads, head_dim=model.head_dim, ffn=model.ffn_hidden,
                  vocab=vocab_shard(model.vocab, 1), norm_shard=1, hidden_shard=1, causal=model.causal)
    stage_layers = stages.stage_layers(model, layout)
    if model.is_moe:  # the busiest stage's share of MoE layers (parplan.cost.moe)
        fields["moe_share"] = model.busiest_layers(stage_layers, moe_only=True) / np.maximum(stage_layers, 1)
    for s in strategies:
        fields = s.local_dims(fields, model, layout)
    split = fields.get("vocab_split", 1)
    fields["vocab"] = np.ceil(fw.padded_vocab(model.vocab, split) / split)
    dims = ops_mod.LocalDims(**fields)
    m = np.asarray(layout.global_batch) // (np.asarray(layout.micro_batch) * np.asarray(layout.dp))
    m = np.maximum(m, 1)

    # ---- compute per layer, per micro-batch
    lops = sw_mod.layer_ops(model, dims, layout, sw, use_dropout, m, strategies)
    times = [op_times(hw, o, act, env=env) for o in lops]
    overhead = fw.host_overhead_per_layer_s   # calibrate's fitted per-layer extra, added to both directions
    # The GPU idles while the host reads an MoE layer's tokens per expert, once per forward.
    sync = fw.moe.sync_s * moe_mod.host_syncs(model, dims, fw.moe.expert_gemms) * fields["moe_share"] \
        if model.is_moe else 0.0
    # Kernels shorter than the host's launches leave the GPU waiting on the host (parplan.cost.host); the
    # measured host times include the read's wait, so a host-bound layer pays it once.
    issue_f, issue_b = host_mod.layer_host_s(model, dims, sw.host, fw.moe.expert_gemms, fields.get("moe_share", 0.0))
    gpu_fb = (sum((t[0] for t in times), np.float64(0.0)) + sync, sum((t[1] for t in times), np.float64(0.0)))
    layer_fwd, layer_bwd = np.maximum(gpu_fb[0], issue_f) + overhead, np.maximum(gpu_fb[1], issue_b) + overhead
    attn_fwd = sum((t[0] for o, t in zip(lops, times) if o.attention_core), np.float64(0.0))
    attn_bwd = sum((t[1] for o, t in zip(lops, times) if o.attention_core), np.float64(0.0))
    shared_fwd, shared_bwd = moe_overlap.shared_expert_times(lops, times)
    gemm_fwd = sum((t[0] for o, t in zip(lops, times) if o.kind == ops_mod.MATMUL), np.float64(0.0))
    gemm_bwd = sum((t[1] for o, t in zip(lops, times) if o.kind == ops_mod.MATMUL), np.float64(0.0))
    sac_fwd = sum((t[0] * o.sac for o, t in zip(lops, times) if o.name != "fsdp_copies"), np.float64(0.0))
    # norm-act recomputes an MoE layer's pre-MLP norm and the routed experts' activation (NORM_ACT_OPS).
    norm_act_fwd = sum((t[0] * (fields.get("moe_share", 1.0) if o.name == "post_attn_norm" else 1.0)
                        for o, t in zip(lops, times) if o.name in NORM_ACT_OPS), np.float64(0.0))
    mla_up_fwd = sum((t[0] for o, t in zip(lops, times) if o.name in MLA_UP_OPS), np.float64(0.0))
    # save-dots rebuilds everything but the weight matmuls: norms, activations, the attention core. Recomputing
    # a whole layer (full: all, or a block of each chunk; selective-layer) issues it again; a part, its kernels.
    rerun = recompute_share(rc, layout.recompute_layers, stage_layers / np.asarray(layout.vpp, float))
    layer_rec = np.select([(rc == 2) | (rc == 4), rc == 1, rc == 3, rc == 5, rc == 6, rc == 7],
                          [rerun * layer_fwd, attn_fwd, sac_fwd, norm_act_fwd, gpu_fb[0] + overhead - gemm_fwd,
                           mla_up_fwd], 0.0)
    # The weight-gradient GEMMs: half of each weighted GEMM's backward (dW = X^T dY beside dX = dY W^T).
    layer_wgrad = sum((t[1] / 2 for o, t in zip(lops, times) if o.kind == ops_mod.MATMUL), np.float64(0.0))
    emb_t = [op_times(hw, o, act, env=env) for o in ops_mod.embedding_ops(model, dims, act)]
    head_t = [op_times(hw, o, act, env=env) for o in sw_mod.head_ops(model, dims, layout, sw)]
    emb_f, emb_b = sum(t[0] for t in emb_t), sum(t[1] for t in emb_t)
    head_f, head_b = sum(t[0] for t in head_t), sum(t[1] for t in head_t)

    # ---- stages (an MoE model's busiest stage holds its most MoE layers, and their experts)
    stage_params = stages.stage_params(model, layout)
    expert_p = 0
    if model.is_moe:
        stage_params = stage_params + model.busiest_layers(stage_layers) - stage_layers * model.layer_params()
        expert_p = model.busiest_layers(stage_layers, moe_only=True) * model.expert_params()
    stage_params, expert_p = mtp_mod.with_stage_params(model, stages, layout, m, stage_params, expert_p)
    layer_p = model.layer_params()
    grad_bytes = sw_mod.grad_bytes(sw, dtype)
    fp8_share = sw_mod.fp8_linear_share(model, stage_layers, stage_params)  # of the weights: in FP8-able linears
    ctx = Context(model=model, cluster=cluster, layout=layout, dims=dims, bpe=bpe, seq=seq, stage_layers=stage_layers,
                  micro_batches=m, layer_params=layer_p, stage_params=stage_params, recompute=rc, software=sw,
                  grad_bytes=grad_bytes, expert_params=expert_p, recompute_share=rerun,
                  weight_bytes=sw_mod.weight_bytes(sw, dtype, fp8_share))
    # ---- collectives: time per call, calls per step
    costs = price_collectives(strategies, ctx)

    # ---- per micro-batch on each stage: each axis's critical collectives (the embedding's on the first
    # stage, the head's on the last), and what outlasts the attention it hides under
    axes = axis_names()
    layer_comm, mb_comm, attention, matmul, merged = {}, {}, {}, {}, {}
    mix_f, mix_b = class_seconds(lops, times, 0), class_seconds(lops, times, 1)
    mix_all = {c: mix_f[c] + mix_b[c] for c in mix_f}
    paired = moe_overlap.paired_share(layout, m)
    tp_overlap, chunked = sw.framework.parallelism.tp_overlap, chunked_gemm_s(lops, times)
    for a in axes:
        crit = link_sum(costs, lambda c: c.axis == a and c.per == "layer" and c.hidden_by == "none")
        attention[a] = attention_exposed(costs, a, attn_fwd, attn_bwd, rerun)
        matmul[a] = matmul_exposed(costs, a, gemm_fwd, gemm_bwd, rerun, layout.tp, hw, tp_overlap, chunked)
        merged[a] = moe_overlap.micro_batch_exposed(costs, a, layer_fwd + layer_bwd + layer_rec, paired, hw, mix_all)
        layer_comm[a] = crit + attention[a][0] + matmul[a][0] + merged[a] + \
            moe_overlap.exposed(costs, a, shared_fwd, shared_bwd)
        mb_comm[a] = {where: link_sum(costs, lambda c: c.axis == a and c.per == "microbatch"
                                      and c.hidden_by == "none" and c.stage == where) for where in STAGES}
    total = {where: sum((mb_comm[a][where] for a in axes), np.float64(0.0)) for where in STAGES}
    # ---- a layer's saved activations (what its backward reads), and their copies to the host (parplan.step.offload)
    fp8_inputs = sw.fp8_saves_inputs
    autocast = sw_mod.casts_weights(sw, layout.dtype) & (np.asarray(layout.zero) == 0)  # FSDP casts instead
    saved = dict(fp8_inputs=fp8_inputs, autocast=autocast, projections=fw.kernels.projections,
                 expert_fp8_inputs=fp8_inputs and fw.fp8.experts and fw.fp8.experts_save_fp8_inputs)
    act_layer = layer_activation_bytes(model, dims, act, sw.flash_attention, use_dropout, rc, sw.elementwise, **saved)
    act_full_layer = layer_activation_bytes(model, dims, act, sw.flash_attention, use_dropout, "none",
                                            sw.elementwise, **saved)
    act_kept = layer_activation_bytes(model, dims, act, sw.flash_attention, use_dropout, "full",
                                      sw.elementwise, **saved)

    def saved(share):  # a block recompute keeps its share of layers' inputs only, selective-layer half
        return np.where((rc == 2) | (rc == 4), share * act_kept + (1 - share) * act_full_layer, act_layer)
    off_share = offload_mod.offloaded_layers(sw.offload_layers, stage_layers) / np.maximum(stage_layers, 1)
    layer_off = off_share * offload_mod.exposed_s(offload_mod.copy_s(hw, saved(rerun)), layer_fwd,
                                                  layer_bwd + layer_rec) if sw.offload_layers else 0.0 * layer_fwd
    # Multi-token prediction runs beside the head, on its rank (parplan.step.mtp).
    mtp_t = [op_times(hw, o, act, env=env) for o in mtp_mod.block_ops(model, dims, layout, sw, use_dropout, m,
                                                                     strategies)]
    mtp_f, mtp_b = mtp_mod.micro_batch_s(model, mtp_t, layer_rec, sum(layer_comm.values(), np.float64(0.0)))
    pipeline_s, busy, schedule_s = stages.compose(model, layout, StageTimes(
        m, layer_fwd + layer_bwd, layer_wgrad, layer_rec, sum(layer_comm.values(), np.float64(0.0)) + layer_off,
        total["all"], total["first"], total["last"], emb_f, emb_b, head_f + mtp_f, head_b + mtp_b, layer_fwd))

    # ---- per step: what the compute does not hide of the overlapped collectives, and the
    # per-step critical ones, in the order the step issues them after its last backward
    # The op-class mix of each window sets how much the collectives beside it slow it.
    rec_share = layer_rec / np.where(layer_fwd > 0, layer_fwd, 1.0)
    mixes = {"forward": mix_f, "backward": {c: mix_b[c] + rec_share * mix_f[c] for c in mix_b}}
    step_comm = step_exposures(costs, stage_layers, m, stage_layers * layer_fwd,
                               stage_layers * (layer_bwd + layer_rec), hw=hw, mixes=mixes)
    step = pipeline_s
    for a in sorted(axes, key=lambda a: axis(a).finish_order):
        step = step + step_comm.get(a, 0.0)

    # ---- optimizer
    divisors = {"weights": 1, "gradients": 1, "optimizer": 1}
    for s in strategies:
        for k, v in s.state_divisors(ctx).items():
            divisors[k] = divisors.get(k, 1) * v
    local = moe_overlap.local_params(stage_params, expert_p, divisors) if model.is_moe else \
        {k: stage_params / divisors[k] for k in ("weights", "gradients", "optimizer")}
    opt_params = local["optimizer"]
    optimizer_s = memory_time_s(hw, sw_mod.optimizer_bytes(sw, opt_params, grad_bytes),
                                efficiency=hw.optimizer_efficiency)
    step = step + optimizer_s

    # ---- exposures of the per-layer and per-micro-batch collectives
    for i, c in enumerate(costs):
        if c.exposed_s is None:
            col = c.collective
            exposed = c.link_s if col.hidden_by == "none" else np.zeros_like(c.link_s)
            if col.hidden_by in ("attention", "matmul"):
                ring_exposed, ring_f, ring_b = (attention if col.hidden_by == "attention" else matmul)[col.axis]
                ring_link = (ring_f + ring_b) * stage_layers * m
                exposed = ring_exposed * stage_layers * m * c.link_s / np.where(ring_link > 0, ring_link, 1)
            elif col.hidden_by == "shared_experts":
                exposed = moe_overlap.exposed_share(costs, c, shared_fwd, shared_bwd)
            elif col.hidden_by == "micro_batch":
                exposed = moe_overlap.micro_batch_share(costs, c, merged[col.axis])
            costs[i] = replace(c, exposed_s=exposed)

    # ---- breakdown (sums to the step time)
    breakdown = {"compute": m * busy.compute_s, "recompute": m * busy.recompute_s}
    for a in axes:
        for key in axis(a).labels:
            if key == f"{a}_comm":
                ends = busy.first_share * mb_comm[a]["first"] + busy.last_share * mb_comm[a]["last"]
                breakdown[key] = m * (busy.layers * layer_comm[a] + mb_comm[a]["all"] + ends) + step_comm.get(a, 0.0)
            else:
                breakdown[key] = schedule_s.get(key, 0.0 * pipeline_s)
    breakdown["offload"], breakdown["optimizer"] = m * busy.layers * layer_off, optimizer_s

    # ---- memory: each kind of pipeline rank holds its own parameters and in-flight activations; the peak rank
    extras = {}
    for s in strategies_in_registry_order(strategies):
        extras.update(s.memory_bytes(ctx))

    def rank_memory(r):
        # Recomputing a whole layer (full; selective-layer's checkpointed blocks; save-dots' rebuilt tensors)
        # rebuilds one layer's activations; under a block, after the later layers freed theirs (no new peak).
        share = recompute_share(rc, layout.recompute_layers, r.layers / np.asarray(layout.vpp, float))
        rebuilt = (r.layers > 0) & (((rc == 2) & (share >= 1)) | (rc == 4) | (rc == 6))
        off = offload_mod.offloaded_layers(sw.offload_layers, r.layers)
        held = offload_mod.device_bytes(r.layers, off, saved(share), r.inflight) + np.where(rebuilt, act_full_layer, 0.0)
        host.append(offload_mod.host_bytes(off, saved(share), r.inflight))
        mtp_p, mtp_e = (np.where(r.head, x, 0.0) for x in mtp_mod.params(model, layout))  # on the head's rank
        if model.is_moe:  # the rank's most MoE layers, their experts divided over the expert axes
            params = r.params + model.busiest_layers(r.layers) - r.layers * model.layer_params() + mtp_p
            experts = model.busiest_layers(r.layers, moe_only=True) * model.expert_params() + mtp_e
            local = moe_overlap.local_params(params, experts, divisors)
            kept = params - experts + experts / divisors.get("expert_weights", 1)  # the weights the device holds
        else:
            local = {k: (r.params + mtp_p) / divisors[k] for k in ("weights", "gradients", "optimizer")}
            kept = r.params + mtp_p
        states = sw_mod.state_bytes_per_param(sw, dtype, sw_mod.fp8_linear_share(model, r.layers, kept))
        mem = {"weights": local["weights"] * states["weights"],
               "gradients": local["gradients"] * grad_bytes,
               "optimizer": local["optimizer"] * states["optimizer"],
               "activations": held,
               "logits": np.where(r.head, sw_mod.logits_bytes(dims, sw, dtype), 0.0)}
        mem.update({k: np.where(r.head, v, 0.0) for k, v in mtp_mod.memory_bytes(
            model, act_layer, sw_mod.logits_bytes(dims, sw, dtype)).items()})
        mem.update(sw_mod.extra_memory(model, dims, layout, sw, r.layers, kept))
        mem.update(extras)
        if fw.gradients == "freed":
            mem["gradients"] = freed_gradients_at_peak(mem, m, layout.pp)
        mem["total"] = sum(mem.values())
        return mem
    host = []  # what each rank's offloaded activations hold in host memory
    ranks = [rank_memory(r) for r in stages.memory_stages(model, layout, m)]
    host_peak = np.maximum.reduce(np.broadcast_arrays(*host))
    peak = np.argmax(np.stack(np.broadcast_arrays(*(r["total"] for r in ranks))), axis=0)
    memory = {k: np.choose(peak, np.broadcast_arrays(*(r[k] for r in ranks))) for k in ranks[0]}
    if np.ndim(peak) == 0:
        memory = {k: v[()] if isinstance(v, np.ndarray) else v for k, v in memory.items()}
    stage_memory = {name: {"layers": r.layers, "memory_bytes": mem["total"]}
                    for name, r, mem in zip(("first", "middle", "last"), stages.memory_stages(model, layout, m), ranks)}
    fits = (memory["total"] <= hw.hbm_bytes * (1.0 - headroom)) & \
        (host_peak <= (hw.host_memory_bytes if hw.host_memory_bytes is not None else np.inf))

    # ---- throughput and utilization
    batch = np.asarray(layout.global_batch, float)
    tokens = batch * seq
    model_flops = model_flops_per_step(model, seq, batch, act)
    hw_flops = model_flops + recompute_flops_per_step(model, seq, batch, rc, act, full_share=rerun)
    peak_total = hw.peak(dtype) * cluster.devices
    return Estimate(
        model=model, cluster=cluster, layout=given_layout,
        step_time_s=step,
        tokens_per_s=tokens / step,
        model_flops_per_step=model_flops,
        hardware_flops_per_step=hw_flops,
        mfu=model_flops / (step * peak_total),
        mfu_causal=model_flops_per_step(model, seq, batch, dtype, causal=model.causal) / (step * peak_total),
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
        software=sw,
        notes=tuple(moe_overlap.notes(model, dims)) + gradient_note(fw, m, layout, memory["gradients"])
        + mtp_mod.notes(model, mtp_f, mtp_b) + host_mod.notes(gpu_fb, (issue_f, issue_b)),
        pipeline_ranks=stage_memory,
        host_memory_bytes=host_peak[()] if np.ndim(host_peak) == 0 else host_peak,
    )


def fastest_torus_map(model: ModelSpec, cluster: Cluster, layout: Layout, software, headroom, dropout) -> Layout:
    """``layout`` on the TPU map (:mod:`parplan.layouts.torus_map`) with the shortest step, all maps
    estimated at once as candidate arrays; the first of equals (the innermost axis on the most bandwidth)."""
    maps = enumerate_maps(layout.sizes(), cluster)
    if len(maps) <= 1:
        return replace(layout, torus_map=maps[0] if maps else None)
    stacked = tuple((axis, tuple(np.array([dict(m)[axis][i] for m in maps]) for i in range(len(factors))))
                    for axis, factors in maps[0])
    est = estimate(model, cluster, replace(layout, torus_map=stacked), software=software, headroom=headroom,
                   check=False, dropout=dropout)
    return replace(layout, torus_map=maps[int(np.argmin(np.broadcast_to(est.step_time_s, len(maps))))])


def strategies_in_registry_order(strategies):
    rank = {a: i for i, a in enumerate(axis_names())}
    return sorted(strategies, key=lambda s: rank[s.axis])


def bottleneck(row) -> str:
    """The largest cost beyond compute, or compute itself, of a step breakdown given as ``<key>_s`` entries
    (a search row, or ``Estimate.columns()``); a cost names the step's bottleneck above 10% of it."""
    parts = {label: row[f"{key}_s"] for key, label in breakdown_labels().items()}
    parts["recompute"] = row["recompute_s"]
    name, value = max(parts.items(), key=lambda kv: kv[1])
    return name if value > 0.10 * row["step_time_s"] else "compute"


def model_has_dropout(model: ModelSpec) -> bool:
    """GPT-style recipes (learned or ALiBi positions) train with dropout; Llama-style ones without."""
    return model.position in ("learned", "alibi")

