"""The kernels of one serving pass on one device: a prefill of whole prompts or one decode step.

Prefill runs the training layer's kernels forward (:func:`parplan.cost.ops.layer_ops`); a decode step
replaces fused attention by reads of the KV cache (:func:`decode_attention_op`), appends the new
tokens' K and V (or, with latent attention, the latent) to the cache, and decodes latent attention
in its absorbed form. The serving stack (:mod:`parplan.step.serve_software`) decides the element-wise
kernels and how the decode kernel splits the context.
"""
from __future__ import annotations

import numpy as np

from ..cost import mla as mla_mod, ops as ops_mod
from ..layouts.layout import Layout
from ..layouts.strategies import strategies_for
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.model import ModelSpec, vocab_shard
from .serve_memory import VLLM_VOCAB_PADDING, activation_dtype
from . import serve_software as ssw


def serving_layout(tp: int, pp: int, replicas: int = 1, ep: int | None = None) -> Layout:
    """The mesh the strategies see for one replica: tensor parallel inside, the pipeline next to it;
    no sequence parallel, and every TP rank sends its stage's whole activation on (as vLLM's
    pipeline does). ``ep`` (MoE models): the experts over ``ep`` of the tp devices, each ``tp / ep`` ways
    tensor-parallel."""
    axes = () if ep is None else (("ep", ep), ("etp", tp // ep))
    return Layout(tp=tp, pp=pp, dp=replicas, order=("tp", "cp", "pp", "dp"), axes=axes)


def _dims(model: ModelSpec, tp: int, seqs, seq, seq_kv, causal: bool, ep: int = 1) -> ops_mod.LocalDims:
    """Per-device shapes of one pass, as the strategies shard them; the vocabulary padded as vLLM pads it."""
    layout = serving_layout(tp, 1, ep=ep if model.is_moe else None)
    fields = dict(batch=np.asarray(seqs, float), seq=np.asarray(seq, float), seq_kv=np.asarray(seq_kv, float),
                  hidden=model.hidden, heads=model.heads, kv_heads=model.kv_heads, head_dim=model.head_dim,
                  ffn=model.ffn_hidden, vocab=model.vocab, norm_shard=1, hidden_shard=1, causal=causal)
    for s in strategies_for(layout):
        fields = s.local_dims(fields, model, layout)
    fields["vocab"] = vocab_shard(model.vocab, tp, VLLM_VOCAB_PADDING)
    return ops_mod.LocalDims(**fields)


def decode_attention_op(model: ModelSpec, d: ops_mod.LocalDims, dtype: str, kv_dtype: str,
                        compute_units: int = 1, software=None) -> ops_mod.Op:
    """One decode step's attention: each sequence's new query against its whole KV cache.

    FLOPs ``4 * batch * heads * context * head_dim`` (scores and context); bytes: the
    K and V cache read (``kv_dtype``) plus the query and output. The query heads
    sharing a KV head form the GEMM rows, and the context is split into chunks of at
    least 256 keys until every compute unit has work (Flash-Decoding, Dao et al. 2023;
    vLLM's paged attention v2 does the same), so one sequence does not run on one unit. A serving
    stack splits as its kernel does (:func:`parplan.step.serve_software.decode_splits`) and pays the
    split's fp32 partial outputs.
    """
    act = BYTES_PER_ELEMENT[activation_dtype(dtype)]
    if model.mla:  # absorbed: every head scores and reads the one cached latent (an MQA of kv_lora + rope dims)
        latent = mla_mod.kv_elems_per_token(model)
        flops = mla_mod.decode_flops(model, d.batch, d.heads, d.seq_kv)
        nbytes = d.batch * d.seq_kv * latent * BYTES_PER_ELEMENT[kv_dtype] + d.batch * 2 * d.heads * latent * act
        units = d.batch
        splits = np.clip(np.ceil(compute_units / units), 1, np.maximum(1, np.ceil(d.seq_kv / 256)))
        return ops_mod.Op("decode_attention", ops_mod.FLASH, flops, 0.0, nbytes, 0.0,
                          (d.heads, latent, d.seq_kv / splits, units * splits), True)
    flops = 4.0 * d.batch * d.heads * d.seq_kv * d.head_dim
    nbytes = d.batch * d.seq_kv * 2 * d.kv_heads * d.head_dim * BYTES_PER_ELEMENT[kv_dtype] + \
        d.batch * 2 * d.heads * d.head_dim * act
    group = d.heads / d.kv_heads
    units = d.batch * d.kv_heads
    splits = ssw.decode_splits(software, units, group, d.seq_kv, d.head_dim, compute_units)
    kernels = (1, 1)
    if software is not None:
        nbytes = nbytes + ssw.split_traffic_bytes(splits, units, group, d.head_dim)
        kernels = (np.where(splits > 1, software.stack.decode_attention.split_kernels, 1), 1)
    return ops_mod.Op("decode_attention", ops_mod.FLASH, flops, 0.0, nbytes, 0.0,
                      (group, d.head_dim, d.seq_kv / splits, units * splits), True, kernels=kernels)


def _kv_write_op(d: ops_mod.LocalDims, dtype: str, kv_dtype: str, model: ModelSpec | None = None) -> ops_mod.Op:
    """Appending the new tokens' K and V to the cache (read from the QKV output, write in kv_dtype); with latent
    attention, the latent and rotary key."""
    elems = d.batch * d.seq * (mla_mod.kv_elems_per_token(model) if model is not None and model.mla else
                               2 * d.kv_heads * d.head_dim)
    nbytes = elems * (BYTES_PER_ELEMENT[activation_dtype(dtype)] + BYTES_PER_ELEMENT[kv_dtype])
    return ops_mod.Op("kv_cache_write", ops_mod.MEMORY, 0.0, 0.0, nbytes, 0.0)


def pass_ops(model: ModelSpec, tp: int, phase: str, seqs, tokens_per_seq, context, dtype: str,
             kv_dtype: str, compute_units: int = 1, ep: int = 1, software=None) -> list[ops_mod.Op]:
    """The ops of one layer on one device for a prefill (``tokens_per_seq`` prompt tokens) or a decode step."""
    act = activation_dtype(dtype)
    elementwise = None if software is None else software.elementwise
    if phase == "prefill":
        d = _dims(model, tp, seqs, tokens_per_seq, tokens_per_seq, True, ep)
        ops = ops_mod.layer_ops(model, d, act, flash_attention=True, dropout=False, elementwise=elementwise)
    else:
        d = _dims(model, tp, seqs, 1, context, False, ep)
        ops = [decode_attention_op(model, d, dtype, kv_dtype, compute_units, software) if o.kind == ops_mod.FLASH
               else o for o in ops_mod.layer_ops(model, d, act, flash_attention=True, dropout=False,
                                                 elementwise=elementwise)]
    at = next(i for i, o in enumerate(ops) if o.kind == ops_mod.FLASH)
    absorbed = []
    if model.mla and phase == "decode":  # the cached latent is not expanded: kv_up's weights are the absorbed products'
        absorbed = [ops_mod.build_kernel(k, BYTES_PER_ELEMENT[act], False) for k in
                    mla_mod.absorbed_kernels(model, d.batch, d.heads)]
        ops = [o for o in ops if o.name != "kv_up"]
        at = next(i for i, o in enumerate(ops) if o.kind == ops_mod.FLASH)
    return ops[:at] + [_kv_write_op(d, dtype, kv_dtype, model)] + absorbed + ops[at:]
