"""What the run's software changes in a step: its kernels, precision, FSDP copies, loss and optimizer.

A :class:`parplan.specs.framework.Software` (a framework profile with the user's choices) decides

* the op list of a layer: which element-wise ops run fused or eager, the attention kernel, FP8
  on the linear GEMMs with their casts, autocast's per-forward weight casts, and FSDP2's
  copy-in/copy-out around each gather and reduce-scatter (per-parameter sharding);
* the head's loss kernel and its memory;
* the bytes gradients and gathered weights travel in;
* how model states are kept (fp32 master weights beside 16-bit ones, or fp32 parameters) and
  the optimizer kernel's HBM traffic;
* a per-layer host overhead (measured by ``calibrate``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..cost import ops as ops_mod
from ..cost.elementwise import loss_memory_bytes_per_logit
from ..cost.kernels import KernelEnv
from ..cost.memory import optimizer_step_bytes
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.framework import Software, default_framework, resolve_software
from ..specs.framework_loader import load_framework

ROWWISE_SCALINGS = ("rowwise", "blockwise", "mxfp8")


def default_software(cluster, dtype: str) -> Software:
    """The software a plan assumes when none is named: Megatron-Core on GPUs, JAX on TPUs."""
    kind = cluster.hardware.kind
    return resolve_software(load_framework(default_framework(kind)), dtype=dtype)


def activation_dtype(dtype: str) -> str:
    """The type activations, attention and element-wise work run in: 16 bits under an FP8 recipe."""
    return "bf16" if dtype == "fp8" else dtype


def kernel_env(sw: Software) -> KernelEnv:
    scaling = "rowwise" if sw.fp8_recipe in ROWWISE_SCALINGS else "tensorwise"
    return KernelEnv(attention=sw.attention_kernels or ("flash2",), fp8_scaling=scaling,
                     elementwise_efficiency=sw.framework.elementwise_efficiency)


def grad_bytes(sw: Software, dtype: str) -> int:
    """Bytes per gradient element as accumulated and reduced (fp32 main gradients, or the weights' type)."""
    act = activation_dtype(dtype)
    rule = sw.framework.data_parallel.grad_dtype
    if rule == "fp32" or (rule == "fp32-with-bf16" and act == "bf16"):
        return 4
    return BYTES_PER_ELEMENT[act]


def weight_bytes(sw: Software, dtype: str, fp8_share=1.0):
    """Bytes per weight element as ZeRO gathers it: FP8 for the ``fp8_share`` of the weights in the layers'
    linears (:func:`fp8_linear_share`) where the framework gathers FP8 weights or the run keeps FP8 primary
    weights (``--fp8-params``: Megatron's ``--fp8-param-gather``), 16 bits for the rest."""
    wide = BYTES_PER_ELEMENT[activation_dtype(dtype)]
    if dtype == "fp8" and (sw.framework.fp8.all_gather or sw.fp8_params):
        return fp8_share * 1.0 + (1 - fp8_share) * wide
    return wide


def fp8_linear_share(model, layers, params):
    """Of a rank's ``params`` (with ``layers`` transformer layers), the share in the layers: the linear weights an
    FP8 recipe covers (Transformer Engine modules, torchao's Float8Linear); the embedding, the LM head (Megatron's
    is not a TE module: frameworks/megatron-core.yaml fp8) and the norms (in the layers, a few per million) stay
    16-bit."""
    return np.clip(model.busiest_layers(layers) / np.maximum(np.asarray(params, float), 1.0), 0.0, 1.0)


def casts_weights(sw: Software, dtype: str) -> bool:
    """Whether the software casts fp32 weights to 16 bits each forward (autocast, FSDP mixed precision):
    only when it computes in 16 bits (or FP8); an fp32 or tf32 run uses the weights as they are."""
    return bool(sw.framework.kernels.weight_casts) and activation_dtype(dtype) in ("bf16", "fp16")


def zero3_shard(layout):
    """Ranks a ZeRO-3 parameter is sharded over (1 where the layout does not shard parameters)."""
    group = layout.dp if layout.shard_group is None else layout.shard_group
    return np.where(np.asarray(layout.zero) == 3, np.asarray(group) * np.asarray(layout.cp), 1)


def layer_ops(model, dims, layout, sw: Software, dropout: bool, micro_batches, strategies=()) -> list[ops_mod.Op]:
    """One layer's ops as this software runs them, per micro-batch (FSDP2 copies included), with what each
    of ``strategies`` (the layout's axes) adds to a layer."""
    act = activation_dtype(layout.dtype)
    fw = sw.framework
    shard = zero3_shard(layout)
    fp8 = None
    if sw.fp8_recipe:
        per_step = fw.fp8.weight_cast == "per-step"
        fp8 = ops_mod.Fp8(recipe=sw.fp8_recipe, casts=sw.fp8_casts,
                          weight_casts_per_microbatch=1.0 / np.maximum(micro_batches, 1) if per_step else 1.0,
                          weight_shard=shard, params=sw.fp8_params, experts=fw.fp8.experts)
    # Compiled, Inductor fuses the permute's gather and the unpermute's product and scatter-add, and the experts'
    # bias gathers and adds into the pointwise kernels beside them [assumed].
    moe = {"expert_gemms": fw.moe.expert_gemms, "moe_permute": "fused" if sw.compiled else fw.moe.permute,
           "moe_dispatcher": sw.moe_dispatcher, "moe_bias": "fused" if sw.compiled else fw.moe.bias} \
        if model.is_moe else {}
    ops = ops_mod.layer_ops(model, dims, act, sw.flash_attention, dropout, elementwise=sw.elementwise, fp8=fp8,
                            weight_cast_shard=shard if casts_weights(sw, layout.dtype) else None, **moe)
    if fw.data_parallel.zero3 == "per-parameter":
        ops.append(_fsdp_copies(model, dims, layout, act))
    for s in strategies:
        ops = ops + s.layer_ops(dims, model, layout, act)
    return ops


def _fsdp_copies(model, dims, layout, act: str) -> ops_mod.Op:
    """FSDP2's copies around a layer's collectives (``_fsdp_collectives.py``): forward, the gathered
    weights copied out of the flat buffer into each parameter (read, write); backward, the same for
    the backward gather, and the gradients packed into the reduce-scatter buffer in fp32 (read 16
    bits, write 4 bytes)."""
    bpe = BYTES_PER_ELEMENT[act]
    params = model.layer_params() / np.asarray(layout.tp, float)
    z3 = np.asarray(layout.zero) == 3
    fwd = np.where(z3, 2 * params * bpe, 0.0)
    bwd = np.where(z3, 2 * params * bpe + params * (bpe + 4), 0.0)
    return ops_mod.Op("fsdp_copies", ops_mod.MEMORY, 0.0, 0.0, fwd, bwd, streaming=True, kernels=(1, 2))


def head_ops(model, dims, layout, sw: Software) -> list[ops_mod.Op]:
    return ops_mod.head_ops(model, dims, activation_dtype(layout.dtype), sw.loss, sw.elementwise["norm"])


def logits_bytes(dims, sw: Software, dtype: str):
    """The loss's peak memory: the logits and what its kernel keeps (fp32 softmax, eager copies)."""
    per = loss_memory_bytes_per_logit(sw.loss, BYTES_PER_ELEMENT[activation_dtype(dtype)])
    return dims.batch * dims.seq * dims.vocab * per


def state_bytes_per_param(sw: Software, dtype: str, fp8_share=1.0) -> dict[str, float]:
    """Bytes per parameter of weights and optimizer state: 16-bit weights with fp32 master copies,
    momentum and variance in the optimizer (Megatron, DeepSpeed: 2 + 12), or fp32 parameters with
    fp32 momentum and variance (FSDP, autocast: 4 + 8); bf16 optimizer state narrows the optimizer's
    tensors (NeMo's distributed_fused_adam ``dtype: bf16``; Megatron-Core's bf16 moments with the master's
    16-bit remainders: 2 + 6 both). FP8 primary weights (``--fp8-params``) hold ``fp8_share`` of them in 1 byte."""
    master, moment = STATE_BYTES[sw.optimizer_states]
    if sw.framework.master_weights == "fp32-params":
        return {"weights": 4.0, "optimizer": 2.0 * moment}
    wide = float(BYTES_PER_ELEMENT[activation_dtype(dtype)])
    weights = fp8_share * 1.0 + (1 - fp8_share) * wide if sw.fp8_params and sw.fp8_recipe else wide
    return {"weights": weights, "optimizer": master + 2.0 * moment}


def optimizer_bytes(sw: Software, params, grad_bytes_per_param: int):
    fw = sw.framework
    return optimizer_step_bytes(params, grad_bytes_per_param, fw.optimizer, fw.master_weights,
                                *STATE_BYTES[sw.optimizer_states])


# (master copy, momentum and variance) bytes per parameter of each optimizer-state precision (OPTIMIZER_STATES).
# bf16-moments: Megatron-Core's precision-aware optimizer keeps of the fp32 master only the 16 bits the bf16
# parameter lacks (store_param_remainders, default on with Transformer Engine 2.1+: core_v0.13.0+
# megatron/core/optimizer/optimizer_config.py), so its master copy costs 2 bytes as well.
STATE_BYTES = {"fp32": (4, 4), "bf16": (2, 2), "bf16-moments": (2, 2)}


def extra_memory(model, dims, layout, sw: Software, stage_layers, stage_params) -> dict[str, Any]:
    """Copies the software keeps beyond weights, gradients, optimizer state and activations: autocast's
    16-bit weight copies (saved for the backward; gathered per layer instead under ZeRO-3) and
    Transformer Engine's cached FP8 weights with their transposes (1 + 1 byte per parameter; FP8 primary
    weights, ``--fp8-params``, are the weights themselves: their transposes, 1 byte).

    Where the FP8 linears cast the fp32 parameter itself (``fp8.weights_from_master``: torchao's Float8Linear
    hands ``self.weight.t()`` to its matmul and saves it, torchao 0.18 float8/float8_linear.py), autocast
    copies only the other weights, an MoE layer's routed experts among them where the recipe leaves those in
    16 bits; where a mixed-precision wrapper casts every weight first (FSDP1's, before Transformer Engine), all."""
    fw = sw.framework
    local = stage_params / np.asarray(layout.tp, float)
    z3 = np.asarray(layout.zero) == 3
    out = {}
    if casts_weights(sw, layout.dtype):
        fp8 = 0.0
        if sw.fp8_recipe and fw.fp8.weights_from_master:
            fp8 = fp8_linear_share(model, stage_layers, stage_params)
            if model.is_moe and not fw.fp8.experts:
                routed = model.busiest_layers(stage_layers, moe_only=True) * model.expert_params()
                fp8 = np.maximum(fp8 - routed / np.maximum(np.asarray(stage_params, float), 1.0), 0.0)
        out["weight_copies"] = np.where(z3, 0.0, local * (1.0 - fp8) * BYTES_PER_ELEMENT[activation_dtype(layout.dtype)])
    if sw.fp8_recipe and fw.fp8.weight_cast == "per-step":
        share = fp8_linear_share(model, stage_layers, stage_params)
        out["fp8_weight_cache"] = local * share * (1.0 if sw.fp8_params else 2.0) / zero3_shard(layout)
    return out
