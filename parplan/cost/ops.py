"""The operations of one transformer layer (and the embedding, logits and loss) on one device.

Each op carries its forward and backward FLOPs and HBM bytes for the *local*
(sharded) shapes of one micro-batch, and, for matmuls, the GEMM shapes that the
roofline turns into time. Matmul FLOPs follow Narayanan et al. 2021 (arXiv
2104.04473, eq. 3 derivation): per layer forward ``24 b s h^2 + 4 b s^2 h`` for a
GPT block; backward is twice forward (a data-gradient and a weight-gradient GEMM
per forward GEMM). Element-wise byte counts follow the fused kernels of
Megatron-LM (fused LayerNorm, bias-GeLU, bias-dropout-add, scale-mask-softmax):
each reads its inputs once and writes its outputs once. Those fusions, and the
data layout that spares the attention's head transposes, arrived with Narayanan
et al. 2021 (Sec. 4.2); with ``fused=False`` the layer runs as Megatron-LM 2019
wrote it in eager PyTorch (``mpu/transformer.py``): a separate bias add after
each linear, copies that transpose q, k, v and the context, and the attention
scores scaled, masked (a multiply and a subtract) and only then soft-maxed, each
a full pass over the ``b a s^2`` scores.

All dimension fields may be numpy arrays (one entry per candidate layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.model import ModelSpec

MATMUL, BATCHED, FLASH, MEMORY = "matmul", "batched_matmul", "flash_attention", "memory"


@dataclass(frozen=True)
class LocalDims:
    """Per-device shapes of one micro-batch: what each parallel axis leaves on a device."""

    batch: Any            # sequences in the micro-batch (b)
    seq: Any              # tokens per sequence on this device (s / cp)
    seq_kv: Any           # keys each query attends over (s for all-gather-KV/ring CP)
    hidden: int           # h
    heads: Any            # query heads on this device (a / tp)
    kv_heads: Any         # key/value heads on this device
    head_dim: int
    ffn: Any              # MLP width on this device (f / tp)
    vocab: Any            # vocabulary shard (V / tp)
    norm_shard: Any       # divisor of activations outside the TP region (tp with sequence parallel, else 1)
    hidden_shard: Any = 1  # divisor of the hidden dim of GEMM inputs (2D/3D tensor parallel), else 1
    causal: bool = True
    gemm_row_gather: Any = 1  # weight GEMMs run on batch*seq*this rows (3D TP gathers its rows over q)
    gemm_steps: Any = 1       # sequential block products per weight GEMM (2D TP: q SUMMA steps)


@dataclass(frozen=True)
class Op:
    """One kernel (or fused group) of a layer, forward and backward, on one device."""

    name: str
    kind: str
    fwd_flops: Any
    bwd_flops: Any
    fwd_bytes: Any
    bwd_bytes: Any
    gemm: tuple | None = None  # (m, k, n, batch) of the forward GEMM
    attention_core: bool = False  # recomputed under selective recompute (Korthikanti 2022)
    streaming: bool = False  # a plain pointwise pass or copy: runs at the copy rate, not the fused kernels'


def _gemm(name: str, m, k, n, bpe: int, batch=1, attention_core: bool = False, kind: str = MATMUL) -> Op:
    flops = 2.0 * batch * m * k * n
    fwd_bytes = batch * (m * k + k * n + m * n) * bpe
    return Op(name, kind, flops, 2.0 * flops, fwd_bytes, 2.0 * fwd_bytes, (m, k, n, batch), attention_core)


def _elementwise(name: str, elems, fwd_rw: float, bwd_rw: float, bpe: int,
                 attention_core: bool = False, extra_fwd_bytes=0.0, extra_bwd_bytes=0.0,
                 streaming: bool = False) -> Op:
    """A memory-bound op over ``elems`` elements touching ``fwd_rw``/``bwd_rw`` tensors of them."""
    return Op(name, MEMORY, 0.0, 0.0, elems * fwd_rw * bpe + extra_fwd_bytes,
              elems * bwd_rw * bpe + extra_bwd_bytes, None, attention_core, streaming)


def layer_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16", flash_attention: bool = True,
              dropout: bool = True, fused: bool = True) -> list[Op]:
    """Ops of one transformer layer on one device for one micro-batch, in execution order.

    ``fused=False``: the unfused element-wise kernels of eager PyTorch (see the module docstring).
    """
    bpe = BYTES_PER_ELEMENT[dtype]
    tokens = d.batch * d.seq
    rows, steps = tokens * d.gemm_row_gather, d.gemm_steps
    h_in = model.hidden / d.hidden_shard
    q_cols = d.heads * d.head_dim
    kv_cols = d.kv_heads * d.head_dim
    row = tokens * model.hidden / d.norm_shard  # elements of one activation outside the TP region
    mask = 1.0 if dropout else 0.0  # one byte per element for a dropout mask
    ops = [
        _elementwise("input_norm", row, 2, 3, bpe),
        _gemm("qkv_proj", rows, h_in, q_cols + 2 * kv_cols, bpe, steps),
    ]
    bias = 1.0 if model.bias else 0.0
    if not fused and (bias or not flash_attention):
        # The bias add (read, write; backward: its gradient read once more for the bias gradient)
        # and, for the unfused attention, the [b, s, a, d] -> [b, a, s, d] copies of q, k, v.
        # Backward copies the q and v gradients back (k's is a view) and concatenates all three.
        copies_fwd, copies_bwd = (0.0, 0.0) if flash_attention else (2.0, 2.0 * 2 / 3 + 2)
        ops.append(_elementwise("qkv_bias_transpose", tokens * (q_cols + 2 * kv_cols), 2 * bias + copies_fwd,
                                bias + copies_bwd, bpe, streaming=True))
    score_elems = d.batch * d.heads * d.seq * d.seq_kv
    if flash_attention:
        causal = 0.5 if d.causal else 1.0
        fwd = 4.0 * d.batch * d.heads * d.seq * d.seq_kv * d.head_dim * causal
        io = d.batch * d.seq * (2 * q_cols + 2 * kv_cols) * bpe
        ops.append(Op("flash_attention", FLASH, fwd, 2.5 * fwd, io, 2.0 * io,
                      (d.seq, d.head_dim, d.seq_kv, d.batch * d.heads), True))
    else:
        ops += [
            _gemm("attn_scores", d.seq, d.head_dim, d.seq_kv, bpe, d.batch * d.heads, True, BATCHED),
        ]
        if not fused:
            # Scale, multiply by the mask, subtract the masked-out offset: three passes forward;
            # the multiply's and the scale's gradients two backward (the subtract passes it through).
            ops.append(_elementwise("scale_mask", score_elems, 6, 4, bpe, True, streaming=True))
        ops += [
            _elementwise("softmax", score_elems, 2, 3, bpe, True),
        ]
        if dropout:
            ops.append(_elementwise("attn_dropout", score_elems, 2, 2, bpe, True, score_elems, score_elems))
        ops += [
            _gemm("attn_context", d.seq, d.seq_kv, d.head_dim, bpe, d.batch * d.heads, True, BATCHED),
        ]
    if not fused and not flash_attention:
        ops.append(_elementwise("context_transpose", tokens * q_cols, 2, 2, bpe, streaming=True))
    ops += [
        _gemm("out_proj", rows, q_cols, model.hidden / d.hidden_shard, bpe, steps),
        *_residual("attn_residual", row, mask, bpe, fused, bias),
        _elementwise("post_attn_norm", row, 2, 3, bpe),
    ]
    if model.activation == "swiglu":
        ops.append(_gemm("mlp_gate_up", rows, h_in, 2 * d.ffn, bpe, steps))
        if fused:
            ops.append(_elementwise("swiglu", tokens * d.ffn, 3, 5, bpe))
        else:  # SiLU (read, write), then the product (read two, write); backward 3 + 5
            ops.append(_elementwise("swiglu", tokens * d.ffn, 5, 8, bpe, streaming=True))
    else:
        ops.append(_gemm("mlp_up", rows, h_in, d.ffn, bpe, steps))
        if not fused and bias:  # a pass of its own; fused, it rides in the bias-GeLU kernel
            ops.append(_elementwise("mlp_bias_add", tokens * d.ffn, 2, 1, bpe, streaming=True))
        ops.append(_elementwise(model.activation, tokens * d.ffn, 2, 3, bpe))
    ops += [
        _gemm("mlp_down", rows, d.ffn, model.hidden / d.hidden_shard, bpe, steps),
        *_residual("mlp_residual", row, mask, bpe, fused, bias),
    ]
    return ops


def _residual(name: str, row, mask: float, bpe: int, fused: bool, bias: float = 1.0) -> list[Op]:
    """Bias + dropout + residual add after a row-parallel linear.

    Fused (one kernel): read the output, write the sum, and the 1-byte dropout mask. Unfused: the
    bias add (read, write; backward: a read for the bias gradient) and the residual add (read two,
    write one) as plain passes, and the dropout (read, write, write its mask; backward: read, read
    the mask, write) as its own kernel.
    """
    if fused:
        return [_elementwise(name, row, 2 + mask, 1 + mask, bpe, extra_fwd_bytes=row * mask,
                             extra_bwd_bytes=row * mask)]
    ops = [_elementwise(f"{name}_adds", row, 3 + 2 * bias, bias, bpe, streaming=True)]
    if mask:
        ops.append(_elementwise(f"{name}_dropout", row, 2, 2, bpe, extra_fwd_bytes=row, extra_bwd_bytes=row))
    return ops


def embedding_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16") -> list[Op]:
    """The input embedding: a gather forward, a scatter-add into the table's gradient backward."""
    bpe = BYTES_PER_ELEMENT[dtype]
    elems = d.batch * d.seq * model.hidden / d.hidden_shard
    return [_elementwise("embedding", elems, 2, 3, bpe)]


def head_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16") -> list[Op]:
    """Final norm, logits GEMM (vocab-parallel) and the fp32 softmax cross-entropy loss."""
    bpe = BYTES_PER_ELEMENT[dtype]
    tokens = d.batch * d.seq
    logits = tokens * d.vocab
    return [
        _elementwise("final_norm", tokens * model.hidden / d.norm_shard, 2, 3, bpe),
        _gemm("logits", tokens * d.gemm_row_gather, model.hidden / d.hidden_shard, d.vocab, bpe, d.gemm_steps),
        # Megatron's vocab-parallel cross-entropy: read 16-bit logits, write fp32, max/sum/exp
        # passes in fp32 forward; read fp32 softmax and write 16-bit grad backward.
        Op("cross_entropy", MEMORY, 0.0, 0.0, logits * (bpe + 3 * 4), logits * (4 + bpe)),
    ]


def total(ops: list[Op], field: str):
    return sum((getattr(o, field) for o in ops), np.float64(0.0))
