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
        cp_local = place(cp, ctx.stride("cp"), cluster).local
        dp_local = place(dp, ctx.stride("dp"), cluster).local
        local = np.where(cp_local < cp, cp_local, cp_local * dp_local)
        domain = cluster.fast_domain if cluster.hardware.torus is not None else cluster.devices_per_node
        stride = np.maximum(1, domain // np.maximum(local, 1))
        shard = size if lay.shard_group is None else np.asarray(lay.shard_group) * cp
        return size, stride, shard

    def collectives(self, ctx: Context):
        lay = ctx.layout
        size, stride, shard = self._group(ctx)
        zero = np.asarray(lay.zero)
        params = ctx.stage_params / np.asarray(lay.tp)
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
            Collective("dp_grad_allreduce", "all_reduce", "dp", size, stride, grads, np.where(z0, 1, 0),
                       "step", "backward", reduce[0]),
            Collective("zero_grad_reduce_scatter", "reduce_scatter", "dp", shard, stride, grads,
                       np.where(z1, 1, 0), "step", "backward", reduce[1]),
            # ZeRO-2 keeps only its gradient shard, so it reduce-scatters after every micro-batch; under
            # torch.distributed.pipelining the sync waits for the last backward (one per step, unsharded meanwhile).
            Collective("zero2_grad_reduce_scatter", "reduce_scatter", "dp", shard, stride, grads,
                       np.where(z2 & every2, 1, 0), "microbatch", "backward", reduce[2]),
            Collective("zero2_grad_reduce_scatter_step", "reduce_scatter", "dp", shard, stride, grads,
                       np.where(z2 & ~every2, 1, 0), "step", "backward", reduce[2]),
            Collective("zero_param_allgather", "all_gather", "dp", shard, stride, params * ctx.bpe,
                       np.where(z1 | z2, 1, 0), "step", "forward", fwd),
            Collective("fsdp_allgather_fwd", "all_gather", "dp", shard, stride, weights / gathers,
                       np.where(z3, gathers, 0), "microbatch", "forward", "forward"),
            Collective("fsdp_allgather_bwd", "all_gather", "dp", shard, stride, weights / gathers,
                       np.where(z3, gathers, 0), "microbatch", "backward", bwd_gather),
            Collective("fsdp_grad_reduce_scatter", "reduce_scatter", "dp", shard, stride, grads / reduces,
                       np.where(z3 & every3, reduces, 0), "microbatch", "backward", reduce[3]),
            Collective("fsdp_grad_reduce_scatter_step", "reduce_scatter", "dp", shard, stride, grads,
                       np.where(z3 & ~every3, 1, 0), "step", "backward", reduce[3]),
            Collective("hsdp_replica_allreduce", "all_reduce", "dp", np.maximum(replicas, 1), stride * shard,
                       grads / shard, np.where((zero > 0) & (replicas > 1), 1, 0), "step", "backward", reduce[1]),
        ]

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
        # ZeRO-3 holds one layer gathered while the next is prefetched.
        lay = ctx.layout
        return {"gathered_weights": np.where(np.asarray(lay.zero) == 3,
                                             2 * ctx.layer_params / np.asarray(lay.tp) * ctx.weight_bytes, 0.0)}
