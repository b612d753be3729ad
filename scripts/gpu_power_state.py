"""How fast a GPU's power cap takes hold, and whether short GEMM timings overstate a loaded GPU.

A GPU at its power limit lowers its SM clock within some time of the load starting; a kernel timed
in a short burst after an idle spell may run above the clock a training run holds. Two measurements:

1. ``burst.csv``: after ``--idle`` seconds idle, 8192^3 bf16 GEMMs for ``--burst`` seconds, each batch
   of four timed with CUDA events: the rate against time since the load began.
2. ``shapes.csv``: layer-shaped bf16 GEMMs (Llama 3 8B and 70B at TP 8, 4096 and 16384 tokens) timed as
   the profiles' GEMM sweeps time them (20 repeats of 5 calls), once after an idle spell ("cold") and
   once after ``--load`` seconds of 8192^3 GEMMs ("loaded"), with the prediction of the profile.
3. ``mixed.csv``: a training step alternates GEMMs with memory-bound kernels, which draw less power.
   For several shares of GEMM time, ``--mixed`` seconds of 4096^3 bf16 GEMM groups alternating with
   HBM copies, the GEMM groups timed with CUDA events: the GEMM rate against its share of the time.

    PYTHONPATH=. python3 scripts/gpu_power_state.py OUT_DIR [--idle 3] [--burst 3] [--load 3]
    PYTHONPATH=. python3 scripts/gpu_power_state.py OUT_DIR --quick     # CPU: checks the script runs
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, timed  # noqa: E402
from parplan.cost.roofline import matmul_time_s  # noqa: E402


def shapes(quick: bool):
    """(name, m, k, n) of forward GEMMs: Llama 3 8B and 70B (TP 8) blocks at 4096 and 16384 tokens."""
    out = []
    for tokens in (4096, 16384):
        for model, h, q, kv, f in (("llama3-8b", 4096, 4096, 1024, 14336), ("llama3-70b-tp8", 8192, 1024, 128, 3584)):
            out += [(f"{model} qkv", tokens, h, q + 2 * kv), (f"{model} up", tokens, h, f),
                    (f"{model} down", tokens, f, h)]
    return [(n, 64, 64, 64) for n, *_ in out[:2]] if quick else out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds idle before a cold measurement")
    ap.add_argument("--burst", type=float, default=3.0, help="seconds of GEMMs in the burst trace")
    ap.add_argument("--load", type=float, default=3.0, help="seconds of GEMMs before a loaded measurement")
    ap.add_argument("--mixed", type=float, default=4.0, help="seconds per GEMM share in the mixed trace")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.quick
    if not cuda:  # the CPU check: tiny sizes, no events, no waiting
        args.idle = args.burst = args.load = args.mixed = 0.05
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    size = 8192 if cuda else 128
    big = [torch.randn(size, size, device=dev, dtype=dtype) for _ in range(2)]
    flops_big = 2.0 * size ** 3
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def load(seconds):
        sync()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(8):
                big[0] @ big[1]
            sync()

    # 1. the burst trace
    burst = Table(os.path.join(args.out, "burst.csv"), ["t_s", "tflops"])
    sync()
    time.sleep(args.idle)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.burst:
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
        s = time.perf_counter()
        for _ in range(4):
            big[0] @ big[1]
        if cuda:
            b.record()
            b.synchronize()
            dt = a.elapsed_time(b) / 1e3
        else:
            dt = time.perf_counter() - s
        burst.add(t_s=round(time.perf_counter() - t0, 4), tflops=4 * flops_big / dt / 1e12)

    # 2. layer shapes, cold and loaded
    hw = None
    if cuda:
        from gpu_common import gpu_profile
        hw = gpu_profile(None)
    table = Table(os.path.join(args.out, "shapes.csv"),
                  ["shape", "m", "k", "n", "cold_tflops", "loaded_tflops", "loaded_over_cold", "predicted_tflops"])
    for name, m, k, n in shapes(not cuda):
        x = torch.randn(m, k, device=dev, dtype=dtype)
        w = torch.randn(n, k, device=dev, dtype=dtype)
        fn = (lambda: x @ w.t())
        flops = 2.0 * m * k * n
        sync()
        time.sleep(args.idle)
        cold = flops / (timed(fn, reps=20, batch=5) if cuda else _cpu_time(fn)) / 1e12
        load(args.load)
        loaded = flops / (timed(fn, reps=20, batch=5) if cuda else _cpu_time(fn)) / 1e12
        pred = flops / float(matmul_time_s(hw, m, k, n, "bf16")) / 1e12 if hw is not None else float("nan")
        table.add(shape=name, m=m, k=k, n=n, cold_tflops=cold, loaded_tflops=loaded,
                  loaded_over_cold=loaded / cold, predicted_tflops=pred)
    mixed(args, dev, dtype, sync, cuda)
    print("done", flush=True)
    return 0


def mixed(args, dev, dtype, sync, cuda) -> None:
    """GEMM rate when GEMM groups alternate with HBM copies, for several copy lengths."""
    n = 4096 if cuda else 64
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    src = torch.empty(2 ** 28 if cuda else 2 ** 12, device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    table = Table(os.path.join(args.out, "mixed.csv"), ["copies_per_group", "gemm_share", "gemm_tflops"])
    for copies in (0, 1, 2, 4, 8, 16):
        sync()
        time.sleep(args.idle)
        gemm_s, total_s, groups = 0.0, 0.0, 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.mixed:
            if cuda:
                e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                e[0].record()
            for _ in range(8):
                a @ b
            if cuda:
                e[1].record()
            for _ in range(copies):
                dst.copy_(src)
            if cuda:
                e[2].record()
                e[2].synchronize()
                if time.perf_counter() - t0 > args.mixed / 4:  # after the cap has settled
                    gemm_s += e[0].elapsed_time(e[1]) / 1e3
                    total_s += e[0].elapsed_time(e[2]) / 1e3
                    groups += 1
        if groups:
            table.add(copies_per_group=copies, gemm_share=gemm_s / total_s,
                      gemm_tflops=groups * 8 * 2.0 * n ** 3 / gemm_s / 1e12)


def _cpu_time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
