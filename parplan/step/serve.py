"""Inference: prefill, decode, the KV cache and serving throughput of one layout.

A serving layout is ``replicas`` copies of the model (data parallel, no
communication between them), each split over ``tp`` x ``pp`` devices, each
replica holding ``batch`` sequences in flight (continuous batching). A request
has ``input_len`` prompt tokens and generates ``output_len`` tokens.

* **Prefill** runs the prompt through the model once: the training forward's ops
  (``parplan.ops.layer_ops``) for ``input_len`` tokens of one sequence, no
  dropout, FlashAttention, and the logits of the last position only. Its GEMMs
  have ``m = input_len``: compute-bound. Every GEMM is timed as the faster of a plain
  and a split-K launch (``parplan.cost.kernels.gemm_time_s``). TTFT is the prefill of one request's
  prompt through every stage (queueing ignored).
* **Decode** produces one token for each of the ``batch`` sequences: the same
  GEMMs with ``m = batch`` — at small batch each reads all local weights for a
  few rows of work, memory-bound through ``roofline.matmul_time_s`` — and an
  attention that reads the KV cache of every sequence (memory-bound: it does
  ``2 * heads / kv_heads`` FLOPs per KV element). TPOT is one decode step at the
  average context ``input_len + output_len / 2``.
* **Tensor parallel** (Megatron 1D, Shoeybi et al. 2019) keeps its 2 all-reduces
  of the ``(tokens, hidden)`` activation per layer, plus one for the
  vocab-parallel embedding and an all-gather of the vocab-parallel logits; their
  bytes grow with ``batch * hidden`` while the decode GEMMs barely grow with
  the batch, so at large batch the all-reduces dominate — sooner over PCIe
  than NVLink (``decode_breakdown``, ``comm_crossover_batch``).
* **Pipeline parallel** splits the layers into ``pp`` stages with a send of the
  activation between stages. A token's latency is the sum over stages; with
  ``min(pp, batch)`` micro-batches of ``batch / pp`` sequences in flight every
  stage stays busy, so a decode round is
  ``max(sum over stages, micro-batches x busiest stage)``.
* **Continuous batching throughput**: over one request's lifetime each of the
  ``batch`` slots is refilled once, so a replica spends ``output_len * TPOT``
  on decode and ``batch`` prefills (on its busiest stage) per ``batch *
  output_len`` generated tokens (prefills not overlapped with decode: the
  known remedies, chunked prefill piggy-backing and prefill/decode
  disaggregation, are not modelled). ``itl_s`` is the resulting
  inter-token latency a user sees; ``tpot_s`` the decode step itself.
* **Memory per device**: the weights of the busiest stage over ``tp``; the KV
  cache of ``batch`` sequences of ``input_len + output_len`` tokens (K and V of
  ``kv_heads * head_dim`` per layer per token, ``kv_dtype`` bytes, KV heads
  sharded by ``tp`` and replicated when ``tp`` exceeds them); and an activation
  workspace (the largest transient activations of one prefill or one decode
  step). It fits within HBM less the headroom.

Weights in fp8 run their GEMMs at the fp8 rate; activations, all-reduces and
attention then stay 16-bit (what FP8 serving engines do).

A mixture-of-experts model (:mod:`parplan.cost.moe`): a decode step reads the weights of only the
experts some token of the batch selects, ``E (1 - (1 - k/E)^B)`` of them for ``B`` tokens under
a router that picks uniformly (``distinct_experts``), so the weight reads grow with the batch
toward all ``E``. Its experts are split over each stage's ``tp`` devices either by tensor
parallelism (``ep = 1``: every device a slice of every expert) or by expert parallelism (``ep =
tp``: whole experts, ``experts / ep`` per device; vLLM ``--enable-expert-parallel``); the tokens
are replicated over the tensor-parallel ranks, so the experts' partial outputs are summed by the
layer's tensor-parallel all-reduce either way. Latent attention (:mod:`parplan.cost.mla`) caches
``kv_lora_rank + rope`` elements per token and layer on every device and decodes in the absorbed form.

Every function accepts a numpy array of batch sizes where it takes ``batch``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..cost import mla as mla_mod, moe as moe_mod, ops as ops_mod
from ..layouts.layout import Layout
from ..layouts.strategies import Context, stages_of, strategies_for
from ..layouts.strategies.pipeline import stage_layers
from .comms import link_sum, price_collectives
from ..cost.memory import DEFAULT_HEADROOM
from ..cost.kernels import gemm_time_s, op_times
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.cluster import Cluster
from ..specs.hardware import Hardware
from ..specs.model import ModelSpec, vocab_shard
from ..cost.roofline import memory_time_s
from .serve_layout import ServeLayout, check_serve_layout, context_notes
from .serve_memory import VLLM_VOCAB_PADDING, activation_dtype, max_batch, memory_per_device

DECODE_KEYS = ("matmul", "attention", "tp_comm", "other", "pp_comm", "pipeline_wait")
PREFILL_KEYS = ("matmul", "attention", "tp_comm", "other", "pp_comm")


@dataclass(frozen=True)
class InferenceEstimate:
    model: ModelSpec
    cluster: Cluster
    layout: ServeLayout
    ttft_s: Any
    tpot_s: Any
    itl_s: Any
    tokens_per_s: Any                 # generated tokens per second, all replicas
    tokens_per_s_per_device: Any
    tokens_per_s_per_user: Any        # 1 / TPOT
    request_latency_s: Any            # TTFT + (output_len - 1) * ITL
    prefill_busy_s: Any               # prefill time on the busiest stage (what one prefill costs a replica)
    kv_cache_bytes: Any               # per device
    memory_bytes: dict
    fits: Any
    max_batch: int
    prefill_breakdown_s: dict
    decode_breakdown_s: dict
    tp_allreduce_bytes_per_layer: Any  # decode step
    headroom: float = DEFAULT_HEADROOM
    notes: tuple[str, ...] = ()        # what the numbers assume that a reader should know
    prefill_ops: list = field(default_factory=list)
    decode_ops: list = field(default_factory=list)


# --------------------------------------------------------------------------- shapes and memory


# --------------------------------------------------------------------------- timing one pass


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
                        compute_units: int = 1) -> ops_mod.Op:
    """One decode step's attention: each sequence's new query against its whole KV cache.

    FLOPs ``4 * batch * heads * context * head_dim`` (scores and context); bytes: the
    K and V cache read (``kv_dtype``) plus the query and output. The query heads
    sharing a KV head form the GEMM rows, and the context is split into chunks of at
    least 256 keys until every compute unit has work (Flash-Decoding, Dao et al. 2023;
    vLLM's paged attention v2 does the same), so one sequence does not run on one unit.
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
    splits = np.clip(np.ceil(compute_units / units), 1, np.maximum(1, np.ceil(d.seq_kv / 256)))
    return ops_mod.Op("decode_attention", ops_mod.FLASH, flops, 0.0, nbytes, 0.0,
                      (group, d.head_dim, d.seq_kv / splits, units * splits), True)


def _kv_write_op(d: ops_mod.LocalDims, dtype: str, kv_dtype: str, model: ModelSpec | None = None) -> ops_mod.Op:
    """Appending the new tokens' K and V to the cache (read from the QKV output, write in kv_dtype); with latent
    attention, the latent and rotary key."""
    elems = d.batch * d.seq * (mla_mod.kv_elems_per_token(model) if model is not None and model.mla else
                               2 * d.kv_heads * d.head_dim)
    nbytes = elems * (BYTES_PER_ELEMENT[activation_dtype(dtype)] + BYTES_PER_ELEMENT[kv_dtype])
    return ops_mod.Op("kv_cache_write", ops_mod.MEMORY, 0.0, 0.0, nbytes, 0.0)


def pass_ops(model: ModelSpec, tp: int, phase: str, seqs, tokens_per_seq, context, dtype: str,
             kv_dtype: str, compute_units: int = 1, ep: int = 1) -> list[ops_mod.Op]:
    """The ops of one layer on one device for a prefill (``tokens_per_seq`` prompt tokens) or a decode step."""
    act = activation_dtype(dtype)
    if phase == "prefill":
        d = _dims(model, tp, seqs, tokens_per_seq, tokens_per_seq, True, ep)
        ops = ops_mod.layer_ops(model, d, act, flash_attention=True, dropout=False)
    else:
        d = _dims(model, tp, seqs, 1, context, False, ep)
        ops = [decode_attention_op(model, d, dtype, kv_dtype, compute_units) if o.kind == ops_mod.FLASH else o
               for o in ops_mod.layer_ops(model, d, act, flash_attention=True, dropout=False)]
    at = next(i for i, o in enumerate(ops) if o.kind == ops_mod.FLASH)
    absorbed = []
    if model.mla and phase == "decode":  # the cached latent is not expanded: kv_up's weights are the absorbed products'
        absorbed = [ops_mod.build_kernel(k, BYTES_PER_ELEMENT[act], False) for k in
                    mla_mod.absorbed_kernels(model, d.batch, d.heads)]
        ops = [o for o in ops if o.name != "kv_up"]
        at = next(i for i, o in enumerate(ops) if o.kind == ops_mod.FLASH)
    return ops[:at] + [_kv_write_op(d, dtype, kv_dtype, model)] + absorbed + ops[at:]


def _op_time(hw: Hardware, op: ops_mod.Op, dtype: str):
    """Forward seconds of one op: GEMMs at the weights' dtype (split-K where it pays), the rest at the
    activations'."""
    gemm = op.kind in (ops_mod.MATMUL, ops_mod.BATCHED)
    return op_times(hw, op, dtype if gemm else activation_dtype(dtype), split_k=True)[0]


def _category(op: ops_mod.Op) -> str:
    if op.kind in (ops_mod.MATMUL, ops_mod.BATCHED):
        return "matmul"
    return "attention" if op.kind == ops_mod.FLASH else "other"


@dataclass(frozen=True)
class PassCost:
    """One pass (prefill of one request, or one decode step of ``seqs`` sequences) on one replica."""

    layer: dict            # per layer on one device: matmul, attention, other, tp_comm (seconds)
    embedding: dict        # first stage: other, tp_comm
    head: dict             # last stage: matmul, other, tp_comm
    p2p_s: Any             # one stage-to-stage send
    tp_bytes_per_layer: Any
    ops: list
    op_times: list

    @property
    def layer_s(self):
        return sum(self.layer.values())

    def total(self, model: ModelSpec, pp: int):
        """Sum over the stages (one micro-batch's trip through the pipeline)."""
        return model.layers * self.layer_s + sum(self.embedding.values()) + sum(self.head.values()) + \
            (pp - 1) * self.p2p_s

    def busiest(self, model: ModelSpec, pp: int):
        """Time of the busiest stage."""
        emb, head = sum(self.embedding.values()), sum(self.head.values())
        ends = emb + head if pp == 1 else np.maximum(emb, head)
        return stage_layers(model, pp) * self.layer_s + ends + (self.p2p_s if pp > 1 else 0.0)

    def parts(self, model: ModelSpec, pp: int) -> dict:
        """``total`` split into matmul, attention, tp_comm, other and pp_comm."""
        out = {k: model.layers * self.layer[k] for k in ("matmul", "attention", "tp_comm", "other")}
        for d in (self.embedding, self.head):
            for k, v in d.items():
                out[k] = out[k] + v
        out["pp_comm"] = (pp - 1) * self.p2p_s
        return out


def pass_cost(model: ModelSpec, cluster: Cluster, tp: int, pp: int, phase: str, seqs, tokens_per_seq, context,
              dtype: str = "bf16", kv_dtype: str | None = None, ep: int = 1) -> PassCost:
    """Time of one prefill or decode pass on one replica, per layer and for the embedding/head."""
    hw = cluster.hardware
    kv_dtype = kv_dtype or activation_dtype(dtype)
    act = activation_dtype(dtype)
    abpe = BYTES_PER_ELEMENT[act]
    seqs = np.asarray(seqs, float)
    ops = pass_ops(model, tp, phase, seqs, tokens_per_seq, context, dtype, kv_dtype, hw.compute_units, ep)
    times = [_op_time(hw, o, dtype) for o in ops]
    layer = {"matmul": np.float64(0.0), "attention": np.float64(0.0), "other": np.float64(0.0)}
    for o, t in zip(ops, times):
        layer[_category(o)] = layer[_category(o)] + t
    tokens = seqs * (tokens_per_seq if phase == "prefill" else 1)
    act_bytes = tokens * model.hidden * abpe
    # The strategies' forward collectives of this pass: per layer (TP's two all-reduces), on the first
    # stage (the vocab-parallel embedding's all-reduce), on the last (the logits' gather) and between
    # stages (the pipeline's send).
    comm = _forward_collectives(model, cluster, tp, pp, phase, seqs, tokens_per_seq, act, ep)
    layer["tp_comm"] = link_sum(comm, lambda c: c.per == "layer")
    # Embedding: a gather of the tokens' rows; vocab-parallel under TP, summed by an all-reduce.
    embedding = {"other": memory_time_s(hw, 2.0 * act_bytes),
                 "tp_comm": link_sum(comm, lambda c: c.per == "microbatch" and c.stage == "first")}
    # Head: final norm and logits for the positions that sample (the last prompt token; every decode token).
    rows = seqs
    vocab_local = vocab_shard(model.vocab, tp, VLLM_VOCAB_PADDING)
    head = {
        "matmul": gemm_time_s(hw, rows, model.hidden, vocab_local, dtype, split_k=True),
        "other": memory_time_s(hw, 3.0 * rows * model.hidden * abpe) + memory_time_s(hw, rows * vocab_local * 4.0),
        "tp_comm": link_sum(comm, lambda c: c.per == "microbatch" and c.stage == "last"),
    }
    p2p = link_sum(comm, lambda c: c.per == "microbatch" and c.stage == "all")
    return PassCost(layer, embedding, head, p2p, 2.0 * act_bytes, ops, times)


def _forward_collectives(model: ModelSpec, cluster: Cluster, tp: int, pp: int, phase: str, seqs, tokens_per_seq,
                         act_dtype: str, ep: int = 1) -> list:
    """The priced forward collectives the strategies issue for one prefill or decode micro-batch."""
    layout = serving_layout(tp, pp, ep=ep if model.is_moe else None)
    strategies = strategies_for(layout)
    dims = _dims(model, tp, seqs, tokens_per_seq if phase == "prefill" else 1, 1, phase == "prefill", ep)
    stages = stages_of(strategies)
    ctx = Context(model=model, cluster=cluster, layout=layout, dims=dims, bpe=BYTES_PER_ELEMENT[act_dtype],
                  seq=tokens_per_seq, stage_layers=stages.stage_layers(model, layout), micro_batches=1,
                  layer_params=model.layer_params(), stage_params=stages.stage_params(model, layout),
                  recompute=np.asarray(0), sampling=True)
    return [c for c in price_collectives(strategies, ctx) if c.collective.phase == "forward"]


# --------------------------------------------------------------------------- the estimate


def estimate_inference(model: ModelSpec, cluster: Cluster, layout: ServeLayout, *,
                       headroom: float = DEFAULT_HEADROOM, check: bool = True) -> InferenceEstimate:
    """Predict TTFT, TPOT, throughput and memory of serving ``model`` on ``cluster`` under ``layout``.

    With ``check=False`` ``layout.batch`` may be a numpy array of batch sizes.
    """
    if check:
        layout = check_serve_layout(layout, model, cluster)
    tp, pp, dtype, kv = layout.tp, layout.pp, layout.dtype, layout.kv
    I, O = layout.input_len, layout.output_len
    b = np.asarray(layout.batch, float)

    # ---- prefill of one request
    pre = pass_cost(model, cluster, tp, pp, "prefill", 1, I, I, dtype, kv, layout.ep)
    ttft = pre.total(model, pp)
    prefill_busy = pre.busiest(model, pp)
    prefill_parts = pre.parts(model, pp)

    # ---- one decode round: min(pp, b) micro-batches of ceil(b / that) sequences
    micro = np.minimum(pp, b)
    mb = np.ceil(b / micro)
    context = I + O / 2.0
    dec = pass_cost(model, cluster, tp, pp, "decode", mb, 1, context, dtype, kv, layout.ep)
    trip = dec.total(model, pp)
    tpot = np.maximum(trip, micro * dec.busiest(model, pp))
    decode_parts = dec.parts(model, pp)
    decode_parts["pipeline_wait"] = tpot - trip

    # ---- continuous batching
    cycle = O * tpot + b * prefill_busy
    per_replica = b * O / cycle
    tokens_per_s = per_replica * layout.replicas
    itl = tpot + (b - 1) * prefill_busy / O

    mem = memory_per_device(model, tp, pp, b, I, O, dtype, kv)
    usable = cluster.hardware.hbm_bytes * (1 - headroom)
    return InferenceEstimate(
        model=model, cluster=cluster, layout=layout,
        ttft_s=ttft, tpot_s=tpot, itl_s=itl,
        tokens_per_s=tokens_per_s,
        tokens_per_s_per_device=tokens_per_s / layout.devices,
        tokens_per_s_per_user=1.0 / tpot,
        request_latency_s=ttft + (O - 1) * itl,
        prefill_busy_s=prefill_busy,
        kv_cache_bytes=mem["kv_cache"],
        memory_bytes=mem,
        fits=mem["total"] <= usable,
        max_batch=max_batch(model, cluster.hardware, tp, pp, I, O, dtype, kv, headroom),
        prefill_breakdown_s=prefill_parts,
        decode_breakdown_s=decode_parts,
        tp_allreduce_bytes_per_layer=dec.tp_bytes_per_layer,
        headroom=headroom,
        notes=context_notes(model, I + O) + _moe_notes(model, mb, tp, layout.ep),
        prefill_ops=list(zip(pre.ops, pre.op_times)),
        decode_ops=list(zip(dec.ops, dec.op_times)),
    )


def _moe_notes(model: ModelSpec, seqs, tp: int, ep: int) -> tuple[str, ...]:
    """How many experts a decode step reads, and the assumption behind it."""
    if not model.is_moe:
        return ()
    touched = float(np.max(moe_mod.distinct_experts(model.experts, model.top_k, seqs)))
    return (f"decode reads the weights of {touched:.1f} of the {model.experts} experts per MoE layer at batch "
            f"{int(np.max(seqs))} (E (1 - (1 - k/E)^B): each token's top-{model.top_k} spread uniformly); "
            + ("experts tensor-parallel over the tp devices" if ep == 1 else f"whole experts over ep={ep} devices"),)


def decode_bottleneck(decode_parts: dict) -> str:
    """What most of a decode step is spent on."""
    names = {"matmul": "weight reads (GEMMs)", "attention": "KV-cache reads (attention)",
             "tp_comm": "TP all-reduce", "other": "element-wise ops", "pp_comm": "pipeline sends",
             "pipeline_wait": "pipeline stages busy with other micro-batches"}
    key = max(DECODE_KEYS, key=lambda k: float(decode_parts[k]))
    return names[key]


# --------------------------------------------------------------------------- batch sweeps


# --------------------------------------------------------------------------- plain data and text


def with_batch(layout: ServeLayout, batch) -> ServeLayout:
    return replace(layout, batch=batch)
