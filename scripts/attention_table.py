"""Turn an attention.csv of scripts/gpu_stack_kernels.py into a hardware profile's ``attention_kernels`` block.

Each measured causal attention rate becomes the table entry that makes the model give that rate at that
shape (``parplan.cost.kernels.attention_curve_fraction``: the rate over the profile's GEMM rate, peak x
matmul_efficiency, and the causal tiles' utilization at the measured grid), so the profile reproduces its measurements;
``flash`` rows (SDPA's FLASH_ATTENTION backend, FlashAttention-2) are the ``flash2`` kernel; the CSV may also be
``gpu_loaded_attention.py --table``'s, timed between GEMMs as a step runs attention. ``--flash2-residency
BLOCKS,LONE_RATE`` carries FlashAttention-2's forward blocks an SM and lone-block rate into the table (on
Hopper: 2,0.55, fitted to the H100 benchmark of causal kernels over small grids,
reports/gpu-checks/h100-2026-12-07e/README.md), and its entries are taken against that schedule.

It also reads NVIDIA's cudnn-frontend SDPA benchmark CSVs (``batch_size, q_seqlen, num_q_heads, head_dim, backend,
fwd_tflops_per_sec, ...``; ``reports/published/blackwell-attention``): ``pyt_cudnn`` and ``cudnn_fe`` are the cudnn
kernel, ``pyt_flash_attention`` flash2. ``--min-seq N`` leaves out shorter sequences. ``--floor-seq N``: the file timed
each call with CUDA events around it on an idle GPU (benchmark_bf16_sdpa.py), so every time carries the host's
dispatch of that call; the time of the N-token call (its kernel is tiny) is taken as that floor and subtracted
from every call of the backend before its rate is taken: an upper bound on the kernel's rate, as the floor so
measured includes the short call's own kernel.

usage: python scripts/attention_table.py reports/gpu-checks/h100-2026-12-07f/attention_loaded.csv --hw h100-sxm
           [--flash2-residency 2,0.55] [--min-seq 4096] [--floor-seq 512]
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
# cudnn-frontend's benchmark_bf16_sdpa.py: its backends and columns in this script's names
FRONTEND_BACKENDS = {"pyt_cudnn": "cudnn", "cudnn_fe": "cudnn", "pyt_flash_attention": "flash"}
FRONTEND_COLUMNS = {"batch_size": "batch", "q_seqlen": "seq", "num_q_heads": "heads",
                    "fwd_tflops_per_sec": "fwd_tflops", "bwd_tflops_per_sec": "bwd_tflops"}


def read_rates(path: str, min_seq: int = 0, floor_seq: int | None = None) -> pd.DataFrame:
    """Measured causal rates, one row per backend and shape: this project's CSVs or cudnn-frontend's, less the
    per-call floor of the ``floor_seq``-token call where given (cudnn-frontend's times, ms)."""
    d = pd.read_csv(path)
    if "q_seqlen" in d.columns:
        d = d[d["backend"].isin(FRONTEND_BACKENDS) & d["is_causal"] & (d["q_seqlen"] == d["kv_seqlen"])]
        d = d.rename(columns=FRONTEND_COLUMNS).assign(backend=lambda x: x["backend"].map(FRONTEND_BACKENDS))
        if floor_seq is not None:
            d = pd.concat([_less_floor(g, floor_seq, path) for _, g in d.groupby("backend", sort=False)])
    elif floor_seq is not None:
        raise SystemExit(f"{path}: --floor-seq needs cudnn-frontend's per-call times")
    d = d[d["backend"].isin(KERNELS) & (d["seq"] >= min_seq)]
    if d.empty:
        raise SystemExit(f"{path}: no causal cudnn or flash rows at {min_seq} tokens or more")
    return d


def _less_floor(rows: pd.DataFrame, floor_seq: int, path: str) -> pd.DataFrame:
    """One backend's rates with the ``floor_seq``-token call's time taken off every call's time."""
    short = rows[rows["seq"] == floor_seq]
    if short.empty:
        raise SystemExit(f"{path}: no {floor_seq}-token call to take the floor from")
    out = rows[rows["seq"] > floor_seq].copy()
    for part in ("fwd", "bwd"):
        time = out[f"{'forward' if part == 'fwd' else 'backward'}_time"]
        floor = float(short[f"{'forward' if part == 'fwd' else 'backward'}_time"].iloc[0])
        out[f"{part}_tflops"] = out[f"{part}_tflops"] * time / (time - floor)
    return out


def table(path: str, hw_name: str, residency: dict | None = None, min_seq: int = 0,
          floor_seq: int | None = None) -> str:
    hw = load_hardware(hw_name)
    d = read_rates(path, min_seq, floor_seq)
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
    parser.add_argument("--min-seq", type=int, default=0, help="leave out sequences shorter than this")
    parser.add_argument("--floor-seq", type=int, help="take this sequence's call time off every call (cudnn-frontend)")
    args = parser.parse_args()
    res = None
    if args.flash2_residency:
        try:
            blocks, lone = args.flash2_residency.split(",")
            res = {"flash2": (int(blocks), float(lone))}
        except ValueError:
            parser.error(f"--flash2-residency: expected BLOCKS,LONE_RATE such as 2,0.55, got {args.flash2_residency!r}")
    print(table(args.csv, args.hw, res, args.min_seq, args.floor_seq))
