"""Model FLOPs of a training step, the FLOP-counting convention behind MFU and HFU.

Model FLOPs count the matmuls of forward and backward with full (not causal-halved)
attention, as Korthikanti et al. 2022 (arXiv 2205.05198, Appendix) and PaLM (Chowdhery et
al. 2022, App. B) do; hardware FLOPs (HFU, Narayanan et al. 2021 eq. 3) add the recomputed
forward. Every count is the sum of the FLOPs of the ops in :mod:`parplan.cost.ops`, so the
FLOPs the roofline times and the FLOPs MFU divides by are the same numbers.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import mla as mla_mod, ops as ops_mod
from .memory import SELECTIVE_LAYER_EVERY, recompute_code
from ..specs.model import ModelSpec


def _whole_model_dims(model: ModelSpec, seq) -> ops_mod.LocalDims:
    """One unsharded sequence with full (not causal-halved) attention: the FLOP-counting convention."""
    return ops_mod.LocalDims(batch=1, seq=seq, seq_kv=seq, hidden=model.hidden, heads=model.heads,
                             kv_heads=model.kv_heads, head_dim=model.head_dim, ffn=model.ffn_hidden,
                             vocab=model.vocab, norm_shard=1, causal=False)


def model_flops_per_step(model: ModelSpec, seq, batch, dtype: str = "bf16", causal: bool = False):
    """FLOPs of forward + backward of the whole model for ``batch`` sequences of ``seq`` tokens.

    3x the forward matmul FLOPs with full attention, which for a GPT equals
    Korthikanti et al.'s ``72 B L s h^2 (1 + s/(6h) + V/(12 h L))``; with ``causal`` the
    attention products count only the causal half a causal kernel computes. Multi-token-prediction
    modules (DeepSeek-V3) add their layer, projection and head pass each.
    """
    d = replace(_whole_model_dims(model, seq), causal=causal)
    layer = ops_mod.total(ops_mod.layer_ops(model, d, dtype, flash_attention=causal), "fwd_flops")
    head = ops_mod.total(ops_mod.head_ops(model, d, dtype), "fwd_flops")
    mtp = 0.0
    if model.mtp_layers:  # each MTP module: one (MoE) layer, its projection and the head again (Megatron counts them)
        dm = replace(d, moe_share=1.0) if model.is_moe else d
        block = ops_mod.layer_ops(model, dm, dtype, flash_attention=causal) + ops_mod.mtp_own_ops(model, dm, dtype)
        mtp = model.mtp_layers * (ops_mod.total(block, "fwd_flops") + head)
    return 3.0 * np.asarray(batch, float) * (model.layers * layer + head + mtp)


def recompute_flops_per_step(model: ModelSpec, seq, batch, recompute, dtype: str = "bf16", full_share=None):
    """Extra forward FLOPs spent recomputing activations: full, every layer (``full_share`` of them:
    :func:`parplan.cost.memory.recompute_share`); selective, the attention
    core; selective-op, the matmuls per-op checkpointing does not save (``Op.sac``); selective-layer,
    every N-th layer (:data:`parplan.cost.memory.SELECTIVE_LAYER_EVERY`); norm-act, none (its norms and
    activations are element-wise passes); save-dots, the attention core (the weight matmuls are kept);
    mla-up-proj, latent attention's up projections."""
    d = _whole_model_dims(model, seq)
    layer_ops = ops_mod.layer_ops(model, d, dtype, flash_attention=False)
    full = ops_mod.total(layer_ops, "fwd_flops")
    core = sum((o.fwd_flops for o in layer_ops if o.attention_core), 0.0)
    flash = ops_mod.layer_ops(model, replace(d, causal=False), dtype, flash_attention=True)
    per_op = ops_mod.total([replace(o, fwd_flops=o.fwd_flops * o.sac) for o in flash], "fwd_flops") if model.is_moe \
        else sum((o.fwd_flops * o.sac for o in flash), 0.0)
    up = sum((o.fwd_flops for o in layer_ops if o.name in mla_mod.UP_PROJECTIONS), 0.0) if model.mla else 0.0
    code = recompute_code(recompute)
    share = 1.0 if full_share is None else full_share
    per_layer = np.select([code == 2, code == 1, code == 3, code == 4, code == 6, code == 7],
                          [full * share, core, per_op, full / SELECTIVE_LAYER_EVERY, core, up], 0.0)
    return np.asarray(batch, float) * model.layers * per_layer


def layer_forward_flops(model: ModelSpec, batch: int, seq: int, dtype: str = "bf16") -> float:
    """Matmul FLOPs of one layer's forward pass as it runs: projections, MLP (an MoE model's: one of its MoE
    layers, every expert on this device) and causal attention."""
    d = ops_mod.LocalDims(batch=batch, seq=seq, seq_kv=seq, hidden=model.hidden, heads=model.heads,
                          kv_heads=model.kv_heads, head_dim=model.head_dim, ffn=model.ffn_hidden,
                          vocab=model.vocab, norm_shard=1, causal=True, moe_share=1.0 if model.is_moe else None)
    return float(ops_mod.total(ops_mod.layer_ops(model, d, dtype, flash_attention=True), "fwd_flops"))
