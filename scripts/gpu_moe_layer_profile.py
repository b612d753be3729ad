"""Where the bench's MoE layer spends its GPU time: every kernel of one forward and one backward, by the profiler.

``parplan bench --suite layer`` times an MoE layer whole (``parplan/bench/moe.py``); this runs the same
layer under ``torch.profiler`` and writes each CUDA kernel's device time per pass, forward and backward
apart, so the model's MoE ops can be checked one by one (the eager permute's and unpermute's backward
above all, whose ratio to a fused pass was never measured on its own).

    PYTHONPATH=. python3 scripts/gpu_moe_layer_profile.py OUT.csv [MODEL:MICRO_BATCH[:autocast] ...]

``autocast`` runs the layer as the bench's whole steps run their blocks: fp32 parameters and an fp32 input
(the residual stream) under ``torch.autocast`` to bf16; without it, everything in bf16 as ``--suite layer``.
"""
from __future__ import annotations

import csv
import os
import sys

import torch

sys.path.insert(0, os.getcwd())
from parplan.bench.layer import build_layer  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

DEFAULT = ("qwen3-30b-a3b:1", "qwen3-30b-a3b:4", "mixtral-8x7b:1", "gpt-oss-120b:1", "qwen3-30b-a3b:1:autocast")
SEQ, ITERS = 4096, 5


def kernels(prof) -> dict[str, tuple[int, float]]:
    """Each kernel's (calls, device seconds) in the profile."""
    out = {}
    for e in prof.key_averages():
        dev = getattr(e, "device_time_total", None)
        if dev is None:
            dev = e.cuda_time_total
        if dev <= 0 or e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        out[e.key] = (e.count, dev / 1e6)
    return out


def profile(name: str, micro_batch: int, autocast: bool = False):
    from torch.profiler import ProfilerActivity, profile as prof_ctx

    spec = load_model(name)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    stored = torch.float32 if autocast else dtype
    layer = build_layer(spec, dev, stored, compute=dtype)
    x = torch.randn(micro_batch, SEQ, spec.hidden, device=dev, dtype=stored, requires_grad=True)
    dy = torch.randn_like(x)

    def run():
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            return layer(x)

    for _ in range(3):
        run().backward(dy)
    torch.cuda.synchronize()
    rows = []
    with prof_ctx(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(ITERS):
            y = run()
            del y
        torch.cuda.synchronize()
    fwd = kernels(p)
    ys = [run() for _ in range(ITERS)]
    torch.cuda.synchronize()
    with prof_ctx(activities=[ProfilerActivity.CUDA]) as p:
        for y in ys:
            y.backward(dy)
        torch.cuda.synchronize()
    bwd = kernels(p)
    for phase, table in (("forward", fwd), ("backward", bwd)):
        total = sum(s for _, s in table.values()) / ITERS
        print(f"{name} b={micro_batch} {'autocast ' if autocast else ''}{phase}: {total * 1e3:.3f} ms of kernels",
              flush=True)
        for key, (count, secs) in sorted(table.items(), key=lambda kv: -kv[1][1]):
            rows.append({"model": name, "micro_batch": micro_batch, "seq": SEQ, "autocast": int(autocast),
                         "phase": phase, "kernel": key[:160],
                         "calls_per_pass": count / ITERS, "device_s_per_pass": secs / ITERS})
    return rows


def main(argv: list[str]) -> int:
    out = argv[0]
    rows = []
    for item in argv[1:] or DEFAULT:
        name, mb, *mode = item.split(":")
        rows += profile(name, int(mb), autocast=mode == ["autocast"])
        tmp = out + ".tmp"
        with open(tmp, "w", newline="") as fh:   # rewritten whole after each model: a crash keeps the rest
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
