"""Serving memory per device: weights, the KV cache of every sequence in flight, and the transient
activations of one pass; the largest batch that fits."""
from __future__ import annotations

import numpy as np

from ..cost.memory import DEFAULT_HEADROOM
from ..layouts.strategies.pipeline import stage_layers, stage_params
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.hardware import Hardware
from ..specs.model import ModelSpec, vocab_shard

# vLLM pads the vocabulary of its embedding and LM head to a multiple of 64 (DEFAULT_VOCAB_PADDING_SIZE,
# model_executor/layers/vocab_parallel_embedding.py).
VLLM_VOCAB_PADDING = 64


def activation_dtype(dtype: str) -> str:
    """Activations, collectives and attention run in 16 bits when the weights are fp8."""
    return "bf16" if dtype == "fp8" else dtype


def kv_heads_local(model: ModelSpec, tp: int) -> float:
    """KV heads per device: sharded by tp, replicated (one per device) when tp exceeds them."""
    return model.kv_heads / tp if model.kv_heads >= tp else 1.0


def weight_bytes(model: ModelSpec, tp: int, pp: int, dtype: str) -> float:
    """Weights per device: the busiest stage's parameters over tp (norms are a negligible replicated part)."""
    return stage_params(model, pp) * BYTES_PER_ELEMENT[dtype] / tp


def kv_bytes_per_token(model: ModelSpec, tp: int = 1, pp: int = 1, kv_dtype: str = "bf16") -> float:
    """KV-cache bytes one token of context costs one device: K and V of its KV heads in each of its layers; with
    latent attention the latent and rotary key, whole on every tensor-parallel rank (parplan.cost.mla)."""
    if model.mla:
        return float(stage_layers(model, pp)) * (model.kv_lora_rank + model.qk_rope_dim) * BYTES_PER_ELEMENT[kv_dtype]
    return 2.0 * stage_layers(model, pp) * kv_heads_local(model, tp) * model.head_dim * BYTES_PER_ELEMENT[kv_dtype]


def kv_cache_bytes(model: ModelSpec, tp: int, pp: int, batch, context, kv_dtype: str = "bf16"):
    """KV cache per device for ``batch`` sequences of ``context`` tokens."""
    return np.asarray(batch, float) * np.asarray(context, float) * kv_bytes_per_token(model, tp, pp, kv_dtype)


def tp_allreduce_bytes_per_layer(model: ModelSpec, tokens, dtype: str = "bf16"):
    """Bytes all-reduced per layer under 1D TP: two (tokens x hidden) activations."""
    return 2.0 * np.asarray(tokens, float) * model.hidden * BYTES_PER_ELEMENT[activation_dtype(dtype)]


def workspace_bytes(model: ModelSpec, tp: int, tokens, logit_rows, dtype: str = "bf16"):
    """Transient activations of one pass: residual, norm output, QKV, MLP intermediates, fp32 logits."""
    bpe = BYTES_PER_ELEMENT[activation_dtype(dtype)]
    q = model.heads / tp * model.head_dim
    kv = kv_heads_local(model, tp) * model.head_dim
    ffn = model.ffn_hidden / tp
    mlp = (3 if model.activation == "swiglu" else 2) * ffn
    per_token = (3 * model.hidden + q + 2 * kv + mlp) * bpe
    return np.asarray(tokens, float) * per_token + np.asarray(logit_rows, float) * vocab_shard(model.vocab, tp, VLLM_VOCAB_PADDING) * 4


def memory_per_device(model: ModelSpec, tp: int, pp: int, batch, input_len: int, output_len: int,
                      dtype: str = "bf16", kv_dtype: str | None = None, kv_block_tokens: int = 1) -> dict:
    """Bytes per device: weights, KV cache (batch x (input+output) tokens, in whole blocks of
    ``kv_block_tokens``), workspace, total."""
    kv_dtype = kv_dtype or activation_dtype(dtype)
    batch = np.asarray(batch, float)
    weights = weight_bytes(model, tp, pp, dtype)
    context = np.ceil((input_len + output_len) / kv_block_tokens) * kv_block_tokens
    kv = kv_cache_bytes(model, tp, pp, batch, context, kv_dtype)
    micro = np.ceil(batch / np.minimum(pp, batch))
    work = np.maximum(workspace_bytes(model, tp, input_len, 1, dtype), workspace_bytes(model, tp, micro, micro, dtype))
    return {"weights": weights + 0 * batch, "kv_cache": kv, "workspace": work, "total": weights + kv + work}


MAX_BATCH = 1 << 20


def max_batch(model: ModelSpec, hw: Hardware, tp: int, pp: int, input_len: int, output_len: int,
              dtype: str = "bf16", kv_dtype: str | None = None, headroom: float = DEFAULT_HEADROOM,
              kv_block_tokens: int = 1) -> int:
    """The most sequences in flight per replica whose weights, KV cache and workspace fit (0: none fits)."""
    usable = hw.hbm_bytes * (1 - headroom)

    def fits(b: int) -> bool:
        return float(memory_per_device(model, tp, pp, b, input_len, output_len, dtype, kv_dtype,
                                       kv_block_tokens)["total"]) <= usable

    if not fits(1):
        return 0
    lo = 1
    while lo < MAX_BATCH and fits(min(2 * lo, MAX_BATCH)):
        lo = min(2 * lo, MAX_BATCH)
    hi = min(2 * lo, MAX_BATCH + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
