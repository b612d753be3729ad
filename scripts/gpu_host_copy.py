"""How fast a GPU moves activations to and from pinned host memory, alone and beside compute.

An offloaded layer's saved activations go to the host after its forward and come back before its
backward, on the copy engines while the GPU computes the next (or previous) layer. This measures what
``host_link`` in a hardware profile states: the rate of one large pinned device-to-host and host-to-device
copy (``d2h``, ``h2d``), both directions at once (``both``: the rate of each), and a device-to-host copy
beside back-to-back bf16 GEMMs on another stream (``d2h_beside_gemm``, with the GEMMs' slowdown against
running alone), for 64 MiB to 1 GiB.

    PYTHONPATH=. python3 scripts/gpu_host_copy.py --out DIR [--reps 10]
    PYTHONPATH=. python3 scripts/gpu_host_copy.py --quick    # CPU: the script's own check, no timing

Writes ``host_copy.csv`` (a row per case and size, appended as measured) and prints the medians.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())

SIZES_MIB = (64, 256, 1024)
GEMM = 8192  # the square bf16 GEMM the copies run beside
FIELDS = ("case", "mib", "reps", "seconds", "gb_per_s", "gemm_alone_s", "gemm_beside_s", "gemm_slowdown")


def queue_copy(dst, src, stream):
    """Queue one ``dst.copy_(src)`` on ``stream`` (non-blocking from pinned memory) between two timing events."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
    return a, b


def copy_seconds(dst, src, stream, reps: int) -> float:
    """Median seconds of one copy on ``stream``."""
    times = []
    for _ in range(reps):
        a, b = queue_copy(dst, src, stream)
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def both_seconds(d_dst, d_src, h_dst, h_src, reps: int) -> float:
    """Median seconds for a device-to-host and a host-to-device copy issued together on two streams."""
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.cuda.stream(s1):
            d_dst.copy_(d_src, non_blocking=True)
        with torch.cuda.stream(s2):
            h_dst.copy_(h_src, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_seconds(a, b, n: int, stream) -> float:
    """Seconds per GEMM of ``n`` back-to-back GEMMs on ``stream``."""
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        e0.record()
        for _ in range(n):
            a @ b
        e1.record()
    return e0, e1, n


def beside_gemm(dst, src, reps: int) -> tuple[float, float, float]:
    """(copy s, GEMM s alone, GEMM s beside the copy): each repeat times the same run of GEMMs alone and
    then with the copy issued at its start, so both see the same warm, power-capped clock."""
    a = torch.randn(GEMM, GEMM, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(GEMM, GEMM, device="cuda", dtype=torch.bfloat16)
    compute, copier = torch.cuda.Stream(), torch.cuda.Stream()
    for _ in range(50):  # past the first seconds' boost (reports/gpu-checks/h100-2026-12-06b/power-state)
        a @ b
    torch.cuda.synchronize()
    e0, e1, n = gemm_seconds(a, b, 10, compute)
    torch.cuda.synchronize()
    # GEMMs that end just after the copy: the copy covers all but the last
    n_cover = max(2, int(copy_seconds(dst, src, copier, 2) / (e0.elapsed_time(e1) / 1e3 / n)) + 1)
    copies, alone, beside = [], [], []
    for _ in range(reps):
        e0, e1, n = gemm_seconds(a, b, n_cover, compute)
        torch.cuda.synchronize()
        alone.append(e0.elapsed_time(e1) / 1e3 / n)
        e0, e1, n = gemm_seconds(a, b, n_cover, compute)
        c0, c1 = queue_copy(dst, src, copier)
        torch.cuda.synchronize()
        copies.append(c0.elapsed_time(c1) / 1e3)
        beside.append(e0.elapsed_time(e1) / 1e3 / n)
    return statistics.median(copies), statistics.median(alone), statistics.median(beside)


def append(path: str, row: dict) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def run(out: str, reps: int) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "host_copy.csv")
    for mib in SIZES_MIB:
        n = mib * 2 ** 20
        dev = torch.empty(n, dtype=torch.uint8, device="cuda")
        dev2 = torch.empty(n, dtype=torch.uint8, device="cuda")
        host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        host2 = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        stream = torch.cuda.Stream()
        for case, (dst, src) in (("d2h", (host, dev)), ("h2d", (dev, host))):
            s = copy_seconds(dst, src, stream, reps)
            append(path, {"case": case, "mib": mib, "reps": reps, "seconds": s, "gb_per_s": n / s / 1e9})
        s = both_seconds(host, dev, dev2, host2, reps)
        append(path, {"case": "both", "mib": mib, "reps": reps, "seconds": s, "gb_per_s": n / s / 1e9})
        c, alone, beside = beside_gemm(host, dev, reps)
        append(path, {"case": "d2h_beside_gemm", "mib": mib, "reps": reps, "seconds": c, "gb_per_s": n / c / 1e9,
                      "gemm_alone_s": alone, "gemm_beside_s": beside, "gemm_slowdown": beside / alone})
        del dev, dev2, host, host2
    with open(path) as f:
        for row in csv.DictReader(f):
            print(f"{row['case']:16s} {row['mib']:>5s} MiB  {float(row['gb_per_s']):7.1f} GB/s"
                  + (f"  GEMM x{float(row['gemm_slowdown']):.3f}" if row["gemm_slowdown"] else ""))


def quick() -> None:
    """CPU check of the copy and the row writer (no timing)."""
    src = torch.arange(1024, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    assert torch.equal(src, dst)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "host_copy.csv")
        append(p, {"case": "d2h", "mib": 1, "reps": 1, "seconds": 1.0, "gb_per_s": 1.0})
        assert open(p).read().count("\n") == 2
    print("ok")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/gpu-checks/host-copy")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick or not torch.cuda.is_available():
        quick()
        return
    run(args.out, args.reps)


if __name__ == "__main__":
    main()
