"""Expert GEMM rates against tokens per expert, and one MoE layer's forward and backward, against parplan.

parplan times a device's routed experts as one grouped GEMM (``BATCHED``: the local experts' products in
one launch) or, for a framework that loops over its experts, one GEMM per expert, each through the
size-aware roofline (:mod:`parplan.cost.roofline`: wave quantization of the output tiles). Fine-grained
experts leave few tokens per expert, so this measures where that holds:

* ``moe_gemm.csv``: for expert shapes of shipped MoE models (hidden x expert width) and several numbers of
  local experts, the gate/up GEMM of every expert at each tokens-per-expert, run as one grouped GEMM
  (``torch._grouped_mm`` where this PyTorch has it, else ``torch.bmm`` over equal groups) and as a Python
  loop of GEMMs; seconds, achieved TFLOP/s, and parplan's prediction of each.
* ``moe_layer.csv``: one MoE layer of a shipped model on one device (no expert parallelism): router GEMM,
  top-k, permute (a sort by expert), the grouped expert GEMMs with SwiGLU, the weighted unpermute and the
  shared experts, forward and forward+backward, for several token counts under a router that picks experts
  uniformly at random; seconds and parplan's prediction of the same block (``layer_ops``' MoE ops).

Run on a GPU (the CSVs land in the folder given first)::

    PYTHONPATH=. python3 scripts/gpu_moe.py OUT_DIR            # H100/H200: bf16, full sizes, a few minutes
    PYTHONPATH=. python3 scripts/gpu_moe.py OUT_DIR --quick    # tiny shapes in fp32: runs on a CPU in seconds

``--hw`` names the hardware profile to predict with (default: the one of this GPU; ``h100-sxm`` on a CPU).
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
from parplan.cost import ops as ops_mod  # noqa: E402
from parplan.cost.kernels import gemm_time_s, op_times  # noqa: E402
from parplan.cost.moe import MoeParallel, block_kernels  # noqa: E402
from parplan.specs.hardware import load_hardware  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

# (model, hidden, expert width): Mixtral 8x7B, Qwen3-30B-A3B, DeepSeek-V3, gpt-oss-120b
SHAPES = (("mixtral-8x7b", 4096, 14336), ("qwen3-30b-a3b", 2048, 768), ("deepseek-v3", 7168, 2048),
          ("gpt-oss-120b", 2880, 2880))
LOCAL_EXPERTS = (1, 4, 8, 16, 32)
TOKENS_PER_EXPERT = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LAYER_MODELS = ("qwen3-30b-a3b", "mixtral-8x7b")
LAYER_TOKENS = (1024, 4096, 16384)
QUICK = {"shapes": (("tiny", 64, 96),), "experts": (1, 4), "tpe": (8, 32, 128), "layer_tokens": (64, 256)}


def seconds(fn, reps: int, warmup: int = 2) -> float:
    """Median seconds of ``fn``: CUDA events on a GPU, the wall clock on a CPU."""
    if torch.cuda.is_available():
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gpu_common import timed

        return timed(fn, reps=reps, warmup=warmup)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def offsets(counts, device):
    """torch._grouped_mm's row offsets: built from a host list, a copy to the GPU (keep it out of timed calls)."""
    return torch.cumsum(torch.as_tensor(counts, device=device, dtype=torch.int32), 0).to(torch.int32)


def grouped(x, w, counts, offs=None):
    """One launch over every expert: torch._grouped_mm with per-expert row offsets, or bmm over equal groups."""
    if hasattr(torch, "_grouped_mm") and x.is_cuda:
        return torch._grouped_mm(x, w, offs=offsets(counts, x.device) if offs is None else offs)
    e = w.shape[0]
    return torch.bmm(x.view(e, -1, x.shape[-1]), w)


def looped(x, w, counts):
    outs, start = [], 0
    for i, c in enumerate(counts):
        outs.append(x[start:start + c] @ w[i])
        start += c
    return torch.cat(outs)


def gemm_rows(hw, dev, dtype, shapes, experts, tpe, reps, dtype_name):
    rows = []
    for name, h, f in shapes:
        for e in experts:
            w = torch.randn(e, h, 2 * f, device=dev, dtype=dtype) * 0.02
            for t in tpe:
                x = torch.randn(e * t, h, device=dev, dtype=dtype)
                counts = [t] * e
                flops = 2.0 * e * t * h * 2 * f
                row = {"model": name, "hidden": h, "expert_ffn": f, "local_experts": e, "tokens_per_expert": t}
                offs = offsets(counts, x.device) if x.is_cuda else None
                launches = (("grouped", lambda: grouped(x, w, counts, offs)), ("looped", lambda: looped(x, w, counts)))
                for how, fn in launches:
                    s = seconds(fn, reps)
                    row[f"{how}_s"] = s
                    row[f"{how}_tflops"] = flops / s / 1e12
                row["predicted_grouped_s"] = float(gemm_time_s(hw, t, h, 2 * f, dtype_name, batch=e))
                row["predicted_looped_s"] = e * float(gemm_time_s(hw, t, h, 2 * f, dtype_name))
                rows.append(row)
                print(f"{name} E={e} t={t}: grouped {row['grouped_tflops']:.1f} TFLOP/s (predicted "
                      f"{flops / row['predicted_grouped_s'] / 1e12:.1f}), looped {row['looped_tflops']:.1f}", flush=True)
    return rows


class MoeLayer(torch.nn.Module):
    """Router, top-k, permute, grouped SwiGLU experts, weighted unpermute, shared experts: one device, no EP."""

    def __init__(self, h, f, experts, k, shared_f, dev, dtype, launch=None):
        super().__init__()
        self.k = k
        self.launch = launch or ("grouped" if torch.device(dev).type == "cuda" else "loop")  # or "loop"
        self.router = torch.nn.Linear(h, experts, bias=False, device=dev, dtype=dtype)
        self.w1 = torch.nn.Parameter(torch.randn(experts, h, 2 * f, device=dev, dtype=dtype) * 0.02)
        self.w2 = torch.nn.Parameter(torch.randn(experts, f, h, device=dev, dtype=dtype) * 0.02)
        self.shared = torch.nn.Sequential(torch.nn.Linear(h, 2 * shared_f, bias=False, device=dev, dtype=dtype),
                                          torch.nn.Linear(shared_f, h, bias=False, device=dev, dtype=dtype)) \
            if shared_f else None

    def forward(self, x):
        scores = torch.softmax(self.router(x).float(), dim=-1)
        probs, idx = torch.topk(scores, self.k, dim=-1)
        flat = idx.flatten()
        order = torch.argsort(flat)
        rows = x.repeat_interleave(self.k, dim=0)[order]
        counts = torch.bincount(flat, minlength=self.w1.shape[0]).tolist()
        run = looped if self.launch == "loop" else grouped
        up = run(rows, self.w1, counts)
        gate, lin = up.chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate) * lin
        down = run(act, self.w2, counts)
        out = torch.empty_like(down)
        out[order] = down
        y = (out.view(x.shape[0], self.k, -1) * probs.to(x.dtype).unsqueeze(-1)).sum(1)
        if self.shared is not None:
            g, l_ = self.shared[0](x).chunk(2, dim=-1)
            y = y + self.shared[1](torch.nn.functional.silu(g) * l_)
        return y


def predicted_block(hw, model, tokens, dtype_name):
    """parplan's seconds (forward, forward + backward) of the MoE block's ops for ``tokens`` on one device, as
    this script's plain-PyTorch layer runs them (eager activation and permutes)."""
    d = ops_mod.LocalDims(batch=1, seq=tokens, seq_kv=tokens, hidden=model.hidden, heads=model.heads,
                          kv_heads=model.kv_heads, head_dim=model.head_dim, ffn=model.ffn_hidden, vocab=model.vocab,
                          norm_shard=1, moe=MoeParallel(1, 1, 1), moe_share=1.0)
    names = {k.name for k in block_kernels(model, d, tokens, "fused")}
    # This layer is plain PyTorch: its activation and its permutes are eager kernels.
    ops = [o for o in ops_mod.layer_ops(model, d, dtype_name, elementwise={"activation": "eager"}, moe_permute="eager")
           if o.name in names]
    times = [op_times(hw, o, dtype_name) for o in ops]
    fwd = sum(float(t[0]) for t in times)
    return fwd, fwd + sum(float(t[1]) for t in times)


def layer_rows(hw, dev, dtype, models, token_counts, reps, dtype_name, quick):
    rows = []
    for name in models:
        model = load_model(name)
        h, f, e, k = model.hidden, model.expert_width, model.experts, model.top_k
        shared = model.shared_experts * model.shared_width
        if quick:
            h, f, e, k, shared = 64, 96, 4, 2, 0
        layer = MoeLayer(h, f, e, k, shared, dev, dtype)
        for tokens in token_counts:
            x = torch.randn(tokens, h, device=dev, dtype=dtype, requires_grad=True)
            fwd = seconds(lambda: layer(x), reps)

            def step():
                layer(x).sum().backward()
            both = seconds(step, reps)
            row = {"model": name, "hidden": h, "expert_ffn": f, "experts": e, "top_k": k, "tokens": tokens,
                   "forward_s": fwd, "forward_backward_s": both}
            if not quick:
                row["predicted_forward_s"], row["predicted_forward_backward_s"] = predicted_block(hw, model, tokens,
                                                                                                  dtype_name)
            rows.append(row)
            print(f"{name} layer, {tokens} tokens: forward {fwd * 1e3:.3f} ms, fwd+bwd {both * 1e3:.3f} ms", flush=True)
    return rows


def write(path, rows):
    """The rows as a CSV, replaced whole (a temporary file renamed over it), so a reader never sees half."""
    if not rows:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for moe_gemm.csv and moe_layer.csv")
    ap.add_argument("--quick", action="store_true", help="tiny fp32 shapes (runs on a CPU)")
    ap.add_argument("--hw", default=None, help="hardware profile to predict with")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    quick = args.quick or not cuda
    dtype, dtype_name = (torch.float32, "fp32") if quick else (torch.bfloat16, "bf16")
    if cuda and not args.hw:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gpu_common import gpu_profile

        hw = gpu_profile()
    else:
        hw = load_hardware(args.hw or "h100-sxm")
    reps = args.reps or (3 if quick else 20)
    if quick:
        gemm = gemm_rows(hw, dev, dtype, QUICK["shapes"], QUICK["experts"], QUICK["tpe"], reps, dtype_name)
        layer = layer_rows(hw, dev, dtype, LAYER_MODELS[:1], QUICK["layer_tokens"], reps, dtype_name, True)
    else:
        gemm = gemm_rows(hw, dev, dtype, SHAPES, LOCAL_EXPERTS, TOKENS_PER_EXPERT, reps, dtype_name)
        layer = layer_rows(hw, dev, dtype, LAYER_MODELS, LAYER_TOKENS, reps, dtype_name, False)
    write(os.path.join(args.out, "moe_gemm.csv"), gemm)
    write(os.path.join(args.out, "moe_layer.csv"), layer)


if __name__ == "__main__":
    main()
