"""The rows of ``scripts/gpu_block_recompute.py`` predicted: step time and peak memory with the first N blocks
recomputed, against the GPU's.

Each row is predicted as ``parplan.calibrate.compare`` predicts a whole one-GPU step of the bench's model (the
``torchtitan`` profile, eager, which holds q, k, v and the MLP's projections as the bench model does), with
``--recompute-layers N`` (``--recompute full`` for all of them, ``none`` for N = 0). torchtitan's own
activation checkpointing has no block option, so the profile is given one here: the bench model checkpoints its
first N blocks with ``torch.utils.checkpoint``, which is what the option prices. Besides the errors, the
script prints the share of full recompute's extra time and of its memory saving that each block measured, beside
the ``N / L`` the model charges.

usage: python scripts/block_recompute_check.py CSV [--hw=PROFILE]
"""
from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import replace

from parplan.layouts.layout import Layout
from parplan.specs.cluster import make_cluster
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.hardware import load_hardware
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate


def predict(row: dict, hw) -> tuple[float, float]:
    """(step seconds, peak bytes) parplan predicts for one row."""
    k, layers = int(row["recompute_layers"]), int(row["layers"])
    mb, seq = int(row["micro_batch"]), int(row["seq"])
    fw = load_framework("torchtitan")
    fw = replace(fw, recompute_layers=True, kernels=replace(fw.kernels, attention=(row["attention"],) + tuple(
        a for a in fw.kernels.attention if a != row["attention"])) if row.get("attention") else fw.kernels)
    software = resolve_software(fw, dtype="bf16", compiled=False, device_kind=hw.kind)
    recompute = "none" if k == 0 else "full"
    layout = Layout(dp=1, micro_batch=mb, global_batch=mb, seq_len=seq, recompute=recompute,
                    recompute_layers=k if 0 < k < layers else None)
    est = estimate(load_model(row["model"]), make_cluster(hw, 1), layout, software=software, headroom=0.0)
    return float(est.step_time_s), float(est.memory_bytes["total"])


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        sys.exit(__doc__[__doc__.index("usage:"):].strip())
    hw_name = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--hw=")), "h100-sxm")
    hw = load_hardware(hw_name)
    with open(args[0], newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"{'model':<12} {'seq':>5} {'mb':>2} {'N':>3}/{'L':<3} {'step s':>8} {'pred':>8} {'err':>7} "
          f"{'peak GiB':>8} {'pred':>7} {'err':>7}  {'time share':>10} {'memory share':>12} {'N/L':>5}")
    t_err, m_err = [], []
    for key in sorted({(r["model"], r["seq"], r["micro_batch"]) for r in rows}):
        group = {int(r["recompute_layers"]): r for r in rows if (r["model"], r["seq"], r["micro_batch"]) == key}
        layers = int(next(iter(group.values()))["layers"])
        ends = group.get(0), group.get(layers)
        for k, row in sorted(group.items()):
            if row["status"] != "ok":
                print(f"{key[0]:<12} {key[1]:>5} {key[2]:>2} {k:>3}/{layers:<3} {row['status']}")
                continue
            step, peak = float(row["step_s"]), float(row["peak_memory_bytes"])
            p_step, p_peak = predict(row, hw)
            t_err.append(p_step / step - 1)
            m_err.append(p_peak / peak - 1)
            shares = ""
            if all(e is not None and e["status"] == "ok" for e in ends) and 0 < k < layers:
                t0, tl = float(ends[0]["step_s"]), float(ends[1]["step_s"])
                m0, ml = float(ends[0]["peak_memory_bytes"]), float(ends[1]["peak_memory_bytes"])
                shares = f"{(step - t0) / (tl - t0):>10.3f} {(m0 - peak) / (m0 - ml):>12.3f} {k / layers:>5.3f}"
            print(f"{key[0]:<12} {key[1]:>5} {key[2]:>2} {k:>3}/{layers:<3} {step:>8.4f} {p_step:>8.4f} "
                  f"{p_step / step - 1:>+7.1%} {peak / 2**30:>8.2f} {p_peak / 2**30:>7.2f} {p_peak / peak - 1:>+7.1%}  "
                  f"{shares}")
    if t_err:
        t_med, m_med = statistics.median(abs(e) for e in t_err), statistics.median(abs(e) for e in m_err)
        print(f"step time: median |error| {t_med:.1%}, signed mean {statistics.mean(t_err):+.1%}; peak memory: "
              f"median |error| {m_med:.1%}, signed mean {statistics.mean(m_err):+.1%} ({len(t_err)} rows, {hw_name})")


if __name__ == "__main__":
    main()
