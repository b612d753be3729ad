"""A mixture-of-experts layer on one device: its kernels as shapes, its token counts, its load imbalance.

The block that replaces the dense MLP (GShard, arXiv 2006.16668; Megatron-Core's ``MoELayer`` with the
all-to-all token dispatcher; MegaBlocks, arXiv 2211.15841, for the grouped GEMMs):

1. **router**: a ``tokens x hidden x experts`` GEMM on the tokens this device holds, then the gate
   scores (softmax or sigmoid in fp32) and the top-k;
2. **permute**: the ``k`` copies of each token gathered into expert order (read the tokens, write the
   rows; backward the scatter-add back); one fused pass (Transformer Engine's ``moe_permute``), or, run
   as eager PyTorch (a sort, an index gather, torchtitan's and plain PyTorch's way), the seconds of
   :data:`EAGER_PASSES` such passes;
3. the dispatch **all-to-all** over the expert-parallel group (``parplan.layouts.strategies.expert``), and
   with several local experts the received rows **sorted** into expert order (and back before the combine:
   :func:`block_kernels`); under DeepEP the tokens, not their copies, travel and the permute runs on arrival;
4. the routed **expert GEMMs**, one grouped GEMM over the device's ``experts / ep`` experts for the
   gate/up projection, the activation, one for the down projection, each ``expert_ffn / etp`` wide;
5. the combine all-to-all, then **unpermute**: the rows weighted by their gate scores and summed
   back into the tokens (eager: an index put or scatter-add, an fp32 product and a sum, each its own
   kernel);
6. the **shared experts** (DeepSeekMoE, arXiv 2401.06066) on every token, tensor-parallel like a
   dense MLP.

Token counts (Megatron-Core's MoE parallel folding, arXiv 2504.14960): a device holds ``b s /
norm_shard`` tokens (its sequence-parallel shard in training; all of them on every tensor-parallel
rank when serving, where they are replicated ``tp / norm_shard`` ways). The ``ep x etp`` devices of
an expert group see ``max(ep etp b s / tp, b s / norm_shard)`` distinct tokens, and each device's
experts process their ``k / ep`` share of those as rows (the expert-tensor-parallel group gathers
its members' rows), so the per-device expert FLOPs shrink with ``tp`` as a dense MLP's do. Tokens a
group already holds need no all-to-all: the dispatch runs only when the group is larger than the
replication (``ep etp > tp / norm_shard``), each device sending the copies of its ``b s / tp``
tokens; replicated tokens leave the sum of the experts' outputs to the layer's tensor-parallel
all-reduce, as vLLM's expert parallelism under tensor-parallel attention does.

Load imbalance: the busiest device sets the pace. With a ``capacity_factor`` (tokens beyond it
dropped, each expert padded to its capacity: Switch Transformer, arXiv 2101.03961, Sec. 2.1) its
rows are ``capacity_factor`` times the mean; where a model spec gives a published
``router_imbalance``, that; else the busiest of ``ep`` devices under a router that spreads every
token copy uniformly at random (the balance a load-balancing loss aims for in expectation): of
``m`` copies over ``n`` devices the fullest holds ``m/n + sqrt(2 (m/n) ln n)`` (Raab and Steger
1998, Balls into Bins: A Simple and Tight Analysis, RANDOM'98, Theorem 1), a lower bound for a
trained router.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..specs.model import ModelSpec


@dataclass(frozen=True)
class MoeParallel:
    """How one device's MoE layers are split: attention's tensor parallel, expert parallel, expert TP."""

    tp: Any = 1
    ep: Any = 1
    etp: Any = 1


class Kernel(NamedTuple):
    """One kernel of the block as a shape: ``gemm`` (m, k, n, batch; batch > 1 is a grouped GEMM),
    ``memory`` (forward and backward elements moved), ``traffic`` (an element-wise family over ``elems``) or
    ``streaming`` (forward and backward elements moved by eager streaming kernels, their family and launches)."""

    name: str
    kind: str
    args: tuple
    linear: bool = False   # a linear layer's GEMM (runs in FP8 under an FP8 recipe)


def parallel(model: ModelSpec, d) -> MoeParallel:
    """The split the expert axis set on the dims, else no expert parallelism with tp read off the heads."""
    return d.moe if d.moe is not None else MoeParallel(tp=model.heads / np.asarray(d.heads, float))


def share(model: ModelSpec, d):
    """Fraction of the layers on this device that are MoE (the busiest stage's, or the whole model's)."""
    if d.moe_share is not None:
        return d.moe_share
    return model.moe_layers / model.layers


def tokens_held(d):
    """Tokens one device holds at the MoE block (its sequence-parallel shard, or all of them)."""
    return d.batch * d.seq / np.asarray(d.norm_shard, float)


def replication(model: ModelSpec, d):
    """How many tensor-parallel ranks hold the same tokens: 1 under sequence parallelism, tp when serving."""
    return np.asarray(parallel(model, d).tp, float) / np.asarray(d.norm_shard, float)


def dispatch_tokens(model: ModelSpec, d):
    """Tokens whose copies this device sends in the dispatch: ``b s / tp``."""
    return d.batch * d.seq / np.asarray(parallel(model, d).tp, float)


def group_tokens(model: ModelSpec, d):
    """Distinct tokens one ``ep x etp`` expert group processes per micro-batch."""
    p = parallel(model, d)
    group = np.asarray(p.ep, float) * np.asarray(p.etp, float)
    return np.maximum(group * dispatch_tokens(model, d), tokens_held(d))


def routed_rows(model: ModelSpec, d):
    """Token-expert rows this device's experts process per micro-batch, on average (``b s k etp / tp`` in
    training)."""
    return group_tokens(model, d) * model.top_k / np.asarray(parallel(model, d).ep, float)


def exchanges(model: ModelSpec, d, deepep: bool = False):
    """(dispatch all-to-all needed, expert-TP gather needed): only where the group is larger than the ranks
    that already hold the same tokens. DeepEP dispatches over the whole ``ep x etp`` group, gathering nothing."""
    p = parallel(model, d)
    ep, etp, r = np.asarray(p.ep, float), np.asarray(p.etp, float), replication(model, d)
    if deepep:
        return ep * etp > np.maximum(r, 1.0), np.zeros_like(ep * etp, bool)
    return (ep > 1) & (ep * etp > r), (etp > 1) & (etp > r)


def touched_experts(model: ModelSpec, d):
    """Experts of this device that some token selects (:func:`distinct_experts` over the group's tokens):
    all ``experts / ep`` of them at training batch sizes, fewer at a small decode batch."""
    p = parallel(model, d)
    return distinct_experts(model.experts, model.top_k, group_tokens(model, d)) / np.asarray(p.ep, float)


def host_syncs(model: ModelSpec, d, expert_gemms: str = "grouped"):
    """Reads of the tokens per expert by the host in one MoE layer's forward (0 or 1 per device).

    Dropless routing leaves the counts on the device, and the host needs them to size the token all-to-all
    (ep x etp > 1: Megatron-Core's dispatcher at its ``cuda_sync_point``, torchtitan's splits ``.tolist()``,
    DeepEP's wait for the received count) or to slice the rows into one GEMM per expert (a loop, or Transformer
    Engine's GroupedLinear over streams, which reads ``m_splits`` on the host). One grouped kernel takes its
    offsets on the device, and capacity padding fixes the counts in advance: no read."""
    if model.capacity_factor is not None:
        return 0.0
    p = parallel(model, d)
    sizing = np.asarray(p.ep) * np.asarray(p.etp) > 1
    slicing = (expert_gemms != "grouped") & (model.experts / np.asarray(p.ep) > 1)
    return np.where(sizing | slicing, 1.0, 0.0)


def imbalance(model: ModelSpec, d, balanced: bool = False):
    """(busiest device's rows over the mean, how that was found) (module docstring)."""
    if balanced:
        return 1.0, "mean load (FLOP count)"
    if model.capacity_factor is not None:
        return float(model.capacity_factor), f"capacity factor {model.capacity_factor:g} (tokens dropped)"
    if model.router_imbalance is not None:
        return float(model.router_imbalance), f"router imbalance {model.router_imbalance:g} (model spec)"
    n = np.asarray(parallel(model, d).ep, float)
    mean = np.maximum(routed_rows(model, d), 1.0)
    return 1.0 + np.sqrt(2.0 * np.log(n) / mean), "uniform-routing bound (Raab and Steger 1998)"


def distinct_experts(experts, top_k, tokens):
    """Expected distinct experts that ``tokens`` tokens select: ``E (1 - (1 - k/E)^B)``.

    Each token picks ``k`` of ``E`` experts; under a router that picks uniformly at random an expert
    escapes one token with probability ``1 - k/E`` and all ``B`` (independently) with ``(1 - k/E)^B``.
    At ``B = 1`` this is ``k``; it grows with ``B`` toward ``E``.
    """
    e, k, b = (np.asarray(x, float) for x in (experts, top_k, tokens))
    return e * (1.0 - (1.0 - k / e) ** b)


def hit_probability(experts, top_k, held):
    """Probability that one token's ``k`` distinct experts, drawn uniformly from ``E`` (a balanced router, or
    Megatron-Core's --moe-router-force-load-balancing), include one of ``held`` given experts:
    ``1 - C(E - held, k) / C(E, k)`` (hypergeometric)."""
    e, k, held = (np.asarray(x, float) for x in (experts, top_k, held))
    miss = np.ones(np.broadcast(e, k, held).shape)
    for i in range(int(np.max(k))):
        miss = miss * np.where(i < k, np.clip(e - held - i, 0.0, None) / np.where(i < k, e - i, 1.0), 1.0)
    return 1.0 - miss


# Eager permute and unpermute against the one fused pass each: measured / predicted forward seconds of the
# plain-PyTorch MoE layer's stages on one H100 (scripts/gpu_moe_ops.py, reports/moe/h100-2026-12-06/moe_ops.csv:
# Qwen3-30B-A3B and Mixtral 8x7B at 4096 and 16384 tokens; permute 2.35-3.17, median 2.8; unpermute 4.66-5.29,
# median 5.2). Backward taken at the same ratio (its gather, index-add and product gradients are the same
# kinds of kernels; the layer's measured forward + backward, moe_layer.csv, checks the sum).
EAGER_PASSES = {"moe_permute": 2.8, "moe_unpermute": 5.2}


def received_tokens(model: ModelSpec, d):
    """Distinct tokens a device receives under DeepEP: from each of the ``ep etp`` ranks' ``b s / tp``, those
    with an expert here (:func:`hit_probability` of its ``experts / ep`` experts)."""
    p = parallel(model, d)
    n = np.asarray(p.ep, float) * np.asarray(p.etp, float)
    return dispatch_tokens(model, d) * n * hit_probability(model.experts, model.top_k, model.experts / np.asarray(p.ep))


def block_kernels(model: ModelSpec, d, rows, activation_impl: str, balanced: bool = False,
                  permute: str = "fused", dispatcher: str = "none", bias: str = "fused") -> list[Kernel]:
    """The kernels of one MoE block on one device, per micro-batch (module docstring); ``rows``: the
    tokens of the tensor-parallel region (the shared experts' GEMM rows); ``permute``: fused or eager;
    ``dispatcher`` (training): ``alltoall`` re-sorts the rows the dispatch brings from source-rank-major to
    expert-major order and back, as every training framework's all-to-all dispatcher does; ``deepep`` sends
    tokens, not their copies, and permutes the tokens it receives into expert rows (and back) on arrival
    instead; ``none`` (serving) neither. ``bias`` (a model with biases): ``eager`` adds each expert's biases to
    its GEMMs' outputs apart, each a gather of the bias rows and an add (torchtitan's gpt-oss experts); ``fused``
    in the GEMMs' epilogue (Transformer Engine's GroupedLinear), no pass of its own."""
    p = parallel(model, d)
    h, e = model.hidden, model.experts
    swiglu = model.activation == "swiglu"
    tokens = tokens_held(d)
    local = touched_experts(model, d)
    width = model.expert_width / np.asarray(p.etp, float)
    busiest = routed_rows(model, d) * imbalance(model, d, balanced)[0]
    # The copies this device permutes (before a gather over etp, when there is one) and unpermutes.
    sent = routed_rows(model, d) / np.where(exchanges(model, d)[1], np.asarray(p.etp, float), 1.0)
    per_expert = busiest / local
    eager = EAGER_PASSES if permute == "eager" else {k: 1.0 for k in EAGER_PASSES}
    held = tokens   # the tokens the permutes read and the unpermutes write: the source's own
    if dispatcher == "deepep":  # or, under DeepEP, those the device receives; it permutes them into rows
        held = np.where(exchanges(model, d, deepep=True)[0], received_tokens(model, d), tokens)
        sent = busiest
    biases = []
    if model.bias and bias == "eager":
        # Per output of R rows x C columns, the bias rows gathered per row (write R C) and added (read 2 R C,
        # write R C); backward the add passes its gradient through and the gather's sums it per expert (read R C).
        # Streaming kernels as a residual add is: gather and add per output forward, one sum each backward.
        cols = (2 if swiglu else 1) * width + h
        biases = [Kernel("expert_biases", "streaming", (4.0 * busiest * cols, busiest * cols, "residual", 4, 2))]
    out = [
        Kernel("router", "gemm", (tokens, h, e, 1)),
        # fp32 scores: read the logits, write the probabilities, read them for the top-k; backward the reverse.
        Kernel("router_topk", "memory", (tokens * e * 10.0, tokens * e * 10.0)),
        Kernel("moe_permute", "memory", ((held + sent) * h * eager["moe_permute"],
                                         (held + sent) * h * eager["moe_permute"])),
        Kernel("expert_gate_up" if swiglu else "expert_up", "gemm",
               (per_expert, h, (2 if swiglu else 1) * width, local), True),
        Kernel("expert_activation", "traffic", (model.activation, activation_impl, busiest * width)),
        Kernel("expert_down", "gemm", (per_expert, width, h, local), True),
        *biases,
        Kernel("moe_unpermute", "memory", ((sent + held) * h * eager["moe_unpermute"],
                                           (2 * sent + held) * h * eager["moe_unpermute"])),
    ]
    if dispatcher == "alltoall":
        # With several local experts, the rows each source rank sends arrive together and are copied into
        # expert-major order before the grouped GEMMs and back after them, by every training framework's
        # all-to-all dispatcher: Megatron-Core's ("Permutation 2: Sort tokens by local expert",
        # MoEAlltoAllTokenDispatcher.dispatch_postprocess and combine_preprocess: sort_chunks_by_idxs, or a
        # transpose copy with drop-and-pad; NVIDIA/Megatron-LM @d98e8a64 megatron/core/transformer/moe/
        # token_dispatcher.py), torchtitan's (_permute, "Reorder tokens from rank-major to expert-major
        # layout", pytorch/torchtitan @b5bcd76c torchtitan/models/common/token_dispatcher.py) and DeepSpeed's
        # (each expert takes a strided chunk of the [ep, local experts, capacity] buffer, a copy, and the
        # outputs are concatenated: deepspeedai/DeepSpeed v0.14.0 deepspeed/moe/experts.py L29-38). Each row is
        # read and written once after the dispatch and once before the combine; the backward runs the inverse
        # permutations over the gradients, the same bytes.
        regroup = np.where(exchanges(model, d)[0] & (local > 1), 4.0 * busiest * h, 0.0)
        out.insert(3, Kernel("moe_sort_received", "memory", (regroup, regroup)))
    if model.shared_experts:
        shared = model.shared_experts * model.shared_width / np.asarray(p.tp, float)
        out += [Kernel("shared_gate_up" if swiglu else "shared_up", "gemm",
                       (rows, h, (2 if swiglu else 1) * shared, 1), True),
                Kernel("shared_activation", "traffic", (model.activation, activation_impl, rows * shared)),
                Kernel("shared_down", "gemm", (rows, shared, h, 1), True)]
    return out


def activation_bytes(model: ModelSpec, d, bpe: int, tokens_tp_region, expert_in: float | None = None,
                     shared_in: float | None = None):
    """Bytes one MoE block keeps for its backward beyond the dense MLP's input, on the busiest device:
    the fp32 gate scores, the permuted rows (the experts' input), the gate/up output, the down
    projection's input, the experts' output (for the scores' gradient) and the shared experts'.

    ``expert_in`` / ``shared_in``: bytes per element of what the routed experts' grouped GEMMs / the shared
    experts' linears keep of their inputs (``bpe``, or 1 where the framework keeps the FP8-cast input): the
    experts' input rows and the down projections' inputs. Transformer Engine's GroupedLinear saves its
    FP8-quantized inputs, column-wise only, for the weight gradient (NVIDIA/TransformerEngine
    transformer_engine/pytorch/module/grouped_linear.py, ``_GroupedLinear.forward``:
    ``inputmat.update_usage(rowwise_usage=False, columnwise_usage=True)``); torchao's float8 grouped GEMM keeps
    its 16-bit input (``_Float8GroupedMM``: ``ctx.save_for_backward(A, B_t, offs)``)."""
    expert_in = bpe if expert_in is None else expert_in
    shared_in = bpe if shared_in is None else shared_in
    p = parallel(model, d)
    tokens = tokens_held(d)
    rows = routed_rows(model, d) * imbalance(model, d)[0]
    width = model.expert_width / np.asarray(p.etp, float)
    up = 2 if model.activation == "swiglu" else 1
    routed = tokens * model.experts * 4.0 + rows * ((expert_in + bpe) * model.hidden + up * width * bpe +
                                                    width * expert_in)
    shared = model.shared_experts * model.shared_width / np.asarray(p.tp, float)
    return routed + tokens_tp_region * shared * (up * bpe + shared_in)


def activation_output_bytes(model: ModelSpec, d, bpe: int, gemm_in: float | None = None):
    """The routed experts' activation output on the busiest device (the down projection's input, kept at
    ``gemm_in`` bytes an element), the part of :func:`activation_bytes` that Megatron-Core's ``moe_act``
    recompute drops."""
    rows = routed_rows(model, d) * imbalance(model, d)[0]
    return rows * model.expert_width / np.asarray(parallel(model, d).etp, float) * (bpe if gemm_in is None else gemm_in)


def dense_mlp_activation_bytes(model: ModelSpec, d, bpe: int, tokens_tp_region, gemm_in: float):
    """The dense MLP's share of :func:`parplan.cost.memory.layer_activation_bytes` (its activation's input
    and the down projection's input), which an MoE layer replaces with :func:`activation_bytes`."""
    up = 2 if model.activation == "swiglu" else 1
    return tokens_tp_region * d.ffn * (up * bpe + gemm_in)
