"""Activation and model-state memory per device.

Activations follow Korthikanti et al. 2022 (arXiv 2205.05198, Sec. 4): with 16-bit
activations, per layer and micro-batch a GPT layer stores
``s b h (34 + 5 a s / h)`` bytes, of which ``s b h (24 + 5 a s / h) / t`` sit inside
the tensor-parallel region and ``10 s b h`` outside it (sharded by ``t`` too under
sequence parallelism). We derive the same sum from the tensors each op keeps for
its backward, so GQA, SwiGLU, other MLP widths and FlashAttention (which keeps
no ``s^2`` scores, only a log-sum-exp per row) follow without new formulas.

Model states follow ZeRO (Rajbhandari et al. 2019, arXiv 1910.02054): 16-bit
weights (2 bytes/param), gradients (2, or 4 when accumulated in fp32 as Megatron
and DeepSpeed's BF16 optimizer do) and Adam's fp32 master weights, momentum and
variance (12 bytes/param).
"""
from __future__ import annotations

import numpy as np

from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.framework import RECOMPUTE_MODES  # codes 0-6: the index of each mode
from ..specs.model import ModelSpec
from . import moe as moe_mod
from .elementwise import optimizer_bytes_per_param
from .ops import LocalDims

ADAM_STATE_BYTES_PER_PARAM = 12  # fp32 master weight + momentum + variance (ZeRO Sec. 3.1)
# Fraction of HBM a plan keeps free for the allocator's fragmentation, NCCL buffers and the CUDA
# context, unless the user sets --headroom.
DEFAULT_HEADROOM = 0.10


# torchtitan's layer-selective checkpointing wraps every N-th block (selective_ac_option; its presets: 2).
SELECTIVE_LAYER_EVERY = 2


def layer_activation_bytes(model: ModelSpec, d: LocalDims, dtype: str, flash_attention: bool,
                           dropout: bool, recompute, elementwise=None, fp8_inputs: bool = False,
                           autocast=False, projections: str = "fused", expert_fp8_inputs: bool = False):
    """Bytes one layer keeps for its backward, for one micro-batch, under ``recompute``.

    ``recompute`` is a mode name of :data:`RECOMPUTE_MODES` or an array of their codes:
    ``selective`` drops the attention core's tensors (Korthikanti 2022); ``full`` keeps only the
    layer input; ``selective-op`` (torchtitan's per-op policy) keeps the layer input, the outputs
    of the odd matmuls (wq, wv, w1 and, for SwiGLU, w2) and the attention output with its
    log-sum-exp; ``selective-layer`` averages full (every N-th block) and none; ``norm-act`` (Megatron-Core
    ``--recompute-modules layernorm moe_act``) drops an MoE layer's pre-MLP norm output (the router's and
    experts' input; Transformer Engine fuses every other norm into the linear it feeds, which the module
    leaves alone) and the routed experts' activation output (the down projection's input); ``save-dots``
    (MaxText ``remat_policy: minimal``, ``jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims``)
    keeps the layer input and every weight matmul's output (q, k, v, the attention's output projection,
    the MLP's input and output projections) and rebuilds the rest: norms, activations, the attention core.
    ``mla-up-proj`` (Megatron-Core ``--recompute-modules mla_up_proj``, latent attention only) discards the
    attention's q, k and v after its forward and rebuilds them from the kept latents (the up projections and the
    rotary embedding) before its backward.
    ``elementwise``: ops run eager keep more (an eager RMSNorm its fp32 upcast and normalized
    output, 4 bytes per element over the fused kernel's 16-bit input; an eager SwiGLU the SiLU output).
    ``fp8_inputs``: the linear layers keep their inputs cast to FP8 (Transformer Engine), 1 byte each;
    ``expert_fp8_inputs``: an MoE layer's grouped expert GEMMs do too (Transformer Engine's GroupedLinear).
    ``autocast`` (array-able): eager autocast over fp32 parameters, where the residual stream and the norms'
    outputs are fp32: each norm keeps its fp32 input, and each linear its own 16-bit cast of the norm's
    output (``projections`` "separate": three for q, k, v and two for SwiGLU's gate and up). Measured per
    block on one H100 (scripts/gpu_memory_phases.py, reports/memory/h100-2026-12-06).
    """
    bpe = BYTES_PER_ELEMENT[dtype]
    eager = {op for op, how in (elementwise or {}).items() if how == "eager"}
    mask = 1.0 if dropout else 0.0
    tokens = d.batch * d.seq
    outside = tokens * model.hidden / d.norm_shard
    # Outside the TP region: both norms' inputs, the QKV and MLP inputs, two dropout masks (a parallel
    # block: one norm, whose output feeds both the QKV and the MLP projection).
    gemm_in = 1 if fp8_inputs else bpe
    norms = 1 if model.parallel_layers else 2
    outer = outside * (norms * bpe + norms * gemm_in + 2 * mask)
    if "norm" in eager:
        if model.norm == "rmsnorm":
            outer = outer + norms * outside * 4
        # under autocast: fp32 norm inputs, and a cast per extra linear that reads a norm's output
        extra_casts = (2 + (1 if model.activation == "swiglu" else 0)) if projections == "separate" else 0
        outer = outer + np.asarray(autocast, float) * outside * (norms * (4 - bpe) + extra_casts * bpe)
    q_cols, kv_cols = d.heads * d.head_dim, d.kv_heads * d.head_dim
    swiglu = model.activation == "swiglu"
    qkv = tokens * (q_cols + 2 * kv_cols) * bpe          # Q, K for the scores; V for the context
    latents = 0.0
    if model.mla:
        # Latent attention: q and k of d_qk dims per head, v of d_v; each latent's norm input and normalized
        # output (the up projection's input), and the shared rotary key.
        qkv = tokens * d.heads * (2 * model.head_dim + model.v_dim) * bpe
        latents = tokens * (2 * (model.q_lora_rank or 0) + 2 * model.kv_lora_rank + model.qk_rope_dim) * bpe
    proj_in = tokens * (d.heads * model.v_dim if model.mla else q_cols) * gemm_in   # the output projection's input
    act_in = tokens * d.ffn * bpe * (2 if swiglu else 1)
    if "activation" in eager and swiglu:
        act_in = act_in + tokens * d.ffn * bpe
    mlp_down_in = tokens * d.ffn * gemm_in
    scores = d.batch * d.heads * d.seq * d.seq_kv
    lse = d.batch * d.heads * d.seq * 4.0                # fp32 log-sum-exp per query row
    if flash_attention:
        core = lse
    else:
        core = scores * (2 * bpe + mask)                 # softmax output, dropout mask, dropout output
    full = outer + qkv + latents + proj_in + act_in + mlp_down_in + core
    # An MoE layer keeps its block's tensors in the dense MLP's place (parplan.cost.moe.activation_bytes).
    expert_in = 1 if (fp8_inputs and expert_fp8_inputs) else bpe
    moe_extra = moe_mod.share(model, d) * (moe_mod.activation_bytes(model, d, bpe, tokens, expert_in, gemm_in) -
                                           moe_mod.dense_mlp_activation_bytes(model, d, bpe, tokens, gemm_in)) \
        if model.is_moe else 0.0
    # ... and its pre-MLP norm output in 16 bits, not a linear's FP8 cast: the router reads the norm's own output
    # (a separate module, not fused into a linear); shared experts keep their first linear's FP8 cast beside it.
    shared_cast = outside * gemm_in * (gemm_in < bpe) * (model.shared_experts > 0)
    norm16 = moe_mod.share(model, d) * (outside * (bpe - gemm_in) + shared_cast) if model.is_moe else 0.0
    full = full + moe_extra + norm16 if model.is_moe else full
    selective = full - (0.0 if flash_attention else core)
    kept_input = outside * bpe                           # full recompute keeps only the layer input
    saved_mm = tokens * (q_cols + kv_cols + d.ffn + (model.hidden / d.hidden_shard if swiglu else 0)) * bpe
    per_op = kept_input + saved_mm + tokens * q_cols * bpe + lse
    per_op = per_op + moe_extra if model.is_moe else per_op
    per_layer = (kept_input + (SELECTIVE_LAYER_EVERY - 1) * full) / SELECTIVE_LAYER_EVERY
    # save-dots: the input, q/k/v, and the output projections' results (hidden-sized, sharded as the layer
    # output is), the MLP's up (and gate) projection's output.
    save_dots = kept_input + qkv + 2 * outside * bpe + tokens * d.ffn * bpe * (2 if swiglu else 1)
    save_dots = save_dots + moe_extra if model.is_moe else save_dots
    norm_act = full  # a dense layer's norms are fused into its linears: nothing for Megatron to drop
    if model.is_moe:
        norm_act = full - moe_mod.share(model, d) * (outside * bpe + shared_cast +
                                                      moe_mod.activation_output_bytes(model, d, bpe, expert_in))
    mla_up = full - qkv  # q, k, v rebuilt from the latents before the attention's backward
    code = recompute_code(recompute)
    return np.select([code == 2, code == 1, code == 3, code == 4, code == 5, code == 6, code == 7],
                     [kept_input, selective, per_op, per_layer, norm_act, save_dots, mla_up], full)


def recompute_share(recompute, recompute_layers=None, chunk_layers=None):
    """The fraction of a pipeline chunk's layers whose forward runs again whole in the backward.

    ``full``: every layer, or with ``recompute_layers`` = N Megatron's block method, the first N layers of
    each model chunk (``--recompute-method block --recompute-num-layers N``: Megatron-LM
    megatron/core/recompute.py, ``use_checkpoint = layer_idx < recompute_num_layers`` over the chunk's
    layers), ``min(N, chunk) / chunk``; ``selective-layer``: every N-th block
    (:data:`SELECTIVE_LAYER_EVERY`); any other mode, none. Array-able.
    """
    code = recompute_code(recompute)
    full = 1.0
    if recompute_layers is not None:  # (0, the search's "not a block": every layer)
        k, chunk = np.asarray(recompute_layers, float), np.maximum(np.asarray(chunk_layers, float), 1.0)
        full = np.where(k > 0, np.minimum(k, chunk) / chunk, 1.0)
    return np.select([code == 2, code == 4], [full, 1.0 / SELECTIVE_LAYER_EVERY], 0.0)


def largest_chunk_layers(model_layers: int, chunks=1):
    """Layers of a model's largest pipeline chunk when ``chunks`` (``pp * vpp``) of them split it: the rounded-up
    share, which bounds a block recompute (``--recompute-layers``). Array-able."""
    return -(-np.asarray(model_layers) // np.maximum(np.asarray(chunks), 1))


def recompute_code(recompute):
    if isinstance(recompute, str):
        return np.asarray(RECOMPUTE_MODES.index(recompute))
    return np.asarray(recompute)


def inflight_microbatches(pp, vpp, micro_batches, schedule: str, rank=0):
    """Micro-batches whose activations pipeline rank ``rank`` holds at its peak, in units of the rank's
    whole set of layers.

    1F1B (and ZB-H1, which keeps 1F1B's in-flight count: Qi et al. 2023, arXiv 2401.10241, Sec. 2.1):
    rank ``r`` runs ``p - r - 1`` warm-up forwards before its first backward, so it holds ``min(p - r, m)``.
    Interleaved with ``v`` chunks: ``(p - r - 1) 2 + (v - 1) p`` warm-up chunk forwards (Megatron-Core
    ``schedules.py: forward_backward_pipelining_with_interleaving``, microbatch group size ``p``), so
    ``min((p - r - 1) 2 + (v - 1) p + 1, m v) / v`` rank-layer-sets; on the first rank ``p + (p - 1)/v``,
    Korthikanti et al. 2022 (arXiv 2205.05198) Sec. 4.2.3. GPipe: all ``m`` on every rank; without a
    pipeline (gradient accumulation) each micro-batch's backward runs before the next forward: one.
    DualPipeV: ``2p + 1`` chunks of half a rank's layers on every rank, ``p + 1/2`` (deepseek-ai/DualPipe
    README, "Activation Per Device": PP + 1 over its PP = 2p stages).
    """
    pp, vpp, m, r = (np.asarray(x, float) for x in (pp, vpp, micro_batches, rank))
    if schedule == "gpipe":
        return np.where(pp > 1, m, np.minimum(m, 1.0))
    if schedule == "dualpipev":
        return np.minimum(pp + 0.5, m)
    one_f_one_b = np.minimum(pp - r, m)
    interleaved = np.minimum((pp - r - 1) * 2 + (vpp - 1) * pp + 1, m * vpp) / vpp
    return np.where(vpp > 1, interleaved, one_f_one_b)


def optimizer_step_bytes(params, grad_bytes_per_param, optimizer: str = "fused", master_weights: str = "fp32-copy",
                         master_bytes: int = 4, moment_bytes: int = 4):
    """HBM bytes of one Adam step over ``params`` (:func:`parplan.cost.elementwise.optimizer_bytes_per_param`):
    fused with fp32 master weights: read master, m, v, grad; write master, m, v, 16-bit copy."""
    return np.asarray(params, float) * optimizer_bytes_per_param(optimizer, master_weights, grad_bytes_per_param,
                                                                 master_bytes, moment_bytes)
