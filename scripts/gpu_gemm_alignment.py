"""How fast a linear layer's three GEMMs run when a feature dimension is not a multiple of 8.

cuBLAS's tensor-core kernels load operands in 16-byte vectors, so they need every leading
dimension to be a multiple of 16 bytes (8 elements of bf16/fp16); other sizes run slower
kernels (cuBLAS documentation, "Tensor Core Usage"; NVIDIA's Deep Learning Performance
Guide, "Matrix Multiplication"). A linear layer ``y = x W^T`` on row-major tensors has its
two feature sizes (in, out) as the leading dimensions of all three GEMMs (forward,
data gradient, weight gradient); the token count never is.

For each width ``w`` in a ladder whose largest power-of-two divisor is 1, 2, 4, 8, 16 ...
elements, this times the three GEMMs of a ``w -> 4*5120`` and a ``4*5120 -> w`` layer on
``--tokens`` rows, plus the layers of GPT-3 13B as its paper prints it (d_model 5140), whole
and split over 2 tensor-parallel ranks, and writes achieved FLOP/s and parplan's prediction
to ``gemm_alignment.csv`` (as if aligned, and with the profile's misaligned fractions):

    PYTHONPATH=. python3 scripts/gpu_gemm_alignment.py --out DIR
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.getcwd())
from parplan.cost.roofline import matmul_time_s  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import gpu_profile, timed  # noqa: E402

WIDE = 4 * 5120
WIDTHS = (5120, 5121, 5122, 5124, 5128, 5136, 5140, 5152, 5184)
GPT3_13B_PRINTED = (  # (in, out) of each linear of the layer, d_model 5140, 40 heads x 128
    ("qkv", 5140, 3 * 5120), ("proj", 5120, 5140), ("up", 5140, 4 * 5140), ("down", 4 * 5140, 5140),
    ("qkv_tp2", 5140, 3 * 2560), ("proj_tp2", 2560, 5140), ("up_tp2", 5140, 2 * 5140),
    ("down_tp2", 2 * 5140, 5140),
)


def pow2_divisor(n: int) -> int:
    return n & -n


def predictions(hw, m, k, n, lead_dims, dtype):
    """parplan's seconds for the GEMM as if its rows were 16-byte aligned, and with its real rows."""
    aligned = replace(hw, matmul_misaligned={})
    return (float(matmul_time_s(aligned, m, k, n, dtype)),
            float(matmul_time_s(hw, m, k, n, dtype, lead_dims=lead_dims)))


def three_gemms(tokens, fan_in, fan_out, dtype, dev):
    """Forward ``x W^T``, data gradient ``dy W`` and weight gradient ``dy^T x`` as closures."""
    x = torch.randn(tokens, fan_in, device=dev, dtype=dtype)
    w = torch.randn(fan_out, fan_in, device=dev, dtype=dtype)
    dy = torch.randn(tokens, fan_out, device=dev, dtype=dtype)
    return {"fwd": (lambda: x @ w.t(), (tokens, fan_in, fan_out)),
            "dgrad": (lambda: dy @ w, (tokens, fan_out, fan_in)),
            "wgrad": (lambda: dy.t() @ x, (fan_out, tokens, fan_in))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--hw", default=None, help="parplan profile for the prediction (default: from the GPU name)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    dev = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    hw = gpu_profile(args.hw)
    cases = [(f"w{w}_to_wide", w, WIDE) for w in WIDTHS] + [(f"wide_to_w{w}", WIDE, w) for w in WIDTHS]
    cases += list(GPT3_13B_PRINTED)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gemm_alignment.csv")
    with open(path + ".part", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["case", "tokens", "fan_in", "fan_out", "gemm", "m", "k", "n", "align_elems",
                      "measured_s", "achieved_flops", "predicted_aligned_s", "predicted_s", "device", "dtype"])
        for tokens in args.tokens:
            for name, fan_in, fan_out in cases:
                align = min(pow2_divisor(fan_in), pow2_divisor(fan_out))
                for gemm, (fn, (m, k, n)) in three_gemms(tokens, fan_in, fan_out, dtype, dev).items():
                    t = timed(fn, reps=20, warmup=3, batch=5)
                    pred, full = predictions(hw, m, k, n, (fan_in, fan_out), args.dtype)
                    out.writerow([name, tokens, fan_in, fan_out, gemm, m, k, n, align, t, 2.0 * m * k * n / t,
                                  pred, full, torch.cuda.get_device_name(), args.dtype])
                    print(f"{name:<16} T={tokens:<5} {gemm:<5} align {align:>4}  {2 * m * k * n / t / 1e12:7.1f} "
                          f"TFLOP/s  measured/aligned-model {t / pred:5.2f}", flush=True)
                torch.cuda.empty_cache()
    os.replace(path + ".part", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
