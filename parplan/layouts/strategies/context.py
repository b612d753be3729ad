"""Context parallelism: the sequence split over ranks, attention over the whole sequence.

Two schemes: all-gather KV (the Llama 3 report, arXiv 2407.21783, Sec. 3.3.2:
each rank all-gathers the keys and values, computes attention for its query
chunks, and reduce-scatters their gradients) and ring attention (Liu et al.
2023, arXiv 2310.01889: KV blocks circulate in cp-1 steps, each hidden behind
the attention on the block in hand). Causal masks are balanced by giving each
rank chunks i and 2cp-1-i of 2cp, so every rank does 1/cp of the attention work.
"""
from __future__ import annotations

import numpy as np

from .base import Collective, Context, Strategy


class ContextParallel(Strategy):
    axis = "cp"

    def local_dims(self, dims, model, layout):
        dims.update(seq=dims["seq"] / np.asarray(layout.cp))
        return dims

    def collectives(self, ctx: Context):
        lay, d = ctx.layout, ctx.dims
        cp = np.asarray(lay.cp)
        stride = ctx.stride("cp")
        kv_local = d.batch * d.seq * 2 * d.kv_heads * d.head_dim * ctx.bpe   # this rank's K and V
        gathered = kv_local * cp
        ring = 1 if lay.cp_mode == "ring" else 0
        active = np.where(cp > 1, 1, 0)
        again = np.where(ctx.recompute == 2, 1, 0)
        return [
            Collective("cp_kv_allgather_fwd", "all_gather", "cp", cp, stride, gathered, active * (1 - ring),
                       "layer", "forward", "none"),
            Collective("cp_kv_allgather_recompute", "all_gather", "cp", cp, stride, gathered,
                       active * (1 - ring) * again, "layer", "recompute", "none"),
            Collective("cp_kv_allgather_bwd", "all_gather", "cp", cp, stride, gathered, active * (1 - ring),
                       "layer", "backward", "none"),
            Collective("cp_dkv_reduce_scatter", "reduce_scatter", "cp", cp, stride, gathered, active * (1 - ring),
                       "layer", "backward", "none"),
            Collective("cp_ring_kv_fwd", "send_recv", "cp", 2, stride, kv_local, active * ring * (cp - 1),
                       "layer", "forward", "attention"),
            Collective("cp_ring_kv_recompute", "send_recv", "cp", 2, stride, kv_local,
                       active * ring * (cp - 1) * again, "layer", "recompute", "attention"),
            Collective("cp_ring_kv_dkv_bwd", "send_recv", "cp", 2, stride, 2 * kv_local, active * ring * (cp - 1),
                       "layer", "backward", "attention"),
        ]
