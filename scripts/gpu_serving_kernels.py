"""Measure what a serving stack's profile assumes (frameworks/*.yaml, ``serving:``) on one GPU.

Run from the repository root on a CUDA machine with PyTorch::

    PYTHONPATH=. python3 scripts/gpu_serving_kernels.py --out DIR        # or set $OUT
    PYTHONPATH=. python3 scripts/gpu_serving_kernels.py --quick --out /tmp/x   # tiny sizes; runs on a CPU too

Rows (``serving_kernels.csv``, one per measurement; ``summary.md`` says which profile value each informs):

* ``host_launch``: host seconds per eager aten op that launches a kernel (a tiny in-place add issued
  back to back; the GPU is faster than the host, so the wall time per call is the host's), and
  ``host_view``: per view op (no kernel) -> ``serving.launch_s``.
* ``graph_kernel``: GPU seconds per tiny kernel inside a replayed CUDA graph of 200 kernels
  (no host launch) -> the hardware profile's ``kernel_overhead_s``.
* ``graph_launch``: host seconds of one ``CUDAGraph.replay()`` of a one-kernel graph -> ``serving.graph_launch_s``.
* ``decode_attention``: SDPA over a contiguous cache with the query heads of each KV head as rows (as
  scripts/gpu_inference_check.py and plain PyTorch serving run it) at each batch and context, timed
  as a CUDA graph of 20 back-to-back calls; achieved KV bytes per second over the datasheet HBM
  bandwidth of the profile. Also ``flash_attn_with_kvcache`` over a paged cache (16-token blocks)
  and FlashInfer's paged decode where those packages are installed (a one-line note where not)
  -> ``serving.decode_attention.paged_bandwidth`` (paged over dense) and the hardware's ``efficiency.hbm``.
* ``step_host``: host seconds per step of a greedy plain-PyTorch decode loop around a negligible
  model (argmax, append the token, the stopping check's .item() sync) -> ``serving.step_overhead_s``.
* ``sampling``: seconds of temperature + top-p + multinomial sampling over fp32 logits, over one
  streaming copy of the same logits -> ``serving.sampling_passes``.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def wall(fn, reps: int, sync) -> float:
    """Median wall seconds per call of ``reps`` back-to-back calls (three trials)."""
    fn()  # warm-up
    trials = []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        trials.append((time.perf_counter() - t0) / reps)
    return statistics.median(trials)


def graph_of(fn, calls: int):
    """``fn`` called ``calls`` times, captured as one CUDA graph; its replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return g.replay


def gpu_time(fn, reps: int) -> float:
    """Median GPU seconds of ``fn`` by CUDA events."""
    from gpu_common import timed

    return timed(fn, reps, 3)


def host_rows(dev, quick: bool, sync) -> list[dict]:
    x = torch.zeros(16, device=dev)
    reps = 200 if quick else 5000
    y = torch.zeros(4, 4, device=dev)
    return [{"what": "host_launch", "params": "x.add_(1) on 16 floats", "seconds": wall(lambda: x.add_(1), reps, sync)},
            {"what": "host_view", "params": "y.view(16)", "seconds": wall(lambda: y.view(16), reps, sync)}]


def graph_rows(quick: bool) -> list[dict]:
    x = torch.zeros(16, device="cuda")
    kernels = 50 if quick else 200
    replay = graph_of(lambda: x.add_(1), kernels)
    one = graph_of(lambda: x.add_(1), 1)
    return [{"what": "graph_kernel", "params": f"{kernels} tiny kernels in one graph",
             "seconds": gpu_time(replay, 20) / kernels},
            {"what": "graph_launch", "params": "replay() of a one-kernel graph",
             "seconds": wall(one, 200 if quick else 2000, torch.cuda.synchronize)}]


def attention_rows(dev, quick: bool, hbm_bytes_per_s: float | None, sync) -> tuple[list[dict], list[str]]:
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    kv_heads, group, d = (2, 2, 64) if quick else (8, 4, 128)
    batches = (1, 4) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256)
    contexts = (256,) if quick else (512, 2048, 8192, 32768)
    rows, notes = [], []
    kernels = {"sdpa": None}
    try:
        from flash_attn import flash_attn_with_kvcache  # noqa: F401
        kernels["flash_attn_paged"] = None
    except ImportError:
        notes.append("flash_attn not installed: no paged FlashAttention rows")
    try:
        import flashinfer  # noqa: F401
        kernels["flashinfer_paged"] = None
    except ImportError:
        notes.append("flashinfer not installed: no FlashInfer rows")
    for ctx in contexts:
        for b in batches:
            kv_bytes = 2 * b * kv_heads * ctx * d * (2 if dt == torch.bfloat16 else 4)
            if kv_bytes > 8e9:
                continue
            q = torch.randn(b, kv_heads, group, d, device=dev, dtype=dt)
            k = torch.randn(b, kv_heads, ctx, d, device=dev, dtype=dt)
            v = torch.randn_like(k)
            fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
            if "flash_attn_paged" in kernels and dev.type == "cuda":
                fns["flash_attn_paged"] = paged_flash(b, kv_heads, group, ctx, d, dt)
            if "flashinfer_paged" in kernels and dev.type == "cuda":
                fns["flashinfer_paged"] = paged_flashinfer(b, kv_heads, group, ctx, d, dt)
            for name, fn in fns.items():
                if dev.type == "cuda":
                    t = gpu_time(graph_of(fn, 20), 10) / 20
                else:
                    t = wall(fn, 5, sync)
                rows.append({"what": "decode_attention", "params": f"{name} batch={b} context={ctx} kv_heads="
                             f"{kv_heads} group={group} head_dim={d}", "seconds": t,
                             "fraction_of_hbm": kv_bytes / t / hbm_bytes_per_s if hbm_bytes_per_s else ""})
            del q, k, v
    return rows, notes


def paged_flash(b, kv_heads, group, ctx, d, dt, block=16):
    from flash_attn import flash_attn_with_kvcache

    blocks = (ctx + block - 1) // block
    kc = torch.randn(b * blocks, block, kv_heads, d, device="cuda", dtype=dt)
    vc = torch.randn_like(kc)
    table = torch.randperm(b * blocks, device="cuda", dtype=torch.int32).view(b, blocks)
    lens = torch.full((b,), ctx, device="cuda", dtype=torch.int32)
    q = torch.randn(b, 1, kv_heads * group, d, device="cuda", dtype=dt)
    return lambda: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table)


def paged_flashinfer(b, kv_heads, group, ctx, d, dt, page=16):
    import flashinfer

    pages = (ctx + page - 1) // page
    cache = torch.randn(b * pages, 2, page, kv_heads, d, device="cuda", dtype=dt)
    indptr = torch.arange(0, b * pages + 1, pages, device="cuda", dtype=torch.int32)
    indices = torch.arange(b * pages, device="cuda", dtype=torch.int32)
    last = torch.full((b,), ctx - (pages - 1) * page, device="cuda", dtype=torch.int32)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
    wrapper.plan(indptr, indices, last, kv_heads * group, kv_heads, d, page, q_data_type=dt)
    q = torch.randn(b, kv_heads * group, d, device="cuda", dtype=dt)
    return lambda: wrapper.run(q, cache)


def step_rows(dev, quick: bool, sync) -> list[dict]:
    vocab = 1024 if quick else 128256
    logits = torch.randn(8, vocab, device=dev)
    tokens = torch.zeros(8, 1, dtype=torch.long, device=dev)
    done = torch.zeros(8, dtype=torch.bool, device=dev)
    state = {"tokens": tokens}

    def step():
        nxt = logits.argmax(-1, keepdim=True)
        state["tokens"] = torch.cat([state["tokens"][:, -64:], nxt], dim=1)
        return bool((done | (nxt[:, 0] == 2)).all().item())

    per_step = wall(step, 50 if quick else 500, sync)
    gpu = gpu_time(step, 20) if dev.type == "cuda" else 0.0
    return [{"what": "step_host", "params": "argmax, append, stopping check .item() over 8 x vocab logits",
             "seconds": max(0.0, per_step - gpu), "wall_s": per_step}]


def sampling_rows(dev, quick: bool, sync) -> list[dict]:
    rows = []
    vocab = 1024 if quick else 128256
    for b in ((4,) if quick else (1, 16, 64, 256)):
        logits = torch.randn(b, vocab, device=dev)
        out = torch.empty_like(logits)

        def sample():
            p = torch.softmax(logits / 0.7, dim=-1)
            s, i = torch.sort(p, dim=-1, descending=True)
            keep = s.cumsum(-1) - s < 0.9
            p2 = torch.zeros_like(p).scatter_(-1, i, s * keep)
            return torch.multinomial(p2, 1)

        measure = (lambda f: gpu_time(f, 20)) if dev.type == "cuda" else (lambda f: wall(f, 5, sync))
        t, copy = measure(sample), measure(lambda: out.copy_(logits))
        rows.append({"what": "sampling", "params": f"temperature+top-p+multinomial batch={b} vocab={vocab}",
                     "seconds": t, "passes": t / copy})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "reports/inference/serving-kernels")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a minute; runs on a CPU)")
    ap.add_argument("--profile", default=None, help="parplan hardware profile (default: from the GPU name)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    notes, hbm = [], None
    if cuda:
        from gpu_common import profile_for
        from parplan.specs.hardware import load_hardware

        hw = load_hardware(args.profile or profile_for(torch.cuda.get_device_name()))
        hbm = hw.hbm_bandwidth
        notes.append(f"{torch.cuda.get_device_name()}, profile {hw.name}, torch {torch.__version__}")
    elif not args.quick:
        print("error: no CUDA device (use --quick to try the script on a CPU)", file=sys.stderr)
        return 2
    else:
        notes.append("CPU run (--quick): CUDA graph rows skipped; the numbers only check the script")
    torch.manual_seed(0)
    with torch.inference_mode():
        rows = host_rows(dev, args.quick, sync)
        if cuda:
            rows += graph_rows(args.quick)
        att, att_notes = attention_rows(dev, args.quick, hbm, sync)
        rows += att + step_rows(dev, args.quick, sync) + sampling_rows(dev, args.quick, sync)
    notes += att_notes
    fields = ["what", "params", "seconds", "fraction_of_hbm", "passes", "wall_s"]
    with open(os.path.join(args.out, "serving_kernels.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["# Serving kernels and host costs", "", *[f"- {n}" for n in notes], "",
             "| what | params | seconds | fraction of HBM | passes |", "|---|---|---|---|---|"]
    for r in rows:
        frac, passes = r.get("fraction_of_hbm", ""), r.get("passes", "")
        frac = f"{frac:.3f}" if frac != "" else ""
        passes = f"{passes:.1f}" if passes != "" else ""
        lines.append(f"| {r['what']} | {r['params']} | {r['seconds']:.3e} | {frac} | {passes} |")
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
