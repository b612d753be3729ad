"""Is a small collective's time the GPU's or the launching CPU's? Two timings of one all-reduce.

* ``per_call``: CUDA events around each call, the CPU launching one call at a time
  (as ``parplan bench`` times them). When the GPU finishes a call before the CPU has
  launched the next, this measures the CPU's launch cost.
* ``queued``: a GPU sleep kernel first, long enough for the CPU to queue all ``--calls``
  calls behind it; events around the queued calls then time the GPU alone, as in a
  training step where the CPU runs ahead of the GPU.

Run under torchrun, one process per GPU; rank 0 writes ``collective_floor.csv``:

    torchrun --nproc-per-node 2 scripts/collective_floor.py --out DIR
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import timed  # noqa: E402

SLEEP_CYCLES_PER_CALL = 2_000_000  # ~1 ms at ~2 GHz: ample time to launch one call


def per_call(fn, reps: int) -> float:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize()
    dist.barrier()
    for a, b in zip(starts, ends):
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) / 1e3 for a, b in zip(starts, ends))


def queued(fn, calls: int, reps: int) -> float:
    return timed(fn, reps, warmup=0, batch=calls, before=dist.barrier, sleep_cycles=SLEEP_CYCLES_PER_CALL * calls)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-bytes", type=int, default=8)
    ap.add_argument("--max-bytes", type=int, default=256 * 2**20)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rows = []
    size = args.min_bytes
    while size <= args.max_bytes:
        buf = torch.ones(max(1, size // 4), device="cuda")
        ag_in = torch.ones(max(1, size // 4 // world), device="cuda")
        ag_out = torch.empty(ag_in.numel() * world, device="cuda")
        for op, fn in (("all_reduce", lambda: dist.all_reduce(buf)),
                       ("all_gather", lambda: dist.all_gather_into_tensor(ag_out, ag_in))):
            for _ in range(3):
                fn()
            rows.append((op, world, size, per_call(fn, args.reps * 2), queued(fn, args.calls, args.reps)))
            if rank == 0:
                print(f"{op:<11} {size:>11} B  per call {rows[-1][3] * 1e6:8.1f} us  "
                      f"queued {rows[-1][4] * 1e6:8.1f} us", flush=True)
        size *= 4
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "collective_floor.csv")
        with open(path + ".part", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["op", "ranks", "bytes", "per_call_s", "queued_s", "device"])
            w.writerows(r + (torch.cuda.get_device_name(),) for r in rows)
        os.replace(path + ".part", path)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
