"""Turn a contention.csv of scripts/gpu_overlap.py into a hardware profile's ``overlap.slowdown`` block.

The slowdown of each op class at each number of SMs held is the median over that class's measured
kernels (GEMMs of four layer shapes; flash attention forward+backward; an element-wise pass). ``copy``
rows (the holder streams HBM, as a collective over NVLink does) give the ``scale_up`` table and
``spin`` rows (SMs held, no HBM traffic, as a network collective's kernel mostly waits) the
``network`` table. A measured speed-up within noise is written as 0.

usage: python scripts/contention_table.py reports/gpu-checks/h200-2026-12-06/contention.csv
"""
from __future__ import annotations

import sys

import pandas as pd

VICTIMS = {"gemm": lambda v: v.startswith("gemm"), "attention": lambda v: v == "attention fwd+bwd",
           "memory": lambda v: v.startswith("elementwise")}
MODES = {"scale_up": "copy", "network": "spin"}


def table(path: str) -> str:
    d = pd.read_csv(path)
    sms = int(d["sms"].iloc[0])
    ctas = sorted(d["ctas"].unique())
    lines = [f"  sm_fraction: [{', '.join(f'{c / sms:.4f}' for c in ctas)}]   # {', '.join(map(str, ctas))} of {sms} SMs",
             "  slowdown:"]
    for link, mode in MODES.items():
        lines.append(f"    {link}:")
        for op, pick in VICTIMS.items():
            rows = d[(d["mode"] == mode) & d["victim"].map(pick)]
            med = rows.groupby("ctas")["slowdown"].median().reindex(ctas)
            lines.append(f"      {op}: [{', '.join(f'{max(v, 0.0):.3f}' for v in med)}]")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
