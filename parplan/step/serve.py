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

The serving stack (``--framework``: vLLM by default on GPUs) decides the attention kernels, the
element-wise kernels, host launches and CUDA graphs, the sampler and the scheduler's per-step
time (:mod:`parplan.step.serve_software`); ``host`` and ``sampling`` in the breakdowns are its.

Every function accepts a numpy array of batch sizes where it takes ``batch``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..cost import moe as moe_mod, ops as ops_mod
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
from . import serve_software as ssw
from .serve_ops import _dims, pass_ops, serving_layout

DECODE_KEYS = ("matmul", "attention", "tp_comm", "other", "pp_comm", "pipeline_wait", "sampling", "host")
PREFILL_KEYS = ("matmul", "attention", "tp_comm", "other", "pp_comm", "sampling", "host")


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
    software: Any = None               # the serving stack (parplan.specs.serving_stack.ServingSoftware)
    prefill_layers_s: Any = None       # the transformer layers of one prefill alone (what a layer-stack benchmark times)
    decode_layers_s: Any = None        # ... of one decode step


# --------------------------------------------------------------------------- timing one pass


def _op_time(hw: Hardware, op: ops_mod.Op, dtype: str, software=None):
    """Forward seconds of one op: GEMMs at the weights' dtype (split-K where it pays), the rest at the
    activations'; attention as the serving stack's kernels run it."""
    gemm = op.kind in (ops_mod.MATMUL, ops_mod.BATCHED)
    if op.name == "decode_attention" and software is not None:
        return ssw.decode_attention_time(hw, op, activation_dtype(dtype), software)
    if op.kind == ops_mod.FLASH and software is not None:
        return op_times(hw, op, activation_dtype(dtype), env=ssw.prefill_env(software))[0]
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
    launch_s: Any = 0.0    # host time before the pass's first kernel (one launch, or one graph launch)

    @property
    def layer_s(self):
        return sum(self.layer.values())

    def layers_s(self, model: ModelSpec):
        """The transformer layers alone, as a layer-stack benchmark times them (every stage's layers)."""
        return model.layers * self.layer_s + self.launch_s

    def total(self, model: ModelSpec, pp: int):
        """Sum over the stages (one micro-batch's trip through the pipeline)."""
        return model.layers * self.layer_s + sum(self.embedding.values()) + sum(self.head.values()) + \
            (pp - 1) * self.p2p_s + self.launch_s

    def busiest(self, model: ModelSpec, pp: int):
        """Time of the busiest stage."""
        if pp == 1:
            return self.total(model, 1)
        emb, head = sum(self.embedding.values()), sum(self.head.values())
        ends = emb + head if pp == 1 else np.maximum(emb, head)
        return stage_layers(model, pp) * self.layer_s + ends + (self.p2p_s if pp > 1 else 0.0) + self.launch_s

    def parts(self, model: ModelSpec, pp: int) -> dict:
        """``total`` split into matmul, attention, tp_comm, other, sampling, host and pp_comm."""
        out = {k: model.layers * v for k, v in self.layer.items()}
        for d in (self.embedding, self.head):
            for k, v in d.items():
                out[k] = out.get(k, 0.0) + v
        out["host"] = out.get("host", 0.0) + self.launch_s
        out.setdefault("sampling", 0.0 * out["host"])
        out["pp_comm"] = (pp - 1) * self.p2p_s
        return out


def pass_cost(model: ModelSpec, cluster: Cluster, tp: int, pp: int, phase: str, seqs, tokens_per_seq, context,
              dtype: str = "bf16", kv_dtype: str | None = None, ep: int = 1, software=None) -> PassCost:
    """Time of one prefill or decode pass on one replica, per layer and for the embedding/head.

    ``software``: the serving stack (:func:`parplan.step.serve_software.serving_software`); None
    prices the bare kernels (every op one fused kernel, no host, sampler or scheduler)."""
    hw = cluster.hardware
    kv_dtype = kv_dtype or activation_dtype(dtype)
    act = activation_dtype(dtype)
    abpe = BYTES_PER_ELEMENT[act]
    seqs = np.asarray(seqs, float)
    ops = pass_ops(model, tp, phase, seqs, tokens_per_seq, context, dtype, kv_dtype, hw.compute_units, ep, software)
    times = [_op_time(hw, o, dtype, software) for o in ops]
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
    launch = 0.0
    if software is not None:
        # Sampling the next token of each sequence, on the gathered logits.
        head["sampling"] = ssw.sampling_time_s(hw, software, rows, model.vocab)
        # Outside a graph the host launches every kernel (a collective is one) while the GPU runs the queue.
        graphed = software.graphed(seqs) if phase == "decode" else np.asarray(False)
        per_layer = ssw.launches(ops) + sum(np.asarray(c.collective.count, float) * (np.asarray(c.collective.group) > 1)
                                            for c in comm if c.collective.per == "layer")
        layer["host"] = ssw.host_exposed(sum(layer.values()), per_layer, software, graphed)
        embedding["host"] = ssw.host_exposed(sum(embedding.values()), 1 + (tp > 1), software, graphed)
        head["host"] = ssw.host_exposed(sum(head.values()), 3 + (tp > 1) + np.ceil(software.stack.sampling_passes),
                                        software, graphed)
        launch = ssw.pass_launch_s(software, graphed)
    return PassCost(layer, embedding, head, p2p, 2.0 * act_bytes, ops, times, launch)


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
                       headroom: float = DEFAULT_HEADROOM, check: bool = True, software=None) -> InferenceEstimate:
    """Predict TTFT, TPOT, throughput and memory of serving ``model`` on ``cluster`` under ``layout``.

    With ``check=False`` ``layout.batch`` may be a numpy array of batch sizes. ``software``: the
    serving stack (:func:`parplan.step.serve_software.serving_software`); None takes the device's
    default (vLLM on GPUs, JAX on TPUs).
    """
    if software is None:
        software = ssw.serving_software(None, cluster.hardware.kind)
    if check:
        layout = check_serve_layout(layout, model, cluster)
    tp, pp, dtype, kv = layout.tp, layout.pp, layout.dtype, layout.kv
    I, O = layout.input_len, layout.output_len
    b = np.asarray(layout.batch, float)

    # ---- prefill of one request
    pre = pass_cost(model, cluster, tp, pp, "prefill", 1, I, I, dtype, kv, layout.ep, software)
    gpu = pre.total(model, pp)
    sched = ssw.scheduler_exposed_s(software, gpu)  # the scheduler's time the prefill step waits for
    ttft = gpu + sched
    prefill_busy = pre.busiest(model, pp) + sched
    prefill_parts = pre.parts(model, pp)
    prefill_parts["host"] = prefill_parts["host"] + sched

    # ---- one decode round: min(pp, b) micro-batches of ceil(b / that) sequences
    micro = np.minimum(pp, b)
    mb = np.ceil(b / micro)
    context = I + O / 2.0
    dec = pass_cost(model, cluster, tp, pp, "decode", mb, 1, context, dtype, kv, layout.ep, software)
    trip = dec.total(model, pp)
    step = np.maximum(trip, micro * dec.busiest(model, pp))
    sched = ssw.scheduler_exposed_s(software, step)
    tpot = step + sched
    decode_parts = dec.parts(model, pp)
    decode_parts["pipeline_wait"] = step - trip
    decode_parts["host"] = decode_parts["host"] + sched

    # ---- continuous batching
    cycle = O * tpot + b * prefill_busy
    per_replica = b * O / cycle
    tokens_per_s = per_replica * layout.replicas
    itl = tpot + (b - 1) * prefill_busy / O

    block = ssw.kv_block_tokens(software)
    mem = memory_per_device(model, tp, pp, b, I, O, dtype, kv, kv_block_tokens=block)
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
        max_batch=max_batch(model, cluster.hardware, tp, pp, I, O, dtype, kv, headroom, kv_block_tokens=block),
        prefill_breakdown_s=prefill_parts,
        decode_breakdown_s=decode_parts,
        tp_allreduce_bytes_per_layer=dec.tp_bytes_per_layer,
        headroom=headroom,
        notes=context_notes(model, I + O) + _moe_notes(model, mb, tp, layout.ep),
        prefill_ops=list(zip(pre.ops, pre.op_times)),
        decode_ops=list(zip(dec.ops, dec.op_times)),
        software=software,
        prefill_layers_s=pre.layers_s(model),
        decode_layers_s=dec.layers_s(model),
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
             "pipeline_wait": "pipeline stages busy with other micro-batches", "sampling": "sampling",
             "host": "host launches and scheduling"}
    key = max(DECODE_KEYS, key=lambda k: float(decode_parts[k]))
    return names[key]


def with_batch(layout: ServeLayout, batch) -> ServeLayout:
    return replace(layout, batch=batch)
