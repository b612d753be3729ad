"""A profile's ``grouped_gemm`` curves from the CSVs of scripts/gpu_moe.py and scripts/gpu_moe_fp8.py.

``fraction`` (one grouped kernel, bf16) comes from moe_gemm.csv: per tokens-per-expert, the median over expert
shapes and local-expert counts (4 and up) of the model's grouped-GEMM time over the measured one, i.e. the
fraction of the roofline's rate that torch._grouped_mm reaches.

Given moe_gemm_fp8.csv too, the other launches and FP8 are placed against that curve: each row's time of a
launch and dtype relative to the bf16 grouped kernel's in the same run, times the ``fraction`` at its tokens per
expert (and times the FP8 roofline's speed-up over bf16 for an FP8 curve, so the curve is a fraction of the FP8
roofline). Taking ratios within one run keeps the clock state of that run out of the curves: gpu_moe_fp8.py
queues a GPU sleep before each repeat, which lets the GPU run above its loaded clock.

usage: python scripts/grouped_gemm_curve.py moe_gemm.csv [moe_gemm_fp8.csv]
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

# curve name in the profile -> (dtype, launch) columns of moe_gemm_fp8.csv
LAUNCHES = {"fraction_fp8": ("fp8", "grouped"), "streams": ("bf16", "streams"), "streams_fp8": ("fp8", "streams")}


def bf16_curve(path: str) -> pd.Series:
    d = pd.read_csv(path)
    d = d[d["local_experts"] >= 4]
    return (d["predicted_grouped_s"] / d["grouped_s"]).groupby(d["tokens_per_expert"]).median().clip(upper=1.0)


def launch_curves(path: str, base: pd.Series) -> dict[str, pd.Series]:
    d = pd.read_csv(path)
    d = d[d["local_experts"] >= 4]
    frac = np.interp(np.log(d["tokens_per_expert"]), np.log(base.index.to_numpy(float)), base.to_numpy())
    fp8_roofline = d["predicted_fp8_grouped_s"] / d["predicted_bf16_grouped_s"]
    out = {}
    for name, (dtype, launch) in LAUNCHES.items():
        rel = d["bf16_grouped_s"] / d[f"{dtype}_{launch}_s"]
        curve = frac * rel * (fp8_roofline if dtype == "fp8" else 1.0)
        out[name] = curve.groupby(d["tokens_per_expert"]).median().clip(upper=1.0)
    return out


def main() -> None:
    base = bf16_curve(sys.argv[1])
    curves = {"fraction": base}
    if len(sys.argv) > 2:
        curves.update(launch_curves(sys.argv[2], base))
    tokens = base.index
    print("grouped_gemm:                      # expert GEMMs: fraction of the roofline's rate per launch and dtype")
    print(f"  tokens_per_expert: [{', '.join(str(int(t)) for t in tokens)}]")
    for name, c in curves.items():
        # a launch measured from fewer tokens per expert holds its smallest measured value below them
        values = np.interp(np.log(tokens.to_numpy(float)), np.log(c.index.to_numpy(float)), c.to_numpy())
        print(f"  {name}: [{', '.join(f'{v:.2f}' for v in values)}]")


if __name__ == "__main__":
    main()
