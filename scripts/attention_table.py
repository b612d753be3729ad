"""Turn an attention.csv of scripts/gpu_stack_kernels.py into a hardware profile's ``attention_kernels`` block.

Each measured causal attention rate becomes the table entry that makes the model give that rate at that
shape (``parplan.cost.kernels.attention_curve_fraction``: the rate over the profile's GEMM rate, peak x
matmul_efficiency, and the causal tiles' utilization at the measured grid), so the profile reproduces its measurements;
``flash`` rows (SDPA's FLASH_ATTENTION backend, FlashAttention-2) are the ``flash2`` kernel; the CSV may also be
``gpu_loaded_attention.py --table``'s, timed between GEMMs as a step runs attention. ``--flash2-residency
BLOCKS,LONE_RATE`` carries FlashAttention-2's forward blocks an SM and lone-block rate into the table (on
Hopper: 2,0.55, fitted to the H100 benchmark of causal kernels over small grids,
reports/gpu-checks/h100-2026-12-07e/README.md), and its entries are taken against that schedule.

usage: python scripts/attention_table.py reports/gpu-checks/h100-2026-12-07f/attention_loaded.csv --hw h100-sxm
           [--flash2-residency 2,0.55]
"""
from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

sys.path.insert(0, os.getcwd())
from parplan.cost.kernels import attention_curve_fraction  # noqa: E402
from parplan.specs.hardware import load_hardware  # noqa: E402

KERNELS = {"flash": "flash2", "cudnn": "cudnn"}


def table(path: str, hw_name: str, residency: dict | None = None) -> str:
    hw = load_hardware(hw_name)
    d = pd.read_csv(path)
    d = d[d["backend"].isin(KERNELS)]
    lines = ["attention_kernels:"]
    for backend, rows in d.groupby("backend", sort=False):
        kernel = KERNELS[backend]
        forward = (residency or {}).get(kernel)
        heads = rows["heads"] * rows["batch"]
        rows = rows.assign(
            forward=attention_curve_fraction(hw, rows["seq"], heads, rows["fwd_tflops"] * 1e12, residency=forward),
            backward=attention_curve_fraction(hw, rows["seq"], heads, rows["bwd_tflops"] * 1e12, backward=True))
        seqs = sorted(rows["seq"].unique())
        lines += [f"  {kernel}:", f"    seq: [{', '.join(map(str, seqs))}]"]
        if forward:
            lines += [f"    forward_blocks_per_sm: {forward[0]}", f"    forward_lone_rate: {forward[1]}"]
        for part in ("forward", "backward"):
            lines.append(f"    {part}:")
            for dh, per in rows.groupby("head_dim"):
                values = per.set_index("seq").loc[seqs, part]
                lines.append(f"      {dh}: [{', '.join(f'{v:.3f}' for v in values)}]")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--hw", required=True, help="the hardware profile the table is for")
    parser.add_argument("--flash2-residency", help="BLOCKS,LONE_RATE of FlashAttention-2's forward (Hopper: 2,0.55)")
    args = parser.parse_args()
    res = None
    if args.flash2_residency:
        try:
            blocks, lone = args.flash2_residency.split(",")
            res = {"flash2": (int(blocks), float(lone))}
        except ValueError:
            parser.error(f"--flash2-residency: expected BLOCKS,LONE_RATE such as 2,0.55, got {args.flash2_residency!r}")
    print(table(args.csv, args.hw, res))
