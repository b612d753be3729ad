"""A profile's ``grouped_gemm`` curve from moe_gemm.csv of scripts/gpu_moe.py: per tokens-per-expert, the
median over expert shapes and local-expert counts (4 and up, where grouped launches are used) of the
model's grouped-GEMM time over the measured one, i.e. the fraction of the roofline's rate that
torch._grouped_mm reaches.

usage: python scripts/grouped_gemm_curve.py moe_gemm.csv
"""
from __future__ import annotations

import sys

import pandas as pd


def main() -> None:
    d = pd.read_csv(sys.argv[1])
    d = d[d["local_experts"] >= 4]
    frac = (d["predicted_grouped_s"] / d["grouped_s"]).groupby(d["tokens_per_expert"]).median().clip(upper=1.0)
    print("grouped_gemm:                      # torch._grouped_mm: fraction of the roofline's rate")
    print(f"  tokens_per_expert: [{', '.join(str(int(t)) for t in frac.index)}]")
    print(f"  fraction: [{', '.join(f'{v:.2f}' for v in frac.values)}]")


if __name__ == "__main__":
    main()
