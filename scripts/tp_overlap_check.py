"""The speedup a collective-matmul TP overlap gives, predicted against published on/off pairs.

torchtitan's June 2025 async-TP benchmark (pytorch/torchtitan benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md,
commit 2887250bb: Grand Teton H100 96 GB HBM2e at 500 W, torch 38410cf9) times each configuration with vanilla
TP and with async TP, nothing else changed; so does torchtitan's 2024 Llama 3.1 405B table (docs/performance.md
@3faaa1a0d: Float8 177 and Float8 + async TP 185 tokens/s per GPU, 128 H100s, FSDP 16 x TP 8, full AC). The ratio of the two is the overlap's gain as the software ran it;
this script prints it beside the ratio parplan predicts for the same two runs (``--tp-overlap none`` and
``collective-matmul``). The absolute times are not compared: the 500 W clock is not in the profile.

usage: python scripts/tp_overlap_check.py
"""
from __future__ import annotations

import statistics

from parplan.layouts.layout import Layout
from parplan.layouts.rules import check_layout
from parplan.specs.cluster import load_cluster
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate

# (model, GPUs, FSDP, local batch, recompute, dtype, recipe, vanilla tokens/s, async tokens/s) as published
PAIRS = (
    ("llama3.1-70b", 256, 32, 16, "full", "bf16", None, 597.3, 652.4),
    ("llama3.1-70b", 256, 32, 16, "full", "fp8", "tensorwise", 809.8, 942.4),
    ("llama3.1-70b", 256, 32, 16, "full", "fp8", "rowwise", 599.6, 624.8),
    ("llama3.1-8b", 64, 8, 12, "selective-op", "bf16", None, 4378.0, 4809.4),
    ("llama3.1-8b", 64, 8, 12, "selective-op", "fp8", "tensorwise", 5078.1, 5570.1),
    ("llama3.1-8b", 64, 8, 12, "selective-op", "fp8", "rowwise", 3708.5, 3914.9),
    ("llama3.1-405b", 128, 16, 2, "full", "fp8", "tensorwise", 177.0, 185.0),
)


def main() -> None:
    print(f"{'run':42s} {'published':>9s} {'parplan':>8s}")
    ratios = []
    for name, gpus, fsdp, local, recompute, dtype, recipe, vanilla, overlapped in PAIRS:
        model, cl = load_model(name), load_cluster(f"h100-sxm-96gbx{gpus}")
        lay = check_layout(Layout(tp=8, dp=fsdp, zero=3, sp=True, micro_batch=local, global_batch=local * fsdp,
                                  seq_len=8192, recompute=recompute, dtype=dtype), model, cl)
        times = [float(estimate(model, cl, lay, software=resolve_software(
            load_framework("torchtitan"), dtype=dtype, compiled=True, fp8_recipe=recipe, tp_overlap=o)).step_time_s)
            for o in ("none", "collective-matmul")]
        published, predicted = overlapped / vanilla, times[0] / times[1]
        ratios.append(predicted / published)
        print(f"{name + ' ' + dtype + ' ' + (recipe or ''):42s} {published:9.3f} {predicted:8.3f}")
    print(f"predicted over published speedup: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
