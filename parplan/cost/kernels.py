"""The one path from a kernel to its time: GEMMs, attention and element-wise passes on one device.

Training, serving, ``calibrate`` and ``compare`` all time kernels here, so a change of the
roofline shows in every prediction alike.

* A GEMM is the roofline of :func:`parplan.cost.roofline.matmul_time_s`; with ``split_k``
  it is the faster of a plain launch and split-K launches (the k loop split ``s`` ways, each
  part at least 256 deep: ``s`` GEMMs of depth ``k / s`` writing ``s`` partial outputs). cuBLAS
  and CUTLASS pick split-K for thin, deep products whose output tiles alone would leave most
  compute units idle, the decode GEMMs under tensor parallelism (e.g. 256 x 8192 x 1280 for
  Llama 3 70B's QKV at tp=8).
* FlashAttention runs at a fraction of the GEMM rate (``FLASH_*_FRACTION_OF_GEMM``), never
  below its HBM traffic.
* An element-wise pass or copy is bytes over HBM bandwidth (``memory_time_s``).
"""
from __future__ import annotations

import numpy as np

from . import ops as ops_mod
from .roofline import (FLASH_BWD_FRACTION_OF_GEMM, FLASH_FWD_FRACTION_OF_GEMM, matmul_efficiency, matmul_time_s,
    memory_time_s, wave_utilization)

SPLIT_K = (2, 4, 8, 16)  # split-K launches considered for each GEMM
MIN_SPLIT_DEPTH = 256    # ... each part at least this deep


def gemm_time_s(hw, m, k, n, dtype: str = "bf16", batch=1, *, split_k: bool = False, lead_dims=None):
    """One GEMM launch (``batch`` products in one kernel): the roofline, or the best split-K launch."""
    m, k, n, batch = (np.asarray(x, float) for x in (m, k, n, batch))
    best = matmul_time_s(hw, m, k, n, dtype, batch, lead_dims=lead_dims)
    if not split_k:
        return best
    for s in SPLIT_K:
        split = matmul_time_s(hw, m, k / s, n, dtype, batch * s, lead_dims=(k, n) if lead_dims is None else lead_dims)
        best = np.where(k / s >= MIN_SPLIT_DEPTH, np.minimum(best, split), best)
    return best


def op_times(hw, op: ops_mod.Op, dtype: str, *, split_k: bool = False):
    """(forward_s, backward_s) of one op on one device."""
    if op.kind in (ops_mod.MATMUL, ops_mod.BATCHED):
        m, k, n, batch = op.gemm
        # A batched matmul runs its batch in one kernel; a weight GEMM's "batch" is sequential
        # block products (2D TP's SUMMA steps), one kernel each.
        steps, batch = (batch, 1) if op.kind == ops_mod.MATMUL else (1, batch)
        fwd = steps * gemm_time_s(hw, m, k, n, dtype, batch, split_k=split_k)
        # Backward: data gradient (m x n)(n x k) and weight gradient (k x m)(m x n), on the
        # same row-major tensors: their rows are still k and n long.
        lead = (k, n)
        bwd = steps * (matmul_time_s(hw, m, n, k, dtype, batch, lead_dims=lead) +
                       matmul_time_s(hw, k, m, n, dtype, batch, lead_dims=lead))
        return fwd, bwd
    if op.kind == ops_mod.FLASH:
        s, dh, skv, heads = op.gemm
        eff = matmul_efficiency(hw, s, dh, skv, heads) if hw.matmul_curve is not None else \
            hw.matmul_efficiency * wave_utilization(hw, s, dh, heads)
        peak = hw.peak(dtype)
        mem_bw = hw.hbm_bandwidth * hw.hbm_efficiency
        fwd = np.maximum(op.fwd_flops / (peak * eff * FLASH_FWD_FRACTION_OF_GEMM), op.fwd_bytes / mem_bw)
        bwd = np.maximum(op.bwd_flops / (peak * eff * FLASH_BWD_FRACTION_OF_GEMM), op.bwd_bytes / mem_bw)
        return fwd + hw.kernel_overhead_s, bwd + hw.kernel_overhead_s
    # A pass with no backward kernel (its gradient flows through untouched) costs nothing there.
    return tuple(np.where(np.asarray(b) > 0, memory_time_s(hw, b, op.streaming), 0.0)
                 for b in (op.fwd_bytes, op.bwd_bytes))


def copy_time_s(hw, nbytes):
    """A device-to-device copy moving ``nbytes`` (read plus written): a streaming memory pass."""
    return memory_time_s(hw, nbytes, streaming=True)
