"""A parallel transformer block: attention and MLP side by side on one normalized input.

``y = x + Attn(LN(x)) + MLP(LN(x))`` (GPT-J; PaLM, Chowdhery et al. 2022, Sec. 2 "Parallel Layers"):
one norm per layer, and "the MLP and Attention input matrix multiplications can be fused" into one
GEMM of width ``qkv + mlp`` on the shared input; the two output projections' partial sums meet in
one residual add, so under tensor parallelism a single all-reduce ends the block.
:func:`parallel_block` rewrites the ops of a sequential block (:func:`parplan.cost.ops.layer_ops`,
which calls it for a model with ``parallel_layers``) into that form.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

DROPPED = ("post_attn_norm", "attn_residual", "attn_residual_adds", "attn_residual_dropout")


def parallel_block(ops: list) -> list:
    """The ops of a sequential block as a parallel one: the QKV and MLP input GEMMs fused into one (the FLOPs
    of both, the shared input read once), no second norm, one residual add (the MLP's)."""
    by_name = {o.name: o for o in ops}
    qkv = by_name.get("qkv_proj")
    up = by_name.get("mlp_gate_up") or by_name.get("mlp_up")
    out = []
    for o in ops:
        if o.name in DROPPED or (up is not None and qkv is not None and o is up):
            continue
        out.append(_fused(qkv, up) if (up is not None and o is qkv) else o)
    return out


def _fused(qkv: Any, up: Any) -> Any:
    """One GEMM ``[rows, h] x [h, qkv + mlp]``."""
    m, k, n_qkv, steps = qkv.gemm
    in_bytes = 1.0 if qkv.fp8 else qkv.fwd_bytes / (steps * (m * k + k * n_qkv + m * n_qkv))
    flops = qkv.fwd_flops + up.fwd_flops
    fwd_bytes = qkv.fwd_bytes + up.fwd_bytes - steps * m * k * in_bytes
    return replace(qkv, name="qkv_mlp_proj", fwd_flops=flops, bwd_flops=2.0 * flops, fwd_bytes=fwd_bytes,
                   bwd_bytes=2.0 * fwd_bytes, gemm=(m, k, n_qkv + up.gemm[2], steps),
                   sac=(qkv.sac * qkv.fwd_flops + up.sac * up.fwd_flops) / flops)
