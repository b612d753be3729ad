"""Where a whole training step's GPU time goes, kernel by kernel: the step of `parplan bench --suite step`
(fp32 parameters under bf16 autocast, fused AdamW) under torch.profiler, eager and compiled.

Writes OUT_DIR/MODEL-sSEQ-profile.csv (mode, category, kernels, calls, gpu_s per step) and
OUT_DIR/MODEL-sSEQ-kernels.csv (the 40 longest kernels per mode), so the model's per-op times can be
checked against what ran: GEMMs, attention, Triton (Inductor) kernels, eager element-wise and
reduction kernels, the loss, the optimizer, copies.

usage: python scripts/gpu_step_profile.py OUT_DIR MODEL SEQ MICRO_BATCH [--modes=eager,compiled,compiled-fp8]
(compiled-fp8: torchao Float8Linear with per-tensor scales on every linear but the LM head, as the bench's
step suite runs it; torchao must be importable)
"""
from __future__ import annotations

import csv
import os
import re
import sys

import torch

sys.path.insert(0, os.getcwd())

from parplan.bench.step import step_model  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

CATEGORIES = [  # first match wins, on the lower-cased kernel name
    ("attention", r"flash|fmha|attention|sdpa"),
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|cublas|matmul|_mm_|splitk"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("loss", r"log_softmax|softmax|nll_loss|cross_entropy"),
    ("triton", r"^triton|triton_"),
    ("copy", r"copy|cast|convert|memcpy|to_copy"),
    ("reduction", r"reduce|norm|sum|mean|amax"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise"),
]


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, pattern in CATEGORIES if re.search(pattern, low)), "other")


def profile(spec, seq: int, micro_batch: int, compile: bool, steps: int, fp8: bool = False):
    dev = torch.device("cuda")
    model, loss_fn = step_model(spec, seq, dev, compile=compile, fp8="tensorwise" if fp8 else "")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, spec.vocab, (micro_batch, seq + 1), device=dev)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if t <= 0 or e.key.startswith("ProfilerStep"):
            continue
        rows[e.key] = (e.count / steps, t / 1e6 / steps)
    return rows


def main() -> None:
    out, name, seq, mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    spec = load_model(name)
    steps = 3
    modes = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--modes=")), ["eager", "compiled"])
    tag = f"{name}-s{seq}"
    with open(f"{out}/{tag}-profile.csv", "w", newline="") as f_cat, \
            open(f"{out}/{tag}-kernels.csv", "w", newline="") as f_k:
        cat_w, k_w = csv.writer(f_cat), csv.writer(f_k)
        cat_w.writerow(["model", "seq", "micro_batch", "mode", "category", "kernels", "calls", "gpu_s"])
        k_w.writerow(["model", "mode", "kernel", "category", "calls", "gpu_s"])
        for mode in modes:
            rows = profile(spec, seq, mb, mode.startswith("compiled"), steps, fp8=mode.endswith("fp8"))
            cats = {}
            for kname, (calls, t) in rows.items():
                c = category(kname)
                k, n, s = cats.get(c, (0, 0.0, 0.0))
                cats[c] = (k + 1, n + calls, s + t)
            total = sum(v[2] for v in cats.values())
            for c, (k, n, s) in sorted(cats.items(), key=lambda kv: -kv[1][2]):
                cat_w.writerow([name, seq, mb, mode, c, k, f"{n:.0f}", f"{s:.6f}"])
                print(f"{mode:9s} {c:12s} {k:4d} kernels {n:7.0f} calls {s * 1e3:9.2f} ms {s / total:6.1%}", flush=True)
            print(f"{mode:9s} total GPU kernel time {total * 1e3:.2f} ms per step", flush=True)
            for kname, (calls, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:40]:
                k_w.writerow([name, mode, kname[:160], category(kname), f"{calls:.0f}", f"{t:.6f}"])
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
