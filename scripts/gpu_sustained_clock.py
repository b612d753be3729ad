"""The SM clock a GPU holds under sustained bf16 or FP8 GEMMs at its current power limit, and what it reaches there.

A cluster file's ``sustained_clock_mhz`` scales a profile's rates by ``clock / loaded_mhz`` (parplan/specs/
clocks.py), ``loaded_mhz`` being the clock the part held while its efficiencies were measured. This
measures that clock: the SM clock ``nvidia-smi`` reports while the GPU runs back-to-back GEMMs for
``--seconds`` at its power limit (also the value a power-limited part, e.g. an H100 96 GB at Grand Teton's
500 W, passes as ``sustained_clock_mhz``), with the achieved FLOP/s as a fraction of the peak the silicon
has at that clock (``frac_of_peak_at_clock``: rated peak x clock / peak_mhz) and the profile's prediction
at that clock. The power limit is read, never set.

The first interval is what a short kernel benchmark sees; the later ones what a training run holds, so the
ratio of the steady rate to the first says whether short measurements overstate a sustained run.

    PYTHONPATH=. python3 scripts/gpu_sustained_clock.py --out DIR [--seconds 60] [--size 8192] [--dtype bf16|fp8]
    PYTHONPATH=. python3 scripts/gpu_sustained_clock.py --quick     # CPU, tiny GEMMs, no nvidia-smi

Writes ``sustained_clock[-fp8].csv`` (one row per interval, appended as measured) and prints the medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from parplan.cost.roofline import matmul_time_s  # noqa: E402
from parplan.specs.clocks import at_clock  # noqa: E402

QUERY = "clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu"


def gpu_state(index: int) -> dict:
    """nvidia-smi's SM clock, maximum SM clock, power draw and power limit, or {} without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-i",
                              str(index)], capture_output=True, text=True, timeout=10).stdout
        sm, sm_max, draw, limit, temp = (float(v) for v in out.strip().split(","))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}
    return {"sm_mhz": sm, "max_sm_mhz": sm_max, "power_w": draw, "power_limit_w": limit, "temp_c": temp}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds of GEMMs per row")
    ap.add_argument("--size", type=int, default=8192, help="m = k = n of each GEMM")
    ap.add_argument("--dtype", choices=["bf16", "fp8"], default="bf16",
                    help="fp8: torch._scaled_mm e4m3 with one scale per tensor")
    ap.add_argument("--hw", default=None, help="parplan profile with a clocks block (default: from the GPU name)")
    ap.add_argument("--quick", action="store_true", help="CPU, 256^3 GEMMs for 2 s: checks the script runs")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    size, seconds = (args.size, args.seconds) if not args.quick else (256, 2.0)
    dev, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpu_common import Table
    if cuda:
        from gpu_common import gpu_profile
        hw = gpu_profile(args.hw)
    else:
        from parplan.specs.hardware import load_hardware
        hw = load_hardware(args.hw or "h100-sxm-96gb")
    a, b = (torch.randn(size, size, device=dev, dtype=dtype) for _ in range(2))
    fp8 = cuda and args.dtype == "fp8"
    if fp8:
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=dev, dtype=torch.float32)

        def gemm():
            torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    else:
        def gemm():
            a @ b
    peak_dtype = "fp8" if fp8 else "bf16"
    flops = 2.0 * size ** 3
    keys = ["t_s", "tflops", "sm_mhz", "max_sm_mhz", "power_w", "power_limit_w", "temp_c", "frac_of_peak_at_clock",
            "predicted_tflops"]
    os.makedirs(args.out, exist_ok=True)
    table = Table(os.path.join(args.out, f"sustained_clock{'-fp8' if fp8 else ''}.csv"), keys)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        sync()
        t0, calls = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.interval:
            for _ in range(10):
                gemm()
            calls += 10
            sync()
        achieved = calls * flops / (time.perf_counter() - t0)
        state = gpu_state(torch.cuda.current_device()) if cuda else {}
        row = {"t_s": round(time.perf_counter() - start, 2), "tflops": achieved / 1e12, **state}
        if state and hw.clocks is not None and 0 < state["sm_mhz"] <= hw.clocks.boost_mhz:
            row["frac_of_peak_at_clock"] = achieved / (hw.peak(peak_dtype) * state["sm_mhz"] / hw.clocks.peak_mhz)
            if not fp8 and hw.clocks.loaded_mhz is not None:
                at = at_clock(hw, state["sm_mhz"])
                row["predicted_tflops"] = flops / float(matmul_time_s(at, size, size, size, "bf16")) / 1e12
        rows.append(row)
        table.add(**row)
    steady = rows[len(rows) // 4:] or rows  # drop the first quarter: the clock settles as the GPU heats
    summary = {k: statistics.median(r[k] for r in steady) for k in keys[1:] if all(k in r for r in steady)}
    print(f"{hw.name}, {size}^3 {peak_dtype if cuda else 'fp32 (CPU)'} GEMMs for {seconds:g} s; steady medians: "
          + ", ".join(f"{k} {v:.4g}" for k, v in summary.items())
          + f"; steady rate / first interval {summary['tflops'] / rows[0]['tflops']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
