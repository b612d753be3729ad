"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, Sec. 2.1; DeepSeek-V3, arXiv 2412.19437,
Sec. 2.1.1): its projections as kernel shapes, its attention FLOPs and its KV cache.

Training and prefill run the projections as written (Megatron-Core's ``MLASelfAttention``): the query
through a down projection to ``q_lora_rank``, an RMSNorm and an up projection to every head's
``nope + rope`` dims (or one projection without ``q_lora_rank``); the keys and values from one
down projection to the ``kv_lora_rank`` latent plus a shared ``rope``-dim key, an RMSNorm, and an
up projection to every head's ``nope`` key and ``v_head_dim`` value. The down projections are not
split by tensor parallelism (every TP rank computes them); the up projections and the heads are.
Attention then costs ``2 b a s s_kv (d_qk + d_v)`` FLOPs forward (the scores over the ``d_qk =
nope + rope`` dims, the context over ``d_v``).

Decode with the up projections absorbed (DeepSeek-V2 Sec. 2.1.2; vLLM's and SGLang's MLA kernels)
keeps only the latent and the rotary key per token: ``kv_lora_rank + rope`` elements per layer,
not split by tensor parallelism (every rank holds the whole latent). Each head scores its query
against the ``kv_lora_rank + rope`` latent and forms its context in the ``kv_lora_rank`` latent:
``2 (2 c + rope)`` FLOPs per head per cached token; the query's ``nope`` part is first multiplied
into the latent space (``nope x c`` per head) and the context out of it (``c x v`` per head).
"""
from __future__ import annotations

import numpy as np

from ..specs.model import ModelSpec
from .moe import Kernel


# The up projections (a query without q_lora_rank has one projection instead), which Megatron-Core's
# --recompute-modules mla_up_proj runs again with the rotary embedding before the attention's backward.
UP_PROJECTIONS = ("q_up", "q_proj", "kv_up")


def projection_kernels(model: ModelSpec, d, rows) -> list[Kernel]:
    """The query, key and value projections of one layer on one device, per micro-batch (training, prefill)."""
    h, c, rope = model.hidden, model.kv_lora_rank, model.qk_rope_dim
    heads = d.heads
    qk, v = model.head_dim, model.v_dim
    out = []
    if model.q_lora_rank:
        out += [Kernel("q_down", "gemm", (rows, h, model.q_lora_rank, 1), True),
                Kernel("q_norm", "traffic", ("rmsnorm", "fused", rows * model.q_lora_rank)),
                Kernel("q_up", "gemm", (rows, model.q_lora_rank, heads * qk, 1), True)]
    else:
        out.append(Kernel("q_proj", "gemm", (rows, h, heads * qk, 1), True))
    out += [Kernel("kv_down", "gemm", (rows, h, c + rope, 1), True),
            Kernel("kv_norm", "traffic", ("rmsnorm", "fused", rows * c)),
            Kernel("kv_up", "gemm", (rows, c, heads * (qk - rope + v), 1), True)]
    return out


def attention_flops(d, model: ModelSpec):
    """Forward FLOPs of the attention core: scores over ``d_qk`` and context over ``d_v``, per device."""
    causal = 0.5 if d.causal else 1.0
    return 2.0 * d.batch * d.heads * d.seq * d.seq_kv * (model.head_dim + model.v_dim) * causal


def attention_io_elems(d, model: ModelSpec):
    """Elements the fused attention kernel reads and writes forward: q, k (d_qk each), v and the output (d_v)."""
    return d.batch * d.seq * d.heads * (2 * model.head_dim + 2 * model.v_dim)


def kv_elems_per_token(model: ModelSpec):
    """Cached elements per token per layer with the absorbed decode: the latent and the shared rotary key."""
    return model.kv_lora_rank + model.qk_rope_dim


def decode_flops(model: ModelSpec, batch, heads, context):
    """Absorbed decode attention: ``2 (2 c + rope)`` FLOPs per head per cached token."""
    c, rope = model.kv_lora_rank, model.qk_rope_dim
    return 2.0 * np.asarray(batch, float) * heads * np.asarray(context, float) * (2 * c + rope)


def absorbed_kernels(model: ModelSpec, batch, heads) -> list[Kernel]:
    """The decode step's extra products of the absorbed form: each head's nope query into the latent, and
    its latent context out to its value dims (batched over the heads)."""
    c, nope, v = model.kv_lora_rank, model.head_dim - model.qk_rope_dim, model.v_dim
    return [Kernel("mla_q_absorb", "gemm", (batch, nope, c, heads)),
            Kernel("mla_v_absorb", "gemm", (batch, c, v, heads))]
