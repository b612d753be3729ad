"""Data parallelism with ZeRO stages 0-3 (= FSDP NO_SHARD / optimizer / SHARD_GRAD_OP / FULL_SHARD) and HSDP.

Rajbhandari et al. 2019 (ZeRO, arXiv 1910.02054): stage 0 all-reduces gradients
once per step; stages 1 and 2 reduce-scatter them and all-gather the updated
16-bit weights (the same bytes as an all-reduce); stage 3 also all-gathers the
weights before each forward and backward and reduce-scatters the gradients, per
micro-batch. HSDP shards within groups of ``shard_group`` ranks and all-reduces
the shards across groups. Context-parallel ranks hold the same weights, so
gradients are reduced over dp x cp (as Megatron-LM does).

Overlap and timing come from the run's framework (``frameworks/*.yaml``): gradient
reduction under the backward pass or after it, the next weight gather under the forward
(FSDP prefetch, Megatron --overlap-grad-reduce / --overlap-param-gather), ZeRO-3 buckets,
the backward prefetch order, and whether ZeRO-3 reduces every micro-batch; the estimator
hides each overlapped collective up to the compute available.
"""
from __future__ import annotations

import numpy as np

from ...cost.collectives import place
from ...specs.framework_loader import load_framework
from .base import Collective, Context, Strategy


def _software(ctx: Context):
    """The data-parallel behaviour of the run's framework (Megatron-Core's when none is given)."""
    if ctx.software is not None:
        return ctx.software.framework.data_parallel
    return load_framework("megatron-core").data_parallel


def _reduce_every(ctx: Context):
    """Per candidate: whether ZeRO-2/3 reduce-scatter every micro-batch's gradients (else once per step, the
    stage's unsharded gradients held until then): the framework's data-parallel rule, or its rule under a
    pipeline. Without a pipeline ZeRO-2 always keeps only its shard, so it reduces every micro-batch."""
    pp = np.asarray(ctx.layout.pp)
    piped = ctx.software.framework.pipeline.reduce_every_microbatch if ctx.software is not None else True
    zero3 = np.where(pp == 1, _software(ctx).reduce_every_microbatch, piped)
    return np.where(pp == 1, True, piped), zero3


class DataParallel(Strategy):
    axis = "dp"
    finish_order = 0  # the gradient sync is the first thing a step does after its last backward

    def _group(self, ctx: Context):
        """Size, placement stride and ZeRO shard size of the dp x cp gradient group.

        cp and dp need not be neighbours in the mesh order: the group's members per node are
        those of its cp part times those of its dp part (none of the dp part when the cp part
        already spans nodes), expressed as the stride that places that many in a node.
        """
        lay, cluster = ctx.layout, ctx.cluster
        cp, dp = np.asarray(lay.cp), np.asarray(lay.dp)
        size = dp * cp
        shard = size if lay.shard_group is None else np.asarray(lay.shard_group) * cp
        if cluster.is_torus:  # ranks counted from cp's (parplan.layouts.torus_map): exact where cp and dp are neighbours
            return size, np.where(cp > 1, ctx.stride("cp"), ctx.stride("dp")), shard
        cp_local = place(cp, ctx.stride("cp"), cluster).local
        dp_local = place(dp, ctx.stride("dp"), cluster).local
        local = np.where(cp_local < cp, cp_local, cp_local * dp_local)
        domain = cluster.fast_domain if cluster.hardware.torus is not None else cluster.scale_up_domain
        stride = np.maximum(1, domain // np.maximum(local, 1))
        return size, stride, shard

    def collectives(self, ctx: Context):
        size, stride, shard = self._group(ctx)
        # The stage's parameters as this device holds them; an MoE model's experts are reduced over their
        # own group by the expert axis (parplan.layouts.strategies.expert).
        params = (ctx.stage_params - ctx.expert_params) / np.asarray(ctx.layout.tp)
        return zero_collectives(ctx, params, size, stride, shard)

    def state_divisors(self, ctx: Context):
        _, _, shard = self._group(ctx)
        zero = np.asarray(ctx.layout.zero)
        # A ZeRO-2/3 that reduces once per step (under pipelining, deferred gradient sync) holds the
        # stage's unsharded gradients until then.
        every2, every3 = _reduce_every(ctx)
        one = np.asarray(ctx.micro_batches) == 1
        sharded_grads = ((zero == 2) & (every2 | one)) | ((zero == 3) & (every3 | one))
        return {
            "optimizer": np.where(zero >= 1, shard, 1),
            "gradients": np.where(sharded_grads, shard, 1),
            "weights": np.where(zero >= 3, shard, 1),
        }

    def memory_bytes(self, ctx: Context):
        """ZeRO-3 holds one layer gathered while the next is prefetched (FSDP's units), or, where the
        framework caps what stays resident (DeepSpeed's stage3_max_live_parameters), that many
        parameters, but never less than the largest single weight it must gather whole."""
        lay = ctx.layout
        tp = np.asarray(lay.tp, float)
        live = 2 * ctx.layer_params / tp
        cap = _software(ctx).max_live_params
        if cap is not None:
            largest = max(ctx.model.hidden * ctx.model.ffn_hidden * (2 if ctx.model.activation == "swiglu" else 1),
                          ctx.model.hidden * (ctx.model.heads + 2 * ctx.model.kv_heads) * ctx.model.head_dim) / tp
            live = np.minimum(live, np.maximum(cap, largest))
        return {"gathered_weights": np.where(np.asarray(lay.zero) == 3, live * ctx.weight_bytes, 0.0)}


def zero_collectives(ctx: Context, params, size, stride, shard, axis: str = "dp", prefix: str = ""):
    """The gradient reduction and ZeRO weight gathers of ``params`` parameters per device over a group of
    ``size`` ranks ``stride`` apart, sharded ``shard`` ways (the stage's dense parameters over dp x cp; an
    MoE model's experts over their expert-data-parallel group, named with ``prefix``)."""
    lay = ctx.layout
    zero = np.asarray(lay.zero)
    # Gradients travel in the precision they are accumulated in (fp32 main gradients in
    # Megatron's bf16 path, FSDP's fp32 reduce dtype); weights as ZeRO-3 gathers them.
    grads = params * ctx.grad_bytes
    weights = params * ctx.weight_bytes
    dp = _software(ctx)
    reduce = {z: "backward" if dp.grad_reduce[z] == "overlapped" else "none" for z in range(4)}
    fwd = "forward" if dp.overlap_param_gather else "none"
    # FSDP's BACKWARD_POST issues the next layer's gather after this layer's gradients: the
    # backward then waits for every gather (PyTorch FSDP docs, BackwardPrefetch).
    bwd_gather = "backward" if dp.backward_prefetch == "before" else "none"
    # ZeRO-3 reduce-scatters every micro-batch (DeepSpeed, FSDP) or once per step (under
    # torch.distributed.pipelining, which defers the gradient sync to the last backward).
    every2, every3 = _reduce_every(ctx)
    replicas = size // shard
    z0, z1, z2, z3 = (zero == 0), (zero == 1), (zero == 2), (zero == 3)
    # ZeRO-3 gathers and reduces layer by layer (FSDP wraps each layer), or in a framework's
    # fixed buckets (DeepSpeed: stage3_prefetch_bucket_size, reduce_bucket_size); each call pays
    # the ring's latency, which grows with the group.
    layers = np.maximum(ctx.stage_layers, 1)

    def calls(bucket):
        return layers if bucket is None else np.maximum(layers, np.ceil(params / bucket))
    gathers, reduces = calls(dp.gather_bucket_params), calls(dp.reduce_bucket_params)
    return [
        Collective(f"{prefix}dp_grad_allreduce", "all_reduce", axis, size, stride, grads, np.where(z0, 1, 0),
                   "step", "backward", reduce[0]),
        Collective(f"{prefix}zero_grad_reduce_scatter", "reduce_scatter", axis, shard, stride, grads,
                   np.where(z1, 1, 0), "step", "backward", reduce[1]),
        # ZeRO-2 keeps only its gradient shard, so it reduce-scatters after every micro-batch; under
        # torch.distributed.pipelining the sync waits for the last backward (one per step, unsharded meanwhile).
        Collective(f"{prefix}zero2_grad_reduce_scatter", "reduce_scatter", axis, shard, stride, grads,
                   np.where(z2 & every2, 1, 0), "microbatch", "backward", reduce[2]),
        Collective(f"{prefix}zero2_grad_reduce_scatter_step", "reduce_scatter", axis, shard, stride, grads,
                   np.where(z2 & ~every2, 1, 0), "step", "backward", reduce[2]),
        Collective(f"{prefix}zero_param_allgather", "all_gather", axis, shard, stride, params * ctx.weight_bytes,
                   np.where(z1 | z2, 1, 0), "step", "forward", fwd),
        Collective(f"{prefix}fsdp_allgather_fwd", "all_gather", axis, shard, stride, weights / gathers,
                   np.where(z3, gathers, 0), "microbatch", "forward", "forward"),
        Collective(f"{prefix}fsdp_allgather_bwd", "all_gather", axis, shard, stride, weights / gathers,
                   np.where(z3, gathers, 0), "microbatch", "backward", bwd_gather),
        Collective(f"{prefix}fsdp_grad_reduce_scatter", "reduce_scatter", axis, shard, stride, grads / reduces,
                   np.where(z3 & every3, reduces, 0), "microbatch", "backward", reduce[3]),
        Collective(f"{prefix}fsdp_grad_reduce_scatter_step", "reduce_scatter", axis, shard, stride, grads,
                   np.where(z3 & ~every3, 1, 0), "step", "backward", reduce[3]),
        Collective(f"{prefix}hsdp_replica_allreduce", "all_reduce", axis, np.maximum(replicas, 1), stride * shard,
                   grads / shard, np.where((zero > 0) & (replicas > 1), 1, 0), "step", "backward", reduce[1]),
    ]
