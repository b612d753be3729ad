"""Context parallelism: the sequence split over ranks, attention over the whole sequence.

Two schemes: all-gather KV (the Llama 3 report, arXiv 2407.21783, Sec. 3.3.2:
each rank all-gathers the keys and values, computes attention for its query
chunks, and reduce-scatters their gradients) and ring attention (Liu et al.
2023, arXiv 2310.01889: KV blocks circulate in cp-1 steps, each hidden behind
the attention on the block in hand). Causal masks are balanced by giving each
rank chunks i and 2cp-1-i of 2cp, so every rank does 1/cp of the attention work.

A ring rank runs its attention as cp kernels (one causal over its own chunks, then one per KV
block the ring brings): their FLOPs are the 1/cp share above, timed at the kernel's rate for the
local query length, the causal block's tiles list-scheduled and the rest as equal tiles
(:func:`parplan.cost.kernels.tile_utilization`). Measured against that: within 2-8% on H200 at 32k-128k
tokens (reports/gpu-checks/h200-2026-12-06/ring_attention.csv); on H100 at 8k-32k tokens with cuDNN, as
Megatron-Core runs it, the rank's kernels at 0.90-1.00 of the model with 32 query heads and 0.96-1.03
with 16 up to cp 4, 1.24-1.34 at cp 8 (1024-row blocks of 16 heads) (reports/gpu-checks/h100-2026-12-07d). Each later
forward step adds a pass that rescales the running output by the log-sum-exps and adds the step's
partial output, and each backward step accumulates dq and dk/dv (Transformer Engine's
``flash_attn_fwd_out_correction`` and the ``dq``/``dkv`` ``add_`` of ``AttnFuncWithCP``):
:meth:`ContextParallel.layer_ops`.
"""
from __future__ import annotations

import numpy as np

from ...cost import ops as ops_mod
from ...specs.dtypes import BYTES_PER_ELEMENT
from .base import Collective, Context, Strategy

# A ring step's partial output covers both local chunks (KV from an earlier rank) or the second
# only (a later rank): on average 3/4 of the local rows; the dk/dv it returns, 3/4 of a KV block.
RING_STEP_ROWS = 0.75


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
        again = ctx.again()
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

    def layer_ops(self, dims, model, layout, dtype):
        """Ring attention's merges: forward, per later step, read the running and the partial output
        and write the sum (3 x 16-bit per element of the rows it covers) with the log-sum-exps (fp32,
        read twice and written per row and head); backward, accumulate the step's dq and dk/dv the
        same way. One extra attention launch per step each way."""
        cp = np.asarray(layout.cp)
        steps = np.where((cp > 1) & (layout.cp_mode == "ring"), cp - 1, 0)
        if not np.any(steps):
            return []
        bpe = BYTES_PER_ELEMENT[dtype]
        rows = RING_STEP_ROWS * dims.batch * dims.seq
        q = rows * dims.heads * dims.head_dim
        kv = rows * 2 * dims.kv_heads * dims.head_dim
        fwd = steps * (3 * bpe * q + 3 * 4 * rows * dims.heads)
        bwd = steps * 3 * bpe * (q + kv)
        return [ops_mod.Op("cp_ring_merges", ops_mod.MEMORY, 0.0, 0.0, fwd, bwd, kernels=(2 * steps, 3 * steps))]
