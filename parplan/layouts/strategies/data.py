"""Data parallelism with ZeRO stages 0-3 (= FSDP NO_SHARD / optimizer / SHARD_GRAD_OP / FULL_SHARD) and HSDP.

Rajbhandari et al. 2019 (ZeRO, arXiv 1910.02054): stage 0 all-reduces gradients
once per step; stages 1 and 2 reduce-scatter them and all-gather the updated
16-bit weights (the same bytes as an all-reduce); stage 3 also all-gathers the
weights before each forward and backward and reduce-scatters the gradients, per
micro-batch. HSDP shards within groups of ``shard_group`` ranks and all-reduces
the shards across groups. Context-parallel ranks hold the same weights, so
gradients are reduced over dp x cp (as Megatron-LM does).

Overlap: gradient reduction runs under the backward pass and the next weight
gather under the forward (FSDP prefetch, Megatron --overlap-grad-reduce /
--overlap-param-gather); the estimator hides each up to the compute available.
"""
from __future__ import annotations

import numpy as np

from ...cost.collectives import place
from .base import Collective, Context, Strategy


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
        # Megatron-LM's bf16 path and FSDP2's default reduce dtype).
        grads = params * (4 if lay.grad_accum_fp32 else ctx.bpe)
        weights = params * ctx.bpe
        bwd = np.where(np.asarray(lay.overlap_grad_reduce), "backward", "none").item() \
            if np.ndim(lay.overlap_grad_reduce) == 0 else "backward"
        fwd = np.where(np.asarray(lay.overlap_param_gather), "forward", "none").item() \
            if np.ndim(lay.overlap_param_gather) == 0 else "forward"
        replicas = size // shard
        z0, z1, z2, z3 = (zero == 0), (zero == 1), (zero == 2), (zero == 3)
        # ZeRO-3 gathers and reduces layer by layer (FSDP wraps each layer), or in a framework's
        # fixed buckets (DeepSpeed: stage3_prefetch_bucket_size, reduce_bucket_size); each call pays
        # the ring's latency, which grows with the group.
        layers = np.maximum(ctx.stage_layers, 1)

        def calls(bucket):
            return layers if bucket is None else np.maximum(layers, np.ceil(params / bucket))
        gathers, reduces = calls(lay.gather_bucket_params), calls(lay.reduce_bucket_params)
        return [
            Collective("dp_grad_allreduce", "all_reduce", "dp", size, stride, grads, np.where(z0, 1, 0),
                       "step", "backward", bwd),
            Collective("zero_grad_reduce_scatter", "reduce_scatter", "dp", shard, stride, grads,
                       np.where(z1, 1, 0), "step", "backward", bwd),
            # ZeRO-2 keeps only its gradient shard, so it reduce-scatters after every micro-batch.
            Collective("zero2_grad_reduce_scatter", "reduce_scatter", "dp", shard, stride, grads,
                       np.where(z2, 1, 0), "microbatch", "backward", "backward"),
            Collective("zero_param_allgather", "all_gather", "dp", shard, stride, weights,
                       np.where(z1 | z2, 1, 0), "step", "forward", fwd),
            Collective("fsdp_allgather_fwd", "all_gather", "dp", shard, stride, weights / gathers,
                       np.where(z3, gathers, 0), "microbatch", "forward", "forward"),
            Collective("fsdp_allgather_bwd", "all_gather", "dp", shard, stride, weights / gathers,
                       np.where(z3, gathers, 0), "microbatch", "backward", "backward"),
            Collective("fsdp_grad_reduce_scatter", "reduce_scatter", "dp", shard, stride, grads / reduces,
                       np.where(z3, reduces, 0), "microbatch", "backward", "backward"),
            Collective("hsdp_replica_allreduce", "all_reduce", "dp", np.maximum(replicas, 1), stride * shard,
                       grads / shard, np.where((zero > 0) & (replicas > 1), 1, 0), "step", "backward", bwd),
        ]

    def state_divisors(self, ctx: Context):
        _, _, shard = self._group(ctx)
        zero = np.asarray(ctx.layout.zero)
        return {
            "optimizer": np.where(zero >= 1, shard, 1),
            "gradients": np.where(zero >= 2, shard, 1),
            "weights": np.where(zero >= 3, shard, 1),
        }

    def memory_bytes(self, ctx: Context):
        # ZeRO-3 holds one layer gathered while the next is prefetched.
        lay = ctx.layout
        return {"gathered_weights": np.where(np.asarray(lay.zero) == 3,
                                             2 * ctx.layer_params / np.asarray(lay.tp) * ctx.bpe, 0.0)}
