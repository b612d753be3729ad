"""One layer's ops as rows: FLOPs, bytes, arithmetic intensity, time and the bound of each, and whether its
GEMM rows fall off the aligned rate (``explain``, the report and the roofline plot read them)."""
from __future__ import annotations

from ..cost.roofline import ALIGNED_BYTES, alignment_bytes, arithmetic_intensity, misalignment_fraction
from ..cost import ops as ops_mod
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..step.train import Estimate


def op_table(est: Estimate, hw=None) -> list[dict]:
    """Per-op rows for one layer: FLOPs, bytes, intensity, time and the bound."""
    hw = hw or est.cluster.hardware
    ridge = hw.peak(est.layout.dtype) / hw.hbm_bandwidth
    rows = []
    for op, (tf, tb) in zip(est.ops, est.op_times):
        intensity = arithmetic_intensity(op.fwd_flops, op.fwd_bytes)
        aligned = 1.0
        if op.kind in (ops_mod.MATMUL, ops_mod.BATCHED):
            aligned = float(misalignment_fraction(hw, op.gemm[1:3], est.layout.dtype))
        rows.append({
            "op": op.name, "kind": op.kind,
            "fwd_flops": float(op.fwd_flops), "bwd_flops": float(op.bwd_flops),
            "fwd_bytes": float(op.fwd_bytes), "bwd_bytes": float(op.bwd_bytes),
            "intensity_flops_per_byte": float(intensity),
            "bound": "compute" if float(intensity) >= ridge else "memory",
            "forward_s": float(tf), "backward_s": float(tb),
            "aligned_rate_fraction": aligned,  # < 1: GEMM rows not 16-byte multiples
            "misaligned_rows": [float(d) for d in (op.gemm[1:3] if aligned < 1.0 else ())
                                if alignment_bytes(d, BYTES_PER_ELEMENT[est.layout.dtype]) < ALIGNED_BYTES],
        })
    return rows
