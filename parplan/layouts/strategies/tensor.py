"""Tensor parallelism: 1D Megatron (with or without sequence parallel), 2D and 3D.

1D (Shoeybi et al. 2019, arXiv 1909.08053): the attention heads and the MLP's
first matrix are column-sharded, the output projection and the MLP's second
matrix row-sharded; Megatron's conjugate operators f/g cost one all-reduce of
the (b, s, h) activation per block forward and one backward: 2 + 2 per layer
(1 + 1 for a parallel attention + MLP block, PaLM Sec. 2).
Sequence parallel (Korthikanti et al. 2022) replaces each all-reduce with a
reduce-scatter and an all-gather of the same buffer — the same bytes on the wire
(an all-reduce *is* a reduce-scatter plus an all-gather) — and shards the
activations outside the TP region by t.
"""
from __future__ import annotations

import numpy as np

from ...specs.model import vocab_shard
from .base import Collective, Context, Strategy


class TensorParallel1D(Strategy):
    axis = "tp"

    def local_dims(self, dims, model, layout):
        t = np.asarray(layout.tp)
        sp = np.asarray(layout.sp)
        dims.update(
            heads=model.heads / t,
            kv_heads=np.where(model.kv_heads >= t, model.kv_heads / t, 1),
            ffn=model.ffn_hidden / t,
            vocab=vocab_shard(model.vocab, t),
            vocab_split=t,
            norm_shard=np.where(sp & (t > 1), t, 1),
        )
        return dims

    def collectives(self, ctx: Context):
        lay, d = ctx.layout, ctx.dims
        t = np.asarray(lay.tp)
        buf = d.batch * d.seq * ctx.model.hidden * ctx.bpe  # one (b, s, h) activation
        stride = ctx.stride("tp")
        sp = np.asarray(lay.sp)
        blocks = 1 if ctx.model.parallel_layers else 2  # a parallel block sums attention and MLP first
        ar = np.where(sp, 0, blocks)     # all-reduces per block pair without sequence parallel
        rs_ag = np.where(sp, blocks, 0)  # reduce-scatters (and all-gathers) with it
        ends_ar, ends_rs_ag = np.where(sp, 0, 1), np.where(sp, 1, 0)  # the embedding's and the head's, once each
        again = ctx.again()  # full recompute re-runs the forward's collectives
        out = [
            Collective("tp_allreduce_fwd", "all_reduce", "tp", t, stride, buf, ar, "layer", "forward", "none"),
            Collective("tp_allreduce_bwd", "all_reduce", "tp", t, stride, buf, ar, "layer", "backward", "none"),
            Collective("tp_allreduce_recompute", "all_reduce", "tp", t, stride, buf, ar * again,
                       "layer", "recompute", "none"),
            # Vocab-parallel embedding sums its partial lookups; the logits' input gradient is summed.
            Collective("tp_embedding_allreduce", "all_reduce", "tp", t, stride, buf, ends_ar,
                       "microbatch", "forward", "none", "first"),
            Collective("tp_logits_allreduce", "all_reduce", "tp", t, stride, buf, ends_ar,
                       "microbatch", "backward", "none", "last"),
        ]
        # A collective matmul (XLA's windowed einsum, Transformer Engine's userbuffers, PyTorch's async TP)
        # runs each gather or scatter in tp steps under the GEMM it feeds or follows (JAX scaling book,
        # "Programming TPUs in JAX": collective matmul; Wang et al. 2023); parplan.step.overlap prices it.
        # A framework's pass may leave some backward collectives out (PyTorch's async TP: the reduce-scatter of
        # the column-parallel linears' input gradient, a sum of several matmuls).
        # An MoE block's gather and scatter (its dispatcher's) feed no linear layer: they stay exposed.
        overlap = ctx.software is not None and ctx.software.tp_overlap == "collective-matmul"
        backward = ctx.software.framework.parallelism.tp_overlap.backward if overlap else ()
        under = "matmul" if overlap else "none"
        moe = np.where(sp, ctx.model.moe_layers / ctx.model.layers, 0.0) if overlap and ctx.model.is_moe else 0.0
        for op, short in (("all_gather", "ag"), ("reduce_scatter", "rs")):
            out += [
                Collective(f"sp_{short}_fwd", op, "tp", t, stride, buf, rs_ag - moe, "layer", "forward", under),
                Collective(f"sp_{short}_bwd", op, "tp", t, stride, buf, rs_ag - moe, "layer", "backward",
                           under if op in backward else "none"),
                Collective(f"sp_{short}_recompute", op, "tp", t, stride, buf, (rs_ag - moe) * again,
                           "layer", "recompute", under),
                *[Collective(f"sp_{short}_moe_{phase}", op, "tp", t, stride, buf, moe * k, "layer", phase, "none")
                  for phase, k in (("forward", 1), ("backward", 1), ("recompute", again))
                  if overlap and ctx.model.is_moe],
                # Embedding output (reduce-scatter forward, all-gather backward) and logits input
                # (all-gather forward, reduce-scatter backward): one of each per pass.
                Collective(f"sp_{short}_head_fwd", op, "tp", t, stride, buf, ends_rs_ag, "microbatch",
                           "forward", "none", "last" if short == "ag" else "first"),
                Collective(f"sp_{short}_head_bwd", op, "tp", t, stride, buf, ends_rs_ag, "microbatch",
                           "backward", "none", "first" if short == "ag" else "last"),
            ]
        if ctx.sampling:
            # Serving samples from the whole vocabulary: the vocab-parallel logits of each
            # sequence's last position are gathered.
            logits = d.batch * ctx.model.vocab * ctx.bpe
            out.append(Collective("tp_logits_allgather", "all_gather", "tp", t, stride, logits, 1,
                                  "microbatch", "forward", "none", "last"))
        return out

    def state_divisors(self, ctx):
        t = np.asarray(ctx.layout.tp)
        return {"weights": t, "gradients": t, "optimizer": t}


from .tensor_multi import TensorParallel2D, TensorParallel3D  # noqa: E402

TENSOR_PARALLEL = {"1d": TensorParallel1D, "2d": TensorParallel2D, "3d": TensorParallel3D}
