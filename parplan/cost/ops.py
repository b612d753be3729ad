"""The operations of one transformer layer (and the embedding, logits and loss) on one device.

Each op carries its forward and backward FLOPs and HBM bytes for the *local* (sharded) shapes of one micro-batch,
and, for matmuls, the GEMM shapes that the roofline turns into time. Matmul FLOPs follow Narayanan et al. 2021
(arXiv 2104.04473, eq. 3 derivation): per layer forward ``24 b s h^2 + 4 b s^2 h`` for a GPT block; backward is
twice forward (a data-gradient and a weight-gradient GEMM per forward GEMM). Element-wise byte counts follow the
fused kernels of Megatron-LM (fused LayerNorm, bias-GeLU, bias-dropout-add, scale-mask-softmax): each reads its
inputs once and writes its outputs once. Those fusions, and the data layout that spares the attention's head
transposes, arrived with Narayanan et al. 2021 (Sec. 4.2); with ``fused=False`` the layer runs as Megatron-LM 2019
wrote it in eager PyTorch (``mpu/transformer.py``): a separate bias add after each linear, copies that transpose q,
k, v and the context, and the attention scores scaled, masked (a multiply and a subtract) and only then soft-maxed,
each a full pass over the ``b a s^2`` scores. All dimension fields may be numpy arrays (one entry per candidate
layout).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.framework import EXPERT_GEMMS
from ..specs.model import ModelSpec
from .elementwise import FP8_CAST_BYTES, FP8_CAST_MULTIPLIER, LOSS_TRAFFIC, WEIGHT_CAST_BYTES, traffic
from . import mla as mla_mod, moe as moe_mod
from .parallel_block import parallel_block

MATMUL, BATCHED, FLASH, MEMORY = "matmul", "batched_matmul", "flash_attention", "memory"
GROUPED, STREAMS, LOOP = EXPERT_GEMMS


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
    vocab_split: Any = 1      # ways the vocabulary is sharded (the framework pads it before)
    moe: Any = None           # MoE layers: the expert split (parplan.cost.moe.MoeParallel; None: no EP)
    moe_share: Any = None     # fraction of this device's layers that are MoE (None: the whole model's)


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
    kernels: tuple = (1, 1)  # launches forward and backward (eager ops are several aten kernels)
    fp8: bool = False        # a linear layer's GEMM run in FP8 (its inputs 1 byte each)
    sac: Any = 1.0           # fraction of its forward that per-op selective checkpointing recomputes
    grouped: str = ""        # an MoE layer's experts as one GEMM launch or over streams (measured: grouped_gemm)
    family: str = ""         # an eager element-wise op's family (rmsnorm, rope, ...): its rate in efficiency.eager
    share: Any = 1.0         # fraction of the layers that run it (an MoE model's MoE or dense MLP)
    causal: Any = False      # fused causal attention: its tiles do unequal work (parplan.cost.kernels)


@dataclass(frozen=True)
class Fp8:
    """How a run casts to FP8: the recipe, casts fused or not, how often weights are re-cast (1, or 1/m)."""

    recipe: str
    casts: str = "fused"
    weight_casts_per_microbatch: Any = 1.0
    weight_shard: Any = 1.0   # ZeRO-3 casts the local shard before gathering
    params: bool = False      # FP8 primary weights: no cast, only their transposes rebuilt
    experts: bool = True      # the routed experts' GEMMs run in FP8 too (else 16-bit; shared experts follow lin)


ALL_FUSED = {op: "fused" for op in ("norm", "rope", "activation", "residual", "bias", "softmax", "transposes")}
ALL_EAGER = {op: "eager" for op in ALL_FUSED}


def _gemm(name: str, m, k, n, bpe: int, batch=1, attention_core: bool = False, kind: str = MATMUL,
          fp8: bool = False, sac=1.0) -> Op:
    flops = 2.0 * batch * m * k * n
    in_bpe = 1 if fp8 else bpe
    fwd_bytes = batch * ((m * k + k * n) * in_bpe + m * n * bpe)
    return Op(name, kind, flops, 2.0 * flops, fwd_bytes, 2.0 * fwd_bytes, (m, k, n, batch), attention_core,
              fp8=fp8, sac=sac)


def _elementwise(name: str, elems, fwd_rw: float, bwd_rw: float, bpe: int,
                 attention_core: bool = False, extra_fwd_bytes=0.0, extra_bwd_bytes=0.0,
                 streaming: bool = False, kernels=(1, 1), family: str = "") -> Op:
    """A memory-bound op over ``elems`` elements touching ``fwd_rw``/``bwd_rw`` tensors of them."""
    return Op(name, MEMORY, 0.0, 0.0, elems * fwd_rw * bpe + extra_fwd_bytes,
              elems * bwd_rw * bpe + extra_bwd_bytes, None, attention_core, streaming, kernels,
              family=family if streaming else "")


def _traffic_op(name: str, family: str, impl: str, elems, bpe: int) -> Op:
    """An element-wise op from its per-element traffic (:mod:`parplan.cost.elementwise`), at ``bpe``."""
    t = traffic(family, impl)
    scale = bpe / 2.0
    return Op(name, MEMORY, 0.0, 0.0, elems * t.fwd_bytes * scale, elems * t.bwd_bytes * scale,
              streaming=impl == "eager", kernels=(t.fwd_kernels, t.bwd_kernels),
              family=family if impl == "eager" else "")


def layer_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16", flash_attention: bool = True,
              dropout: bool = True, fused: bool = True, *, elementwise: Mapping[str, str] | None = None,
              fp8: Fp8 | None = None, weight_cast_shard=None, expert_gemms: str = GROUPED,
              moe_permute: str = "fused", moe_dispatcher: str = "none", moe_bias: str = "fused") -> list[Op]:
    """Ops of one transformer layer on one device for one micro-batch, in execution order.

    ``elementwise`` says for each element-wise op (norm, rope, activation, residual, bias, softmax,
    transposes) whether it runs fused or as eager PyTorch's kernels; by default all ``fused``, or
    all ``eager`` with ``fused=False`` (Megatron-LM 2019, see the module docstring). ``dtype`` is
    the activations' 16-bit (or fp32) type; with ``fp8`` the weight GEMMs (experts too) run in FP8 and
    pay their operand casts, while attention and every element-wise op stay in ``dtype``.
    ``weight_cast_shard``: autocast re-casts the fp32 weights every forward (on the ZeRO-3 shard,
    divided by this); None when weights are kept in 16 bits. ``expert_gemms``: how an MoE layer's experts
    launch (EXPERT_GEMMS: one grouped GEMM, one each over streams, a loop); ``moe_permute``: fused or eager;
    ``moe_dispatcher``: how a training run's tokens reach their experts; ``moe_bias``: the experts' biases in
    their GEMMs' epilogue (fused) or added apart (eager) (:func:`parplan.cost.moe.block_kernels`)."""
    impl = dict(ALL_FUSED if fused else ALL_EAGER)
    if elementwise is not None:
        impl.update(elementwise)
    eager = {op for op, how in impl.items() if how == "eager"}
    bpe = BYTES_PER_ELEMENT[dtype]
    tokens = d.batch * d.seq
    rows, steps = tokens * d.gemm_row_gather, d.gemm_steps
    h_in = model.hidden / d.hidden_shard
    h_out = model.hidden / d.hidden_shard
    q_cols = d.heads * d.head_dim
    kv_cols = d.kv_heads * d.head_dim
    qkv_cols = q_cols + 2 * kv_cols
    row = tokens * model.hidden / d.norm_shard  # elements of one activation outside the TP region
    mask = 1.0 if dropout else 0.0  # one byte per element for a dropout mask
    swiglu = model.activation == "swiglu"
    lin = bool(fp8)
    # Per-op selective checkpointing (torchtitan) saves every odd matmul of the block in the order
    # wq, wk, wv, wo, w1, (w3,) w2 and recomputes the even ones: wk, wo and w3 (SwiGLU) or w2 (GELU).
    sac_qkv = kv_cols / qkv_cols
    ops = [_norm_op("input_norm", model, row, bpe, impl["norm"])]
    if model.mla:
        ops += [_build(k, bpe, lin) for k in mla_mod.projection_kernels(model, d, rows)]
    else:
        ops.append(_gemm("qkv_proj", rows, h_in, qkv_cols, bpe, steps, fp8=lin, sac=sac_qkv))
    bias = 1.0 if model.bias else 0.0
    if ("bias" in eager and bias) or (not flash_attention and "transposes" in eager):
        # The bias add (read, write; backward: its gradient read once more for the bias gradient)
        # and, for the unfused attention, the [b, s, a, d] -> [b, a, s, d] copies of q, k, v.
        # Backward copies the q and v gradients back (k's is a view) and concatenates all three.
        b_ = bias if "bias" in eager else 0.0
        copies_fwd, copies_bwd = (0.0, 0.0) if flash_attention or "transposes" not in eager else (2.0, 2.0 * 2 / 3 + 2)
        ops.append(_elementwise("qkv_bias_transpose", tokens * qkv_cols, 2 * b_ + copies_fwd,
                                b_ + copies_bwd, bpe, streaming=True))
    if model.position == "rope":
        rotated = d.heads * model.qk_rope_dim + model.qk_rope_dim if model.mla else q_cols + kv_cols
        ops.append(_traffic_op("rope", "rope", impl["rope"], tokens * rotated, bpe))
    score_elems = d.batch * d.heads * d.seq * d.seq_kv
    if model.mla and flash_attention:
        fwd = mla_mod.attention_flops(d, model)
        io = mla_mod.attention_io_elems(d, model) * bpe
        ops.append(Op("flash_attention", FLASH, fwd, 2.5 * fwd, io, 2.0 * io,
                      (d.seq, d.head_dim, d.seq_kv, d.batch * d.heads), True, sac=0.0, causal=d.causal))
    elif flash_attention:
        causal = 0.5 if d.causal else 1.0
        fwd = 4.0 * d.batch * d.heads * d.seq * d.seq_kv * d.head_dim * causal
        io = d.batch * d.seq * (2 * q_cols + 2 * kv_cols) * bpe
        ops.append(Op("flash_attention", FLASH, fwd, 2.5 * fwd, io, 2.0 * io,
                      (d.seq, d.head_dim, d.seq_kv, d.batch * d.heads), True, sac=0.0, causal=d.causal))
        if "transposes" in eager:
            ops.append(_traffic_op("context_transpose", "transposes", "eager", tokens * q_cols, bpe))
    else:
        ops += [
            _gemm("attn_scores", d.seq, d.head_dim, d.seq_kv, bpe, d.batch * d.heads, True, BATCHED),
        ]
        if "softmax" in eager:
            # Scale, multiply by the mask, subtract the masked-out offset: three passes forward;
            # the multiply's and the scale's gradients two backward (the subtract passes it through).
            ops.append(_elementwise("scale_mask", score_elems, 6, 4, bpe, True, streaming=True, kernels=(3, 2)))
        ops += [
            _elementwise("softmax", score_elems, 2, 3, bpe, True),
        ]
        if dropout:
            ops.append(_elementwise("attn_dropout", score_elems, 2, 2, bpe, True, score_elems, score_elems))
        ops += [
            _gemm("attn_context", d.seq, d.seq_kv, d.head_dim, bpe, d.batch * d.heads, True, BATCHED),
        ]
        if "transposes" in eager:
            ops.append(_elementwise("context_transpose", tokens * q_cols, 2, 2, bpe, streaming=True))
    ops += [
        _gemm("out_proj", rows, d.heads * model.v_dim if model.mla else q_cols, h_out, bpe, steps, fp8=lin, sac=1.0),
        *_residual("attn_residual", row, mask, bpe, impl["residual"], bias if "bias" in eager else 0.0),
        _norm_op("post_attn_norm", model, row, bpe, impl["norm"]),
    ]
    mlp_at = len(ops)
    if swiglu:
        ops.append(_gemm("mlp_gate_up", rows, h_in, 2 * d.ffn, bpe, steps, fp8=lin, sac=0.5))
        ops.append(_traffic_op("swiglu", "swiglu", impl["activation"], tokens * d.ffn, bpe))
    else:
        ops.append(_gemm("mlp_up", rows, h_in, d.ffn, bpe, steps, fp8=lin, sac=0.0))
        if "bias" in eager and bias:  # a pass of its own; fused, it rides in the bias-GeLU kernel
            ops.append(_elementwise("mlp_bias_add", tokens * d.ffn, 2, 1, bpe, streaming=True))
        ops.append(_elementwise(model.activation, tokens * d.ffn, 2, 3, bpe))
    ops += [
        _gemm("mlp_down", rows, d.ffn, h_out, bpe, steps, fp8=lin, sac=0.0 if swiglu else 1.0),
        *_residual("mlp_residual", row, mask, bpe, impl["residual"], bias if "bias" in eager else 0.0),
    ]
    if model.is_moe:
        ops = _with_moe(ops, mlp_at, model, d, rows, bpe, (lin, lin and fp8.experts), impl["activation"],
                        expert_gemms, moe_permute, moe_dispatcher, moe_bias)
    if model.parallel_layers:
        ops = parallel_block(ops)
    if fp8:
        ops.append(_fp8_casts(ops, fp8))
    if weight_cast_shard is not None:
        params = linear_operands(ops, fp8_only=False)[2]
        fwd, bwd = WEIGHT_CAST_BYTES
        ops.append(Op("weight_casts", MEMORY, 0.0, 0.0, params * fwd / weight_cast_shard,
                      params * bwd / weight_cast_shard, streaming=True,
                      kernels=(_linear_count(model), _linear_count(model))))
    return ops


def _build(k: moe_mod.Kernel, bpe: int, fp8: bool, share=1.0, expert_gemms: str = GROUPED) -> Op:
    """An Op from a kernel shape of :mod:`parplan.cost.moe` or :mod:`parplan.cost.mla`; a GEMM over several
    experts is one launch (``BATCHED``: grouped, or over streams) or, with ``expert_gemms`` loop, one per expert."""
    if k.kind == "gemm":
        m, kk, n, batch = k.args
        grouped = "" if expert_gemms == LOOP or (isinstance(batch, (int, float)) and batch == 1) else expert_gemms
        op = replace(_gemm(k.name, m, kk, n, bpe, batch, kind=BATCHED if grouped else MATMUL, fp8=fp8 and k.linear),
                     grouped=grouped)
    elif k.kind == "traffic":
        op = _traffic_op(k.name, *k.args, bpe)   # family, implementation, elements
    elif k.kind == "streaming":   # eager streaming kernels: elements moved, their family, launches
        fwd, bwd, family, *launches = k.args
        op = Op(k.name, MEMORY, 0.0, 0.0, fwd * bpe, bwd * bpe, streaming=True, kernels=tuple(launches), family=family)
    else:
        fwd, bwd = k.args
        op = Op(k.name, MEMORY, 0.0, 0.0, fwd * bpe, bwd * bpe)
    return op if isinstance(share, float) and share == 1.0 else replace(op, share=share)


build_kernel = _build  # the public name (serving's absorbed latent-attention products)
DENSE_LINEAR = ("qkv_proj", "out_proj", "mlp_gate_up", "mlp_up", "mlp_down", "qkv_mlp_proj")
MLP_OPS = ("mlp_gate_up", "mlp_up", "swiglu", "gelu", "relu", "mlp_bias_add", "mlp_down")


def _with_moe(ops: list[Op], at: int, model: ModelSpec, d: LocalDims, rows, bpe: int, fp8: tuple[bool, bool],
              activation: str, expert_gemms: str = GROUPED, permute: str = "fused",
              dispatcher: str = "none", bias: str = "fused") -> list[Op]:
    """The layer's ops with the MoE block (:mod:`parplan.cost.moe`) in the dense MLP's place, each run by
    the share of the layers that are MoE; the dense MLP's ops run by the rest (dropped when none is). ``fp8``:
    (the linears run in FP8, the routed experts' GEMMs do too)."""
    s = moe_mod.share(model, d)
    dense_share = 1.0 - np.asarray(s, float)
    keep = not (np.ndim(dense_share) == 0 and float(dense_share) == 0.0)
    out = []
    for i, o in enumerate(ops):
        if i == at:
            out += [_build(k, bpe, fp8[1] if k.name.startswith("expert_") else fp8[0], s, expert_gemms)
                    for k in moe_mod.block_kernels(model, d, rows, activation, permute=permute,
                                                   dispatcher=dispatcher, bias=bias)]
        if o.name in MLP_OPS:
            if keep:
                out.append(replace(o, share=dense_share))
            continue
        out.append(o)
    return out


def _linear_count(model: ModelSpec) -> int:
    return 4 + (3 if model.activation == "swiglu" else 2)


def linear_operands(ops: list[Op], fp8_only: bool = True):
    """Elements of one layer's linear-layer operands, each GEMM's weighted by the share of layers that run it:
    (inputs, output gradients, weights) = the sums of ``m k``, ``m n`` and ``k n`` over its weight GEMMs (a
    grouped GEMM's times its experts), the four dense ones, an MoE layer's routed and shared experts and
    latent attention's projections alike; ``fp8_only``: only those that run in FP8. The dense GEMMs'
    ``batch`` are 2D tensor parallelism's SUMMA steps over one local operand, so they count once."""
    inputs = grads = weights = 0.0
    for o in ops:
        if o.gemm is None or o.kind == FLASH or o.attention_core or (fp8_only and not o.fp8):
            continue
        m, k, n, batch = o.gemm
        times = o.share * (1.0 if o.name in DENSE_LINEAR else batch)
        inputs, grads, weights = inputs + times * m * k, grads + times * m * n, weights + times * k * n
    return inputs, grads, weights


def _fp8_casts(ops: list[Op], fp8: Fp8) -> Op:
    """The casts of one layer's FP8 GEMM operands (:data:`FP8_CAST_BYTES`) over :func:`linear_operands`.

    Forward: each GEMM's input activation; backward: each GEMM's output gradient (with its transposed copy);
    weights once per micro-batch or step (held in FP8, ``params``: only their transposes, 1 byte read and 1
    written). An MoE layer casts its experts' routed rows (``k`` copies of each token) and weights.
    """
    fwd_b, bwd_b, w_b = FP8_CAST_BYTES[fp8.casts][:2] + ((2,) if fp8.params else FP8_CAST_BYTES[fp8.casts][2:])
    times = FP8_CAST_MULTIPLIER.get(fp8.recipe, 1)
    inputs, grads, weights = linear_operands(ops)
    weights = weights / fp8.weight_shard * fp8.weight_casts_per_microbatch
    launches = sum(o.share for o in ops if o.fp8) * (2 if fp8.casts == "separate" else 1)
    return Op("fp8_casts", MEMORY, 0.0, 0.0, times * (inputs * fwd_b + weights * w_b), times * grads * bwd_b,
              streaming=True, kernels=(launches, launches * (2 if fp8.casts == "amax-fused" else 1)))  # amax, cast


def _norm_op(name: str, model: ModelSpec, row, bpe: int, impl: str) -> Op:
    if impl == "fused" or model.norm == "layernorm":
        return _elementwise(name, row, 2, 3, bpe)
    return _traffic_op(name, model.norm, impl, row, bpe)


def _residual(name: str, row, mask: float, bpe: int, impl: str, bias: float = 1.0) -> list[Op]:
    """Bias + dropout + residual add after a row-parallel linear.

    Fused (one kernel): read the output, write the sum, and the 1-byte dropout mask. Eager: the
    bias add (read, write; backward: a read for the bias gradient) and the residual add (read two,
    write one) as plain passes, the accumulation of the residual stream's two gradients backward
    (read two, write one), and the dropout (read, write, write its mask; backward: read, read the
    mask, write) as its own kernel.
    """
    if impl == "fused":
        return [_elementwise(name, row, 2 + mask, 1 + mask, bpe, extra_fwd_bytes=row * mask,
                             extra_bwd_bytes=row * mask)]
    ops = [_elementwise(f"{name}_adds", row, 3 + 2 * bias, 3 + bias, bpe, streaming=True,
                        kernels=(1 + int(bias), 1 + int(bias)), family="residual")]
    if mask:
        ops.append(_elementwise(f"{name}_dropout", row, 2, 2, bpe, extra_fwd_bytes=row, extra_bwd_bytes=row))
    return ops


def embedding_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16") -> list[Op]:
    """The input embedding: a gather forward, a scatter-add into the table's gradient backward."""
    bpe = BYTES_PER_ELEMENT[dtype]
    elems = d.batch * d.seq * model.hidden / d.hidden_shard
    return [_elementwise("embedding", elems, 2, 3, bpe)]


def head_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16", loss: str = "vocab-parallel",
             norm: str = "fused") -> list[Op]:
    """Final norm, logits GEMM (vocab-parallel) and the softmax cross-entropy loss.

    ``loss``: ``vocab-parallel`` (Megatron: read 16-bit logits, write fp32, max/sum/exp passes in
    fp32 forward; read the fp32 softmax and write the 16-bit gradient backward), ``eager-fp32``
    (the logits upcast to fp32, then ``F.cross_entropy``) or ``fused`` (one kernel reading the
    logits, writing their gradient in place): :data:`parplan.cost.elementwise.LOSS_TRAFFIC`.
    """
    bpe = BYTES_PER_ELEMENT[dtype]
    tokens = d.batch * d.seq
    logits = tokens * d.vocab
    if loss == "vocab-parallel":
        ce = Op("cross_entropy", MEMORY, 0.0, 0.0, logits * (bpe + 3 * 4), logits * (4 + bpe))
    else:
        t = LOSS_TRAFFIC[loss]
        ce = Op("cross_entropy", MEMORY, 0.0, 0.0, logits * t.fwd_bytes * bpe / 2, logits * t.bwd_bytes * bpe / 2,
                streaming=loss == "eager-fp32", kernels=(t.fwd_kernels, t.bwd_kernels),
                family="loss" if loss == "eager-fp32" else "")
    return [
        _norm_op("final_norm", model, tokens * model.hidden / d.norm_shard, bpe, norm),
        _gemm("logits", tokens * d.gemm_row_gather, model.hidden / d.hidden_shard, d.vocab, bpe, d.gemm_steps),
        ce,
    ]


def mtp_own_ops(model: ModelSpec, d: LocalDims, dtype: str = "bf16", norm: str = "fused") -> list[Op]:
    """What one multi-token-prediction module runs beside its layer and the shared head (DeepSeek-V3, arXiv
    2412.19437 Sec. 2.2): the next token's embedding, an RMSNorm of it and of the hidden state, and the
    2h -> h projection of their concatenation (column-parallel over the tensor axis: 2h x h/t)."""
    bpe = BYTES_PER_ELEMENT[dtype]
    tokens = d.batch * d.seq
    row = tokens * model.hidden / d.norm_shard
    tp = model.heads / np.asarray(d.heads, float)
    return [_elementwise("mtp_embedding", tokens * model.hidden / d.hidden_shard, 2, 3, bpe),
            _norm_op("mtp_norms", model, 2 * row, bpe, norm),
            _gemm("mtp_projection", tokens * d.gemm_row_gather, 2 * model.hidden / d.hidden_shard,
                  model.hidden / tp, bpe, d.gemm_steps)]


def total(ops: list[Op], field: str):
    return sum((getattr(o, field) * o.share if _shared(o) else getattr(o, field) for o in ops), np.float64(0.0))


def _shared(o: Op) -> bool:
    """Whether an op runs in only a share of the layers (MoE models)."""
    return not (isinstance(o.share, float) and o.share == 1.0)
