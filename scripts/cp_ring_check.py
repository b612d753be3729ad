"""A ring rank's attention as parplan predicts it, beside ``scripts/gpu_cp_ring.py``'s measurement.

For each measured row (sequence, cp, query and KV heads per rank) the model that has those heads per
rank at its TP degree (Llama 3 8B at TP 1; 70B at TP 4; 3.1 405B at TP 8) is estimated on ``--hw`` under
ring context parallelism, and its layer's ``flash_attention`` and ``cp_ring_merges`` ops (forward,
backward) are printed beside the rank's kernels alone and the whole rank as Transformer Engine runs it.

A second table puts each single causal kernel of the CSV (the whole sequence, and the local S rows) beside
the model at micro-batch 1, whose causal tiles' list schedule (``parplan.cost.kernels.tile_utilization``)
carries the slowdown of a small grid.

usage: python scripts/cp_ring_check.py reports/gpu-checks/DIR/cp_ring_te2.7_flash2.csv [--hw h100-sxm]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import pandas as pd

from parplan.cost.kernels import attention_efficiency
from parplan.layouts.layout import Layout
from parplan.specs.hardware import load_hardware
from parplan.specs.cluster import load_cluster
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate

# (query heads, KV heads) per rank -> (model, TP) that has them
MODELS = {(32, 8): ("llama3.1-8b", 1), (16, 2): ("llama3.1-70b", 4), (16, 1): ("llama3.1-405b", 8),
          (32, 2): ("llama3.1-405b", 4)}


def software(kernel: str):
    """Megatron-Core's profile with the attention kernel the measurement ran (its own order prefers cuDNN)."""
    fw = load_framework("megatron-core")
    fw = dataclasses.replace(fw, kernels=dataclasses.replace(fw.kernels, attention=(kernel,)))
    return resolve_software(fw)


def predicted(hw: str, seq: int, cp: int, heads: int, kv_heads: int, kernel: str) -> dict:
    """Seconds of the layer's attention ops on one rank: (flash fwd, flash bwd, merges fwd, merges bwd)."""
    name, tp = MODELS[(heads, kv_heads)]
    model = load_model(name)
    cl = load_cluster(f"{hw}x{tp * cp}")
    lay = Layout(tp=tp, cp=cp, sp=tp > 1, cp_mode="ring", micro_batch=1, global_batch=1, seq_len=seq)
    est = estimate(model, cl, lay, software=software(kernel), check=False)
    times = {op.name: (float(f), float(b)) for op, (f, b) in zip(est.ops, est.op_times)}
    merge = times.get("cp_ring_merges", (0.0, 0.0))
    return dict(model_kernel_fwd_s=times["flash_attention"][0], model_kernel_bwd_s=times["flash_attention"][1],
                model_merge_fwd_s=merge[0], model_merge_bwd_s=merge[1])


def single_kernels(rows: pd.DataFrame, hw) -> pd.DataFrame:
    """Each distinct single causal kernel of the CSV: measured over the model."""
    out, seen = [], set()
    for r in rows.itertuples():
        for seq, fwd, bwd in ((r.seq, r.full_fwd_s, r.full_bwd_s), (r.seq // r.cp, r.local_fwd_s, r.local_bwd_s)):
            if (seq, r.heads) in seen:
                continue
            seen.add((seq, r.heads))
            eff_f, eff_b = attention_efficiency(hw, seq, 128, seq, r.heads, (r.backend,))
            flops = 2.0 * seq * seq * r.heads * 128                 # causal forward
            model_f = flops / (hw.peak("bf16") * float(eff_f)) + hw.kernel_overhead_s
            model_b = 2.5 * flops / (hw.peak("bf16") * float(eff_b)) + hw.kernel_overhead_s
            out.append(dict(seq=seq, heads=r.heads, fwd=fwd / model_f, bwd=bwd / model_b))
    return pd.DataFrame(out).sort_values(["heads", "seq"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--hw", default="h100-sxm")
    p.add_argument("--kernel", default=None, help="the attention kernel to predict with (default: the CSV's backend)")
    args = p.parse_args()
    hw = load_hardware(args.hw)
    if args.kernel is not None and args.kernel not in hw.attention_kernels:
        raise SystemExit(f"{args.hw} has no measured attention kernel '{args.kernel}' "
                         f"(it has: {', '.join(hw.attention_kernels) or 'none'})")
    rows = pd.read_csv(args.csv)
    out = []
    for r in rows.itertuples():
        if (r.heads, r.kv_heads) not in MODELS:
            continue
        m = predicted(args.hw, int(r.seq), int(r.cp), int(r.heads), int(r.kv_heads), args.kernel or r.backend)
        model_f = m["model_kernel_fwd_s"] + m["model_merge_fwd_s"]
        model_b = m["model_kernel_bwd_s"] + m["model_merge_bwd_s"]
        out.append(dict(seq=r.seq, cp=r.cp, heads=r.heads, kv=r.kv_heads,
                        kern_f=r.kernels_fwd_s / m["model_kernel_fwd_s"],
                        kern_b=r.kernels_bwd_s / m["model_kernel_bwd_s"],
                        rank_f=r.rank_fwd_s / model_f, rank_b=r.rank_bwd_s / model_b,
                        rank_ms=(r.rank_fwd_s + r.rank_bwd_s) * 1e3, model_ms=(model_f + model_b) * 1e3))
    table = pd.DataFrame(out)
    print("measured over predicted: the rank's attention kernels alone (kern_*), the whole rank as TE runs it "
          "against the model's kernels and merges (rank_*)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for col in ("kern_f", "kern_b", "rank_f", "rank_b"):
        print(f"{col}: median {statistics.median(table[col]):.3f}")
    print("\nsingle causal kernels at micro-batch 1, measured over the model (fwd, bwd)")
    print(single_kernels(rows, hw).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
