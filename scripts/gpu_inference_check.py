"""Measure prefill and decode of a transformer layer stack on one GPU and compare with parplan's inference model.

Run from the repository root on a CUDA machine with PyTorch::

    PYTHONPATH=. python3 scripts/gpu_inference_check.py --out DIR      # or set $OUT

It builds ``--layers`` (default 4) Llama-style layers with the shapes of
``--model`` (default llama3.1-8b) and random bf16 weights: RMSNorm, one fused
QKV GEMM, SDPA attention (grouped-query), the output projection, RMSNorm, the
fused gate/up GEMM, SiLU x up, the down projection, two residual adds (no RoPE:
parplan does not count it). Then it times, with CUDA events (median of
``--reps`` after ``--warmup``):

* **prefill**: one sequence of ``--input-len`` tokens through the stack (causal
  SDPA), writing its K and V into a cache;
* **decode**: one step of ``batch`` sequences (1..256) whose caches already hold
  ``--context`` tokens: each layer appends one K/V per sequence and attends over
  the whole cache (the query heads of a KV head packed as the query rows, as
  decode kernels do). Timed both eagerly and replayed as a CUDA graph (what
  serving engines do for decode), when capture works;
* **decode ops**: each GEMM and the attention of one layer alone, per batch.

The prediction is parplan's (``parplan.step.serve.pass_cost``) for the same
slice on one device of the profile the GPU name selects (h200 for an H200,
h100-pcie for an H100 PCIe, else h100-sxm; ``--profile`` overrides), with the
stack this script runs (``validation/stacks/gpu-inference-check.yaml``; decode
under a CUDA graph, prefill eager) and the model without position encoding, as
``parplan validate`` predicts the records of ``validation/serving-runs.yaml``
made from this script's output.
Writes ``inference_check.csv`` (one row per phase/batch), ``decode_ops.csv``,
``summary.md`` and ``meta.json`` under the output folder.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from parplan.specs.hardware import load_hardware  # noqa: E402
from parplan.specs.cluster import make_cluster
from parplan.step.serve import pass_cost  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import profile_for, timed  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_BATCHES = "1,2,4,8,16,32,64,128,256"


def rms_norm(x, w, eps=1e-5):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w


def make_layers(model, n, dt, dev):
    h, q, kv, f = model.hidden, model.heads * model.head_dim, model.kv_heads * model.head_dim, model.ffn_hidden

    def w(k, m):
        return torch.randn(k, m, device=dev, dtype=dt) * (k ** -0.5)
    return [{"wqkv": w(h, q + 2 * kv), "wo": w(q, h), "wgu": w(h, 2 * f), "wd": w(f, h),
             "n1": torch.ones(h, device=dev, dtype=dt), "n2": torch.ones(h, device=dev, dtype=dt)}
            for _ in range(n)]


def sdpa_gqa(q, k, v, causal):
    """SDPA with fewer K/V heads than query heads (q: b, H, s, d; k, v: b, KV, s, d)."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
    except TypeError:  # PyTorch without enable_gqa
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                              is_causal=causal)


def mlp(x, L, f):
    y = rms_norm(x, L["n2"])
    gu = y @ L["wgu"]
    return x + (F.silu(gu[:, :f]) * gu[:, f:]) @ L["wd"]


def prefill_fn(model, layers, x, caches):
    """One sequence of T tokens through the stack; its K/V written into ``caches``."""
    H, KV, d, f = model.heads, model.kv_heads, model.head_dim, model.ffn_hidden
    q_cols, kv_cols = H * d, KV * d
    T = x.shape[0]

    def run():
        h = x
        for L, (ck, cv) in zip(layers, caches):
            qkv = rms_norm(h, L["n1"]) @ L["wqkv"]
            q = qkv[:, :q_cols].view(T, H, d).transpose(0, 1).unsqueeze(0)
            k = qkv[:, q_cols:q_cols + kv_cols].view(T, KV, d).transpose(0, 1)
            v = qkv[:, q_cols + kv_cols:].view(T, KV, d).transpose(0, 1)
            ck[0, :, :T].copy_(k)
            cv[0, :, :T].copy_(v)
            o = sdpa_gqa(q, ck[:, :, :T], cv[:, :, :T], True)
            h = h + o[0].transpose(0, 1).reshape(T, q_cols) @ L["wo"]
            h = mlp(h, L, f)
        return h
    return run


def decode_fn(model, layers, x, caches, pos):
    """One decode step of B sequences at cache position ``pos`` (keys 0..pos)."""
    H, KV, d, f = model.heads, model.kv_heads, model.head_dim, model.ffn_hidden
    q_cols, kv_cols, g = H * d, KV * d, H // KV
    B = x.shape[0]

    def run():
        h = x
        for L, (ck, cv) in zip(layers, caches):
            qkv = rms_norm(h, L["n1"]) @ L["wqkv"]
            q = qkv[:, :q_cols].view(B, KV, g, d)  # the query heads of each KV head as its query rows
            ck[:, :, pos:pos + 1].copy_(qkv[:, q_cols:q_cols + kv_cols].view(B, KV, 1, d))
            cv[:, :, pos:pos + 1].copy_(qkv[:, q_cols + kv_cols:].view(B, KV, 1, d))
            o = F.scaled_dot_product_attention(q, ck[:, :, :pos + 1], cv[:, :, :pos + 1])
            h = h + o.reshape(B, q_cols) @ L["wo"]
            h = mlp(h, L, f)
        return h
    return run


def as_graph(fn):
    """``fn`` captured as a CUDA graph (replay callable), or None when capture fails."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        return g.replay
    except Exception as exc:  # noqa: BLE001 - report and fall back to eager timing
        print(f"  CUDA graph capture failed ({type(exc).__name__}: {exc}); eager timing only", flush=True)
        return None


STACK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "validation", "stacks",
                     "gpu-inference-check.yaml")


def predicted(model, cluster, phase, seqs, tokens, context, dtype, n_layers):
    """parplan's seconds for ``n_layers`` layers on one device: total and by category, plus per-op."""
    from dataclasses import replace

    from parplan.step.serve_software import serving_software

    sw = serving_software(STACK, "gpu", cuda_graphs=phase == "decode")
    cost = pass_cost(replace(model, position="none"), cluster, 1, 1, phase, seqs, tokens, context, dtype,
                     software=sw)
    parts = {k: float(v) * n_layers for k, v in cost.layer.items()}
    ops = {o.name: float(t) for o, t in zip(cost.ops, cost.op_times)}
    return sum(parts.values()) + float(cost.launch_s), parts, ops


def decode_op_kernels(model, B, pos, dt, dev):
    """(name, callable) for each GEMM and the attention of one decode layer at batch B."""
    H, KV, d, h, f = model.heads, model.kv_heads, model.head_dim, model.hidden, model.ffn_hidden
    q_cols, kv_cols, g = H * d, KV * d, H // KV

    def rnd(*shape):
        return torch.randn(*shape, device=dev, dtype=dt)
    x, wqkv, a, wo = rnd(B, h), rnd(h, q_cols + 2 * kv_cols), rnd(B, q_cols), rnd(q_cols, h)
    y, wgu, m, wd = rnd(B, h), rnd(h, 2 * f), rnd(B, f), rnd(f, h)
    q, ck, cv = rnd(B, KV, g, d), rnd(B, KV, pos + 1, d), rnd(B, KV, pos + 1, d)
    return [
        ("qkv_proj", lambda: x @ wqkv),
        ("out_proj", lambda: a @ wo),
        ("mlp_gate_up", lambda: y @ wgu),
        ("mlp_down", lambda: m @ wd),
        ("decode_attention", lambda: F.scaled_dot_product_attention(q, ck, cv)),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "reports/inference/gpu-check")
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--input-len", type=int, default=2048)
    ap.add_argument("--context", type=int, default=2048, help="tokens already in each sequence's KV cache")
    ap.add_argument("--batches", default=DEFAULT_BATCHES)
    ap.add_argument("--dtype", choices=sorted(DT), default="bf16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", default=None, help="parplan hardware profile (default: from the GPU name)")
    ap.add_argument("--no-cuda-graph", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cuda")
    gpu = torch.cuda.get_device_name(0)
    prof = args.profile or profile_for(gpu)
    hw = load_hardware(prof)
    cluster = make_cluster(hw, 1)
    model = load_model(args.model)
    dt = DT[args.dtype]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{gpu}: comparing with profile {prof}; {args.model} x {args.layers} layers, {args.dtype}", flush=True)

    layers = make_layers(model, args.layers, dt, dev)
    KV, d = model.kv_heads, model.head_dim
    rows, op_rows = [], []

    # ---- prefill: one sequence of input_len tokens
    T = args.input_len
    caches = [(torch.zeros(1, KV, T, d, device=dev, dtype=dt), torch.zeros(1, KV, T, d, device=dev, dtype=dt))
              for _ in layers]
    x = torch.randn(T, model.hidden, device=dev, dtype=dt)
    with torch.inference_mode():
        t_pre = timed(prefill_fn(model, layers, x, caches), args.reps, args.warmup)
    p_tot, p_parts, _ = predicted(model, cluster, "prefill", 1, T, T, args.dtype, args.layers)
    rows.append({"phase": "prefill", "batch": 1, "tokens": T, "context": T, "measured_s": t_pre,
                 "measured_eager_s": t_pre, "measured_graph_s": "", "predicted_s": p_tot, **{
                     f"predicted_{k}_s": v for k, v in p_parts.items()}})
    print(f"prefill {T} tokens: measured {t_pre * 1e3:.3f} ms, predicted {p_tot * 1e3:.3f} ms", flush=True)
    del caches, x
    torch.cuda.empty_cache()

    # ---- decode steps at each batch, caches holding `context` tokens
    pos = args.context
    for B in batches:
        try:
            caches = [(torch.randn(B, KV, pos + 1, d, device=dev, dtype=dt),
                       torch.randn(B, KV, pos + 1, d, device=dev, dtype=dt)) for _ in layers]
        except torch.cuda.OutOfMemoryError:
            print(f"decode batch {B}: KV cache does not fit; stopping", flush=True)
            break
        x = torch.randn(B, model.hidden, device=dev, dtype=dt)
        with torch.inference_mode():
            step = decode_fn(model, layers, x, caches, pos)
            t_eager = timed(step, args.reps, args.warmup)
        t_graph = None
        if not args.no_cuda_graph:
            with torch.inference_mode():
                replay = as_graph(step)
            if replay is not None:
                t_graph = timed(replay, args.reps, args.warmup)
        p_tot, p_parts, p_ops = predicted(model, cluster, "decode", B, 1, pos + 1, args.dtype, args.layers)
        meas = t_graph if t_graph is not None else t_eager
        rows.append({"phase": "decode", "batch": B, "tokens": B, "context": pos + 1, "measured_s": meas,
                     "measured_eager_s": t_eager, "measured_graph_s": t_graph if t_graph is not None else "",
                     "predicted_s": p_tot, **{f"predicted_{k}_s": v for k, v in p_parts.items()}})
        print(f"decode batch {B:4d}: measured {meas * 1e3:.3f} ms ({'graph' if t_graph else 'eager'}; eager "
              f"{t_eager * 1e3:.3f}), predicted {p_tot * 1e3:.3f} ms", flush=True)
        del caches, x, step
        torch.cuda.empty_cache()
        with torch.inference_mode():
            for name, fn in decode_op_kernels(model, B, pos, dt, dev):
                op_rows.append({"batch": B, "op": name, "measured_s": timed(fn, args.reps, args.warmup),
                                "predicted_s": p_ops[name]})
        torch.cuda.empty_cache()

    # ---- outputs
    for r in rows:
        r["measured_over_predicted"] = r["measured_s"] / r["predicted_s"]
        r.update({"model": args.model, "layers": args.layers, "dtype": args.dtype, "gpu": gpu, "profile": prof})
    fields = ["phase", "batch", "tokens", "context", "predicted_s", "measured_s", "measured_over_predicted",
              "measured_eager_s", "measured_graph_s", "predicted_matmul_s", "predicted_attention_s",
              "predicted_other_s", "predicted_tp_comm_s", "model", "layers", "dtype", "gpu", "profile"]
    with open(os.path.join(args.out, "inference_check.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "decode_ops.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["batch", "op", "predicted_s", "measured_s", "measured_over_predicted"])
        w.writeheader()
        for r in op_rows:
            w.writerow({**r, "measured_over_predicted": r["measured_s"] / r["predicted_s"]})
    lines = [f"# Inference on one {gpu}: predicted (profile {prof}) vs measured",
             "",
             f"{args.model} shapes, {args.layers} layers, random {args.dtype} weights; prefill of {T} tokens; "
             f"decode with {pos} cached tokens per sequence. CUDA events, median of {args.reps} after "
             f"{args.warmup} warm-ups; decode measured as a CUDA graph replay where capture worked.",
             "",
             "| phase | batch | predicted ms | measured ms | measured/predicted | eager ms |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['batch']} | {r['predicted_s'] * 1e3:.3f} | {r['measured_s'] * 1e3:.3f} | "
                     f"{r['measured_over_predicted']:.2f} | {r['measured_eager_s'] * 1e3:.3f} |")
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "meta.json"), "w") as fh:
        json.dump({"gpu": gpu, "profile": prof, "torch": torch.__version__, "cuda": torch.version.cuda,
                   "model": args.model, "layers": args.layers, "input_len": T, "context": pos,
                   "batches": batches, "dtype": args.dtype, "reps": args.reps, "warmup": args.warmup}, fh, indent=2)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
