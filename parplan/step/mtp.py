"""Multi-token prediction in a training step: ``D`` modules on the rank that holds the loss.

DeepSeek-V3 (arXiv 2412.19437, Sec. 2.2) trains ``D`` sequential MTP modules beside the main model:
module ``k`` normalizes the main model's hidden state and the embedding of token ``i + k``, projects
their concatenation ``2h -> h``, runs one transformer block (an MoE block in DeepSeek-V3) and the shared
output head and loss. Megatron-Core builds them on the last pipeline stage, after the decoder and beside
the loss (``--mtp-num-layers``; the ``m`` of ``--pipeline-model-parallel-layout``; core_v0.14.0
``megatron/core/transformer/multi_token_prediction.py``). So per micro-batch the last rank runs, ``D``
times, one layer, the module's own ops and the head, forward and backward, with the layer's exposed
collectives and its recompute; it holds the modules' parameters (their experts divided over the
expert axes as every layer's), one layer's activations (its chunk holds one micro-batch in flight) and
each module's logits. The modules share the head and the embedding; under a pipeline Megatron-Core builds
the embedding on the MTP stage too (``pre_process or mtp_process``), so the last rank keeps a copy of the
table unless it already holds one (tied embeddings, or DualPipeV's V, where the first rank holds both
ends); that copy's gradient is all-reduced with the first stage's once per step, as tied embeddings' are
(``pp_embedding_grad_allreduce``, :mod:`parplan.layouts.strategies.pipeline`).
"""
from __future__ import annotations

from dataclasses import replace
from functools import reduce
from typing import Any

import numpy as np

from ..cost import ops as ops_mod
from ..specs.model import ModelSpec
from . import software as sw_mod


def block_ops(model: ModelSpec, dims, layout, sw, dropout: bool, micro_batches, strategies) -> list:
    """One module's ops for one micro-batch on this device (none without MTP): its layer as every axis
    runs it (an MoE layer for an MoE model), its own norms and projection, and the head."""
    if not model.mtp_layers:
        return []
    d = replace(dims, moe_share=1.0) if model.is_moe else dims
    own = ops_mod.mtp_own_ops(model, d, sw_mod.activation_dtype(layout.dtype), sw.elementwise["norm"])
    return sw_mod.layer_ops(model, d, layout, sw, dropout, micro_batches, strategies) + own + \
        sw_mod.head_ops(model, d, layout, sw)


def micro_batch_s(model: ModelSpec, times: list, layer_rec_s, layer_comm_s) -> tuple[Any, Any]:
    """(forward, backward) seconds the modules add to the last rank per micro-batch: ``D`` times the
    block's ops, plus a layer's recompute and exposed collectives (counted with the backward)."""
    d = float(model.mtp_layers)
    fwd = sum((t[0] for t in times), np.float64(0.0))
    bwd = sum((t[1] for t in times), np.float64(0.0))
    return d * fwd, d * (bwd + layer_rec_s + layer_comm_s)


def notes(model: ModelSpec, fwd_s, bwd_s) -> tuple[str, ...]:
    """What the modules cost, said where ``estimate`` and ``explain`` list their assumptions."""
    if not model.mtp_layers or np.ndim(fwd_s) or np.ndim(bwd_s):
        return ()
    n = model.mtp_layers
    return (f"multi-token prediction: {n} module{'s' if n > 1 else ''} on the rank with the loss, "
            f"{1e3 * (float(fwd_s) + float(bwd_s)):.3g} ms per micro-batch (a layer, the projection and the "
            f"head again, forward and backward)",)


def params(model: ModelSpec, layout) -> tuple[Any, float]:
    """(all, routed-expert) parameters the modules put on the head's rank: theirs, and under a pipeline the
    embedding table's copy where that rank holds none."""
    if not model.mtp_layers:
        return 0.0, 0.0
    experts = model.mtp_layers * model.expert_params() if model.is_moe else 0
    copy = 0 if model.tied_embeddings or layout.schedule == "dualpipev" else model.embedding_params()
    return np.where(np.asarray(layout.pp) > 1, copy, 0) + float(model.mtp_params()), float(experts)


def with_stage_params(model: ModelSpec, stages, layout, micro_batches, stage_params, expert_params):
    """The busiest stage's parameters and routed experts once the head's rank holds the modules: they set the
    data-parallel traffic and the optimizer step where that rank holds the most."""
    if not model.mtp_layers:
        return stage_params, expert_params
    mtp_p, mtp_e = params(model, layout)
    held = [np.where(r.head, r.params, 0.0) for r in stages.memory_stages(model, layout, micro_batches)]
    head = reduce(np.maximum, held) + mtp_p
    return np.maximum(stage_params, head), expert_params + np.where(head >= stage_params, mtp_e, 0.0)


def memory_bytes(model: ModelSpec, act_layer_bytes, logits_bytes) -> dict[str, Any]:
    """The modules' activations (one layer's, of the one micro-batch the head's chunk holds) and logits."""
    if not model.mtp_layers:
        return {}
    return {"mtp_activations": model.mtp_layers * act_layer_bytes,
            "mtp_logits": model.mtp_layers * logits_bytes}
