"""Roofline time of one kernel: compute-bound or memory-bound, with size-aware efficiency.

``t = max(FLOPs / (peak * eff), bytes / (HBM bandwidth * hbm_eff)) + kernel overhead``
(the roofline of Williams et al. 2009; the scaling book's "Rooflines" chapter).

The matmul efficiency ``eff`` is the best-shape fraction of peak the device reaches
(measured, ``efficiency.matmul``) times the *wave utilization* of the output tiles:
a GPU computes a matmul as tiles of its output spread over its streaming
multiprocessors, and a last, partial wave leaves units idle, so a small matmul
cannot run at the rate of a large one. We take the best of the tile shapes
cuBLAS/CUTLASS commonly pick. A TPU pads operands to its 128x128 systolic array.
A profile calibrated by ``parplan bench`` carries a measured efficiency-by-size
curve instead, which then replaces this model.

Every function here broadcasts over numpy arrays (shapes of many candidate
layouts at once); scalars in give numpy scalars out.
"""
from __future__ import annotations

import functools

import numpy as np

from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.hardware import Hardware

# Output tile shapes (rows x cols) of the tensor-core GEMM kernels cuBLAS/CUTLASS use for
# 16-bit inputs on Ampere and Hopper (CUTLASS threadblock shapes for large problems).
GPU_TILES = ((128, 128), (128, 256), (256, 128))
TPU_TILE = 128  # MXU systolic array side (scaling book, "TPUs")
# A tile's main loop runs k/64 steps behind a software pipeline whose fill and drain
# cost about two steps (CUTLASS multistage mainloop): efficiency k / (k + 128).
K_PIPELINE_FILL = 128

# FlashAttention kernels reach less of peak than a plain GEMM: FlashAttention-2
# (Dao 2023, arXiv 2307.08691) reports up to 73% of A100 peak forward and 63%
# backward, against 87% for the best GEMM: ratios 0.84 and 0.72.
FLASH_FWD_FRACTION_OF_GEMM = 0.84
FLASH_BWD_FRACTION_OF_GEMM = 0.72

# cuBLAS's tensor-core kernels load operands in 16-byte vectors, so its fast kernels need every
# leading dimension to be a multiple of 16 bytes (8 elements of fp16/bf16); other sizes fall to
# slower kernels (cuBLAS documentation, "Tensor Core Usage"; NVIDIA Deep Learning Performance
# Guide, "Matrix Multiplication": "multiples of 8" for fp16). How much slower is measured per
# device (``efficiency.matmul_misaligned``).
ALIGNED_BYTES = 16


def wave_utilization(hw: Hardware, m, n, batch=1):
    """Fraction of the compute units doing useful work for an (m x n) output, ``batch`` times."""
    m, n, batch = np.asarray(m, float), np.asarray(n, float), np.asarray(batch, float)
    if hw.kind == "tpu":
        padded = np.ceil(m / TPU_TILE) * TPU_TILE * np.ceil(n / TPU_TILE) * TPU_TILE
        return m * n / padded
    units = hw.compute_units
    best = np.zeros(np.broadcast(m, n, batch).shape)
    for tm, tn in GPU_TILES:
        tiles = np.ceil(m / tm) * np.ceil(n / tn) * batch
        waves = np.ceil(tiles / units)
        best = np.maximum(best, m * n * batch / (waves * units * tm * tn))
    # Thin products (a side under one tile) run as GEMV/split-K kernels bound by memory,
    # which the roofline's memory term already charges.
    return np.where(np.minimum(m, n) < 128, 1.0, best)


def k_efficiency(k):
    """Pipeline fill and drain of a tile's k-loop: k / (k + 128)."""
    k = np.asarray(k, float)
    return k / (k + K_PIPELINE_FILL)


def matmul_efficiency(hw: Hardware, m, k, n, batch=1):
    """Fraction of dense peak a (batch x) m-by-k times k-by-n matmul reaches when compute-bound."""
    if hw.matmul_curve is not None:
        flops = 2.0 * np.asarray(batch, float) * np.asarray(m, float) * np.asarray(k, float) * np.asarray(n, float)
        curve = hw.matmul_curve
        return np.interp(np.log(np.maximum(flops, 1.0)), np.log(curve.flops), curve.efficiency)
    return hw.matmul_efficiency * wave_utilization(hw, m, n, batch) * k_efficiency(k)


def alignment_bytes(elems, bytes_per_element: int):
    """Bytes that a row of ``elems`` elements is a multiple of, up to ``ALIGNED_BYTES`` (a power of two)."""
    row = np.round(np.asarray(elems, float) * bytes_per_element).astype(np.int64)
    return np.gcd(row, ALIGNED_BYTES)


def misalignment_fraction(hw: Hardware, lead_dims, dtype: str):
    """Fraction of the aligned GEMM rate left when its leading dimensions are not 16-byte multiples.

    ``lead_dims``: the row lengths, in elements, of the GEMM's operands and output. For a linear
    layer ``y = x W^T`` on row-major tensors these are its two feature sizes in the forward, the
    data-gradient and the weight-gradient GEMM alike; the token count never is one. A byte
    alignment the profile did not measure takes the fraction of the next coarser one it did
    (or the finest, below all of them); a profile without measurements charges nothing.
    """
    bpe = BYTES_PER_ELEMENT[dtype]
    worst = functools.reduce(np.minimum, (alignment_bytes(d, bpe) for d in lead_dims))
    table = hw.matmul_misaligned
    if not table:
        return np.ones(np.shape(worst))
    keys = sorted(table)
    frac = np.full(np.shape(worst), table[keys[0]], float)
    for key in keys:
        frac = np.where(worst >= key, table[key], frac)
    return np.where(worst >= ALIGNED_BYTES, 1.0, frac)


def memory_time_s(hw: Hardware, nbytes, streaming: bool = False, efficiency: float | None = None):
    """A memory-bound kernel moving ``nbytes`` through HBM (reads plus writes).

    Element-wise and normalization kernels reach ``efficiency.elementwise`` of the
    bandwidth; a plain streaming copy reaches ``efficiency.hbm``; ``efficiency`` (a software
    profile's calibrated value) replaces both.
    """
    eff = efficiency if efficiency is not None else hw.hbm_efficiency if streaming else hw.elementwise_efficiency
    return np.asarray(nbytes, float) / (hw.hbm_bandwidth * eff) + hw.kernel_overhead_s


def matmul_time_s(hw: Hardware, m, k, n, dtype: str = "bf16", batch=1, efficiency_scale: float = 1.0,
                  lead_dims=None):
    """Time of ``batch`` matmuls of (m x k) by (k x n) in ``dtype``: the roofline with size-aware efficiency.

    ``lead_dims``: the operands' row lengths in elements, for the alignment penalty; row-major
    (m x k) by (k x n) operands by default, whose rows are k and n long.
    """
    m, k, n, batch = (np.asarray(x, float) for x in (m, k, n, batch))
    flops = 2.0 * batch * m * k * n
    nbytes = batch * (m * k + k * n + m * n) * BYTES_PER_ELEMENT[dtype]
    aligned = misalignment_fraction(hw, (k, n) if lead_dims is None else lead_dims, dtype)
    eff = matmul_efficiency(hw, m, k, n, batch) * efficiency_scale * aligned
    compute = flops / (hw.peak(dtype) * eff)
    memory = nbytes / (hw.hbm_bandwidth * hw.hbm_efficiency)
    return np.maximum(compute, memory) + hw.kernel_overhead_s


def arithmetic_intensity(flops, nbytes):
    """FLOPs per byte of HBM traffic."""
    return np.asarray(flops, float) / np.maximum(np.asarray(nbytes, float), 1.0)
