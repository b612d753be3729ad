"""One MoE layer, stage by stage, against parplan's op for each stage; and where its backward goes.

``scripts/gpu_moe.py`` times the whole plain-PyTorch MoE layer (router, top-k, sort-based permute, grouped
SwiGLU experts, weighted unpermute) at 1.2-1.9x parplan's prediction. This splits that gap:

* ``moe_ops.csv``: the forward as stages (router GEMM, softmax and top-k, the permute's sort and gather, the
  host sync that reads the tokens per expert, each grouped GEMM, the activation, the unpermute's scatter and
  weighted sum), each timed between CUDA events on a stream the CPU keeps ahead of (a GPU sleep queued
  first), beside the seconds parplan gives the op that stands for that stage;
* ``moe_kernels.csv``: every CUDA kernel of a forward and backward under ``torch.profiler``, summed by name
  and sorted into GEMM, sort/index (the permutes) and element-wise, with the step's wall time, so the share
  the GPU sits idle (the host launching, the sync) shows.

    PYTHONPATH=. python3 scripts/gpu_moe_ops.py OUT_DIR           # H100/H200, bf16, about a minute
    PYTHONPATH=. python3 scripts/gpu_moe_ops.py OUT_DIR --quick   # tiny fp32 shapes, CPU: a smoke test
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_moe import MoeLayer, grouped, looped, write  # noqa: E402
from parplan.cost import ops as ops_mod  # noqa: E402
from parplan.cost.kernels import op_times  # noqa: E402
from parplan.cost.moe import MoeParallel, block_kernels  # noqa: E402
from parplan.specs.hardware import load_hardware  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

MODELS = ("qwen3-30b-a3b", "mixtral-8x7b")
TOKENS = (4096, 16384)
# The stage of the measured forward, and the parplan ops that stand for it.
STAGES = (("router", ("router",)), ("softmax_topk", ("router_topk",)), ("permute", ("moe_permute",)),
          ("host_sync", ()), ("gate_up", ("expert_gate_up", "expert_up")), ("activation", ("expert_activation",)),
          ("down", ("expert_down",)), ("unpermute", ("moe_unpermute",)))


def staged_forward(layer: MoeLayer, x, mark):
    """The layer's forward with ``mark(name)`` after each stage (same math as ``MoeLayer.forward``)."""
    logits = layer.router(x)
    mark("router")
    probs, idx = torch.topk(torch.softmax(logits.float(), dim=-1), layer.k, dim=-1)
    mark("softmax_topk")
    flat = idx.flatten()
    order = torch.argsort(flat)
    rows = x.repeat_interleave(layer.k, dim=0)[order]
    mark("permute")
    counts = torch.bincount(flat, minlength=layer.w1.shape[0]).tolist()
    mark("host_sync")
    run = grouped if rows.is_cuda else looped
    up = run(rows, layer.w1, counts)
    mark("gate_up")
    gate, lin = up.chunk(2, dim=-1)
    act = torch.nn.functional.silu(gate) * lin
    mark("activation")
    down = run(act, layer.w2, counts)
    mark("down")
    out = torch.empty_like(down)
    out[order] = down
    y = (out.view(x.shape[0], layer.k, -1) * probs.to(x.dtype).unsqueeze(-1)).sum(1)
    mark("unpermute")
    return y


def stage_seconds(layer, x, reps):
    """Median seconds of each forward stage between CUDA events (a CPU clock on a CPU)."""
    out = collections.defaultdict(list)
    for rep in range(reps + 2):
        if x.is_cuda:
            torch.cuda.synchronize()
            torch.cuda._sleep(2_000_000)  # the CPU queues the stages ahead of the GPU
            events = [("start", torch.cuda.Event(enable_timing=True))]
            events[0][1].record()

            def mark(name):
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                events.append((name, e))
            staged_forward(layer, x, mark)
            torch.cuda.synchronize()
            if rep >= 2:
                for (_, a), (name, b) in zip(events, events[1:]):
                    out[name].append(a.elapsed_time(b) / 1e3)
        else:
            last = [time.perf_counter()]

            def mark(name):
                now = time.perf_counter()
                if rep >= 2:
                    out[name].append(now - last[0])
                last[0] = now
            staged_forward(layer, x, mark)
    return {k: statistics.median(v) for k, v in out.items()}


def predicted_ops(hw, model, tokens, dtype_name):
    """parplan's (forward, backward) seconds of each MoE op for ``tokens`` on one device."""
    d = ops_mod.LocalDims(batch=1, seq=tokens, seq_kv=tokens, hidden=model.hidden, heads=model.heads,
                          kv_heads=model.kv_heads, head_dim=model.head_dim, ffn=model.ffn_hidden, vocab=model.vocab,
                          norm_shard=1, moe=MoeParallel(1, 1, 1), moe_share=1.0)
    names = {k.name for k in block_kernels(model, d, tokens, "fused")}
    return {o.name: tuple(float(t) for t in op_times(hw, o, dtype_name))
            for o in ops_mod.layer_ops(model, d, dtype_name) if o.name in names}


def kind_of(kernel: str) -> str:
    k = kernel.lower()
    if any(w in k for w in ("gemm", "cutlass", "sm90", "xmma", "grouped_mm", "cublas", "nvjet")):
        return "gemm"
    if any(w in k for w in ("sort", "radix", "scan", "index", "gather", "scatter", "bincount", "histogram")):
        return "sort_index"
    if "memcpy" in k or "memset" in k:
        return "copy"
    return "elementwise"


def kernel_rows(layer, x, name, tokens):
    """Per-kernel CUDA seconds of one forward+backward, and the wall seconds of the same step."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        layer(x).sum().backward()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    trace = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moe_trace_{os.getpid()}.json")
    prof.export_chrome_trace(trace)
    with open(trace) as fh:
        events = json.load(fh).get("traceEvents", [])
    os.remove(trace)
    sums, calls = collections.defaultdict(float), collections.Counter()
    for ev in events:  # the GPU kernels of the trace (Kineto's "kernel" category), durations in microseconds
        if ev.get("cat") == "kernel" and "dur" in ev:
            sums[ev["name"]] += float(ev["dur"]) / 1e6
            calls[ev["name"]] += 1
    rows = [{"model": name, "tokens": tokens, "kernel": k[:120], "kind": kind_of(k), "calls": calls[k],
             "seconds": s, "step_wall_s": wall} for k, s in sorted(sums.items(), key=lambda kv: -kv[1])]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    dev, dtype, dtype_name = ("cuda", torch.bfloat16, "bf16") if not quick else ("cpu", torch.float32, "fp32")
    if cuda and not quick:
        from gpu_common import gpu_profile
        hw = gpu_profile()
    else:
        hw = load_hardware("h100-sxm")
    reps = args.reps or (2 if quick else 20)
    ops_rows, kern_rows = [], []
    for name in MODELS[:1] if quick else MODELS:
        model = load_model(name)
        h, f, e, k = model.hidden, model.expert_width, model.experts, model.top_k
        if quick:
            h, f, e, k = 64, 96, 4, 2
        layer = MoeLayer(h, f, e, k, 0, dev, dtype)
        for tokens in ((64, 256) if quick else TOKENS):
            x = torch.randn(tokens, h, device=dev, dtype=dtype, requires_grad=True)
            measured = stage_seconds(layer, x, reps)
            pred = predicted_ops(hw, model, tokens, dtype_name) if not quick else {}
            for stage, ops in STAGES:
                p = sum(pred.get(o, (0.0, 0.0))[0] for o in ops)
                ops_rows.append({"model": name, "tokens": tokens, "stage": stage, "measured_s": measured[stage],
                                 "predicted_s": p, "parplan_ops": "+".join(ops) or "-"})
                print(f"{name} {tokens} {stage:13s} measured {measured[stage] * 1e6:9.1f} us  predicted "
                      f"{p * 1e6:9.1f} us", flush=True)
            if cuda and not quick:
                kern_rows += kernel_rows(layer, x, name, tokens)
                write(os.path.join(args.out, "moe_kernels.csv"), kern_rows)
            write(os.path.join(args.out, "moe_ops.csv"), ops_rows)


if __name__ == "__main__":
    main()
