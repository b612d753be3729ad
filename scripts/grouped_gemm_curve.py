"""A profile's ``grouped_gemm`` curves from the CSV of scripts/gpu_moe_fp8.py.

Each curve is, per tokens per expert, the median over expert shapes and local-expert counts (4 and up) of the
model's roofline time of the expert GEMMs over the measured time: the share of the roofline's rate a launch
reaches. ``fraction``: one grouped kernel in bf16 (torch._grouped_mm); ``fraction_fp8``: one grouped kernel in
FP8 (torch._scaled_grouped_mm, row-wise scales, so against the row-wise FP8 roofline); ``streams`` and
``streams_fp8``: one GEMM per expert round-robin over 4 CUDA streams, as Transformer Engine's GroupedLinear
(torch.mm; torch._scaled_mm per tensor, against the per-tensor FP8 roofline).

gpu_moe_fp8.py times the GPU alone, each repeat queued behind a GPU sleep, which also lets the GPU run above
the clock it holds under sustained load, the clock the profile's GEMM efficiency stands for. Given the
loaded-state CSV of scripts/gpu_moe.py (torch._grouped_mm timed back to back, each call with its host work),
the two runs' bf16 grouped times are fitted as ``loaded = state x rested + per-call host time`` over the shapes
they share, and every rested time is multiplied by ``state``.

usage: python scripts/grouped_gemm_curve.py moe_gemm_fp8.csv [loaded moe_gemm.csv] [--hw h100-sxm]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.getcwd())
from parplan.cost.kernels import gemm_time_s  # noqa: E402
from parplan.specs.hardware import load_hardware  # noqa: E402

# curve name in the profile -> (measured column, roofline dtype, FP8 scaling of the measured kernel)
CURVES = {"fraction": ("bf16_grouped_s", "bf16", None), "fraction_fp8": ("fp8_grouped_s", "fp8", "rowwise"),
          "streams": ("bf16_streams_s", "bf16", None), "streams_fp8": ("fp8_streams_s", "fp8", "tensorwise")}
TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def roofline_s(hw, d: pd.DataFrame, dtype: str, scaling: str | None) -> np.ndarray:
    """The model's time of each row's expert GEMMs at the roofline, as it prices a device's experts: one launch
    of ``local_experts`` products (their output tiles fill the waves together), before any grouped curve."""
    scale = hw.matmul_fp8.get(scaling, 1.0) if scaling else 1.0
    return gemm_time_s(hw, d["tokens_per_expert"].to_numpy(float), d["hidden"].to_numpy(float),
                       2 * d["expert_width"].to_numpy(float), dtype, d["local_experts"].to_numpy(float),
                       efficiency_scale=scale)


def loaded_state(rested: pd.DataFrame, loaded_csv: str | None) -> float:
    """``state`` of ``loaded = state x rested + host`` for torch._grouped_mm over the shapes both runs timed."""
    if loaded_csv is None:
        return 1.0
    both = pd.read_csv(loaded_csv).merge(rested, on=["model", "local_experts", "tokens_per_expert"])
    both = both[both["local_experts"] >= 4]
    a = np.vstack([both["bf16_grouped_s"], np.ones(len(both))]).T
    (state, host), *_ = np.linalg.lstsq(a, both["grouped_s"], rcond=None)
    print(f"# loaded = {state:.3f} x rested + {host * 1e6:.0f} us per call ({len(both)} shared rows)")
    return float(state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rested", help="moe_gemm_fp8.csv of scripts/gpu_moe_fp8.py")
    ap.add_argument("loaded", nargs="?", help="moe_gemm.csv of scripts/gpu_moe.py on the same GPU model")
    ap.add_argument("--hw", default="h100-sxm")
    args = ap.parse_args()
    hw = load_hardware(args.hw)
    d = pd.read_csv(args.rested)
    d = d[d["local_experts"] >= 4]
    state = loaded_state(d, args.loaded)
    print("grouped_gemm:                      # expert GEMMs: fraction of the roofline's rate per launch and dtype")
    print(f"  tokens_per_expert: [{', '.join(str(t) for t in TOKENS)}]")
    for name, (column, dtype, scaling) in CURVES.items():
        frac = pd.Series(roofline_s(hw, d, dtype, scaling) / (d[column].to_numpy(float) * state))
        curve = frac.groupby(d["tokens_per_expert"].to_numpy()).median().clip(upper=1.0)
        # below the smallest measured tokens per expert its value is held
        values = np.interp(np.log(TOKENS), np.log(curve.index.to_numpy(float)), curve.to_numpy())
        print(f"  {name}: [{', '.join(f'{v:.2f}' for v in values)}]")


if __name__ == "__main__":
    main()
