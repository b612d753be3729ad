"""2D (Optimus / SUMMA, P = q x q) and 3D (P = q x q x q) tensor parallelism on the ``tp`` axis.

Both shard the weights *and* the activations of every transformer layer over all
P devices, so per-device FLOPs, weights and activations are all 1/P of the
layer's, at the price of more (and smaller) collectives per layer than 1D.

Sources
-------
* 2D: Xu, Li, Gong, You 2021, "An Efficient 2D Method for Training Super-Large
  Deep Learning Models" (Optimus), arXiv 2104.05343. Abstract: on 64 GPUs of TACC
  Frontera, 1.48x training speedup, 1.78x inference speedup and an 8x larger
  maximum batch than Megatron. The algorithm is SUMMA (van de Geijn & Watts
  1997) on a q x q mesh.
* 3D: Bian, Xu, Wang, You 2021, "Maximizing Parallelism in Distributed Training
  for Huge Neural Networks", arXiv 2105.14450. Abstract: on 64 V100s, 2.32x
  faster than 1D and 1.57x faster than 2D.
* The per-linear-layer cost tables of both methods, as published by the same
  group (Bian & Li) in the Colossal-AI documentation, "Efficiency" sections of
  hpcaitech/ColossalAI ``docs/source/en/features/{1D,2D,3D}_tensor_parallel.md``
  ("the theoretical computation and memory cost, as well as the communication
  cost based on the ring algorithm in both the forward and backward pass"):

      mode  Computation  Memory (parameters)  Memory (activations)  Communication (bandwidth)  Communication (latency)
      1D    O(1/P)       O(1/P)               O(1)                  O(2(P-1)/P)                O(2(P-1))
      2D    O(1/q^2)     O(1/q^2)             O(1/q^2)              O(6(q-1)/q)                O(6(q-1))
      3D    O(1/q^3)     O(1/q^3)             O(1/q^3)              O(6(q-1)/q^3)              O(6(q-1))

  The papers' own comparison tables (Optimus Table 1, Megatron vs Optimus; the
  3D paper's cost table) are not reproduced here; the collectives below are
  derived from the algorithms, checked against the reference implementation by
  the papers' group (hpcaitech/ColossalAI
  ``colossalai/legacy/nn/layer/parallel_2d/_operation.py``: ``Matmul_AB_2D``,
  ``Matmul_ABT_2D``, ``Matmul_ATB_2D``; ``parallel_3d/_operation.py``:
  ``_Linear3D``; ``parallel_{2d,3d}/layers.py``: the vocab-parallel embedding and
  classifier), and reproduce the table's bandwidth column exactly (see below).

Per-linear costs, for ``Y = X W`` with ``X`` of M x K (M = b*s tokens of the
micro-batch on this tensor-parallel group) and ``W`` of K x N, in elements:

2D (SUMMA). Device (i, j) holds blocks X_ij (M/q x K/q) and W_ij (K/q x N/q).
Forward, q steps t: X_it is broadcast along mesh row i, W_tj along column j, and
(i, j) accumulates X_it W_tj -- so each device runs q GEMMs of
(M/q, K/q, N/q): 2MKN/q^2 FLOPs = 1/P of the layer. Backward: dX = dY W^T
(``Matmul_ABT_2D``: q broadcasts of W blocks along columns, q reduces of
M/q x K/q partial dX blocks along rows) and dW = X^T dY (``Matmul_ATB_2D``: q
broadcasts of X blocks along rows, q reduces of K/q x N/q partial dW blocks along
columns). Per linear: 2q calls forward, 4q backward, each of a block
(MK/q^2 or KN/q^2). Only the local blocks are kept for the backward (X is
broadcast again there), so activations are 1/q^2 = 1/P.

  nccl bus bytes per device (broadcast/reduce factor 1): forward (MK + KN)/q,
  backward 2(MK + KN)/q. With the table's convention (a broadcast or reduce of n
  elements over q ranks moves (q-1) n: store-and-forward over a ring), the sum is
  3(q-1)(MK + KN)/q, i.e. exactly 6(q-1)/q * S for a square linear (M = K = N,
  S = M^2): the table's "Communication (bandwidth)" entry.

3D (Bian et al.). Device (i, j, l) holds X_ijl (M/q^2 x K/q) and W_lji
(K/q^2 x N/q). Forward: all-gather X over the input group -> X_il (M/q x K/q);
all-gather W over the weight group -> W_lj (K/q x N/q); one GEMM
(M/q, K/q, N/q) = 2MKN/q^3 FLOPs = 1/P; reduce-scatter the partial Y over the
output group -> Y_ijl (M/q^2 x N/q). Backward: all-gather dY over the output
group, reduce-scatter dX = dY W_lj^T over the input group and dW = X_il^T dY
over the weight group. Per linear 3 collectives forward and 3 backward, with
buffers MK/q^2, KN/q^2, MN/q^2 (nccl sizes: the all-gather output, the
reduce-scatter input).

  nccl bus bytes per device: 2(q-1)/q * (MK + KN + MN)/q^2, i.e. exactly
  6(q-1)/q^3 * S for a square linear: the table's entry; 6 ring collectives of
  q-1 steps: its latency entry 6(q-1).

The input and output groups swap from one linear to the next (``swap_in_out_group``
in the reference), so a layer's linear pairs (QKV -> output projection, MLP up ->
down) alternate them and the layer's input and output share one layout.

Memory: every activation tensor of the layer is 1/P (Table: O(1/q^2), O(1/q^3)).
The 3D reference implementation keeps the *gathered* X_il and W_lj for the
backward (``ctx.save_for_backward(input_, weight)`` after the all-gathers), which
stores GEMM inputs at 1/q^2 rather than 1/q^3 (hpcaitech/ColossalAI issue 499
reports Linear2D/Linear3D using more memory than Linear1D); an implementation
that keeps only its shard would all-gather X and W again in the backward. This
model follows the papers: 1/P activations and 3 + 3 collectives per linear.

Mesh placement: the ``tp`` axis (stride ``S = ctx.stride("tp")``, P members) is
laid out as (i, j) = (rank // q, rank % q) in 2D: rows (fixed i, the broadcast of
activation blocks) are contiguous (stride S), columns (weight blocks) stride S*q.
In 3D the input and output groups take strides S and S*q (alternating per
linear) and the weight group S*q^2, the outermost: its all-gathers depend only
on the weights and could be issued ahead of the layer.

All collectives here are on the critical path (``hidden_by="none"``), per layer
per micro-batch, except the embedding's and the classifier's (per micro-batch).
"""
from __future__ import annotations


import numpy as np

from ...specs.model import vocab_shard
from ...cost.ops import LocalDims
from .base import Collective, Context, Strategy

STATS_BYTES = 4  # LayerNorm statistics are reduced in fp32 (the reference casts to float32)


def mesh_side(tp, dims: int):
    """q such that tp = q**dims (arrays allowed; rounded: the layout check refuses non-powers)."""
    return np.rint(np.asarray(tp, float) ** (1.0 / dims)).astype(np.int64)


def weight_gemms(model, d: LocalDims, q):
    """(name, K, N) of the layer's weight GEMMs, full (unsharded) sizes as the local shards imply.

    With GQA and fewer KV heads than q the KV heads are replicated, as in 1D, so the
    QKV output width is q times the local width.
    """
    hd = d.head_dim
    up = d.ffn * (2 if model.activation == "swiglu" else 1)
    return [
        ("qkv", model.hidden, q * (d.heads + 2 * d.kv_heads) * hd),
        ("proj", q * d.heads * hd, model.hidden),
        ("mlp_up", model.hidden, q * up),
        ("mlp_down", q * d.ffn, model.hidden),
    ]


def _shard_common(dims: dict, model, q, rows) -> dict:
    dims.update(
        batch=dims["batch"] / rows,
        heads=model.heads / q,
        kv_heads=np.where(model.kv_heads >= q, model.kv_heads / q, 1),
        ffn=model.ffn_hidden / q,
        vocab=vocab_shard(model.vocab, q),
        vocab_split=q,
        norm_shard=q,  # batch is already /rows: tokens * h / q is the 1/P block of the activation
    )
    return dims


class TensorParallel2D(Strategy):
    """Optimus: SUMMA on a q x q mesh; activations (b*s, h) split rows over i, hidden over j."""

    axis = "tp"
    dims = 2

    def local_dims(self, dims, model, layout):
        q = mesh_side(layout.tp, 2)
        dims = _shard_common(dims, model, q, rows=q)
        # Each device runs q block products (b*s/q, h/q, n/q), one per SUMMA step.
        dims.update(hidden_shard=q, gemm_steps=q)
        return dims

    def collectives(self, ctx: Context):
        d, bpe = ctx.dims, ctx.bpe
        q = mesh_side(ctx.layout.tp, 2)
        s = ctx.stride("tp")
        row, col = s, s * q               # broadcast of activation blocks / of weight blocks
        tokens = d.batch * d.seq          # M / q: rows of this device's blocks
        M = tokens * q
        again = ctx.again()
        out: list[Collective] = []

        def add(name, op, stride, size, count, phase, per="layer", stage="all"):
            out.append(Collective(name, op, "tp", q, stride, size, count, per, phase, "none", stage))

        for name, K, N in weight_gemms(ctx.model, d, q):
            x = M * K / q**2 * bpe        # one activation block X_ij (or a dX partial)
            w = K * N / q**2 * bpe        # one weight block W_ij (or a dW partial)
            # C = A B: q broadcasts of A blocks along rows and of B blocks along columns.
            add(f"summa_{name}_bcast_x_fwd", "broadcast", row, x, q, "forward")
            add(f"summa_{name}_bcast_w_fwd", "broadcast", col, w, q, "forward")
            add(f"summa_{name}_bcast_x_recompute", "broadcast", row, x, q * again, "recompute")
            add(f"summa_{name}_bcast_w_recompute", "broadcast", col, w, q * again, "recompute")
            # dX = dY W^T (A B^T): broadcast W along columns, reduce dX partials along rows.
            add(f"summa_{name}_bcast_w_bwd", "broadcast", col, w, q, "backward")
            add(f"summa_{name}_reduce_dx_bwd", "reduce", row, x, q, "backward")
            # dW = X^T dY (A^T B): broadcast X along rows, reduce dW partials along columns.
            add(f"summa_{name}_bcast_x_bwd", "broadcast", row, x, q, "backward")
            add(f"summa_{name}_reduce_dw_bwd", "reduce", col, w, q, "backward")

        # LayerNorm over a hidden dim split along the row: all-reduce of the per-token mean and
        # variance (two calls per norm forward, two backward; reference LayerNorm2D / _Layernorm_2D).
        stats = tokens * STATS_BYTES
        add("tp2d_norm_stats_fwd", "all_reduce", row, stats, 4, "forward")
        add("tp2d_norm_stats_bwd", "all_reduce", row, stats, 4, "backward")
        add("tp2d_norm_stats_recompute", "all_reduce", row, stats, 4 * again, "recompute")

        # Vocab-parallel embedding (reference VocabParallelEmbedding2D): each device looks up
        # its (vocab, hidden) block for the whole micro-batch, then reduce-scatters the partial
        # (b*s, h/q) over the column (splitting the batch); all-gather of the gradient backward.
        emb = M * ctx.model.hidden / q * bpe
        add("tp2d_embedding_rs", "reduce_scatter", col, emb, 1, "forward", "microbatch", "first")
        add("tp2d_embedding_ag", "all_gather", col, emb, 1, "backward", "microbatch", "first")
        # Classifier (reference VocabParallelClassifier2D): logits = X E^T with SUMMA A B^T.
        V = q * d.vocab
        e = V * ctx.model.hidden / q**2 * bpe
        y = M * V / q**2 * bpe
        add("summa_logits_bcast_w_fwd", "broadcast", col, e, q, "forward", "microbatch", "last")
        add("summa_logits_reduce_y_fwd", "reduce", row, y, q, "forward", "microbatch", "last")
        # dX = dY E (A B): broadcast dY along rows and E along columns.
        add("summa_logits_bcast_dy_bwd", "broadcast", row, y, q, "backward", "microbatch", "last")
        add("summa_logits_bcast_w_bwd", "broadcast", col, e, q, "backward", "microbatch", "last")
        # dE = dY^T X (A^T B): broadcast dY along rows, reduce dE partials along columns.
        add("summa_logits_bcast_dy2_bwd", "broadcast", row, y, q, "backward", "microbatch", "last")
        add("summa_logits_reduce_dw_bwd", "reduce", col, e, q, "backward", "microbatch", "last")
        return out

    def state_divisors(self, ctx):
        t = np.asarray(ctx.layout.tp)
        return {"weights": t, "gradients": t, "optimizer": t}


class TensorParallel3D(Strategy):
    """Bian et al.: a q x q x q cube; activations (b*s, h) split rows q^2 ways, hidden q ways."""

    axis = "tp"
    dims = 3

    def local_dims(self, dims, model, layout):
        q = mesh_side(layout.tp, 3)
        dims = _shard_common(dims, model, q, rows=q * q)
        # One GEMM per linear on the all-gathered rows: (b*s/q, h/q, n/q).
        dims.update(hidden_shard=q, gemm_row_gather=q)
        return dims

    def collectives(self, ctx: Context):
        d, bpe = ctx.dims, ctx.bpe
        q = mesh_side(ctx.layout.tp, 3)
        s = ctx.stride("tp")
        inner, middle, weight_group = s, s * q, s * q * q
        tokens = d.batch * d.seq          # M / q^2
        M = tokens * q * q
        again = ctx.again()
        out: list[Collective] = []

        def add(name, op, stride, size, count, phase, per="layer", stage="all"):
            out.append(Collective(name, op, "tp", q, stride, size, count, per, phase, "none", stage))

        def linear(name, K, N, in_stride, out_stride, per="layer", stage="all"):
            x = M * K / q**2 * bpe        # X_il: the all-gather output over the input group
            w = K * N / q**2 * bpe        # W_lj: the all-gather output over the weight group
            y = M * N / q**2 * bpe        # partial X_il W_lj: the reduce-scatter input
            rec = again if per == "layer" else 0
            for phase, n in (("fwd", 1), ("recompute", rec)):
                ph = "forward" if phase == "fwd" else phase
                add(f"tp3d_{name}_ag_x_{phase}", "all_gather", in_stride, x, n, ph, per, stage)
                add(f"tp3d_{name}_ag_w_{phase}", "all_gather", weight_group, w, n, ph, per, stage)
                add(f"tp3d_{name}_rs_y_{phase}", "reduce_scatter", out_stride, y, n, ph, per, stage)
            add(f"tp3d_{name}_ag_dy_bwd", "all_gather", out_stride, y, 1, "backward", per, stage)
            add(f"tp3d_{name}_rs_dx_bwd", "reduce_scatter", in_stride, x, 1, "backward", per, stage)
            add(f"tp3d_{name}_rs_dw_bwd", "reduce_scatter", weight_group, w, 1, "backward", per, stage)

        for k, (name, K, N) in enumerate(weight_gemms(ctx.model, d, q)):
            # QKV and MLP-up gather over the inner group and scatter over the middle one;
            # the projections that follow them swap the two.
            in_s, out_s = (inner, middle) if k % 2 == 0 else (middle, inner)
            linear(name, K, N, in_s, out_s)

        # LayerNorm: one fused all-reduce of (sum, sum of squares) per token forward and of
        # (dvar, dmean) backward, over the group splitting the hidden dim (reference _Layernorm3D).
        stats = 2 * tokens * STATS_BYTES
        add("tp3d_norm_stats_fwd", "all_reduce", middle, stats, 2, "forward")
        add("tp3d_norm_stats_bwd", "all_reduce", middle, stats, 2, "backward")
        add("tp3d_norm_stats_recompute", "all_reduce", middle, stats, 2 * again, "recompute")

        # Embedding (reference VocabParallelEmbedding3D): gather the table block over the weight
        # group, reduce-scatter the (b*s/q, h/q) partial lookup over the input group.
        h, V = ctx.model.hidden, q * d.vocab
        table = V * h / q**2 * bpe
        emb = M * h / q**2 * bpe
        add("tp3d_embedding_ag_w", "all_gather", weight_group, table, 1, "forward", "microbatch", "first")
        add("tp3d_embedding_rs", "reduce_scatter", inner, emb, 1, "forward", "microbatch", "first")
        add("tp3d_embedding_ag_dy", "all_gather", inner, emb, 1, "backward", "microbatch", "first")
        add("tp3d_embedding_rs_dw", "reduce_scatter", weight_group, table, 1, "backward", "microbatch", "first")
        # Classifier (reference _VocabParallelClassifier3D): a 3D linear h -> V.
        linear("logits", h, V, inner, middle, per="microbatch", stage="last")
        return out

    def state_divisors(self, ctx):
        t = np.asarray(ctx.layout.tp)
        return {"weights": t, "gradients": t, "optimizer": t}


__all__ = ["TensorParallel2D", "TensorParallel3D", "mesh_side", "weight_gemms"]
