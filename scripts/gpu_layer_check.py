"""Measure every op of one transformer layer on one GPU and compare with parplan's per-op prediction.

Runs on a CUDA machine with PyTorch (``PYTHONPATH=. python3 scripts/gpu_layer_check.py --out DIR``).
For each case (model, tensor-parallel shard, micro-batch, sequence, dtype) it builds the
local shapes parplan uses (``parplan.cost.ops.layer_ops``), runs the equivalent PyTorch kernel
forward and backward, times each with CUDA events (median of repeats after warm-up), and
writes predicted and measured seconds per op to ``layer_ops.csv``; plus a GEMM sweep
(``gemm.csv``) and a device-to-device copy (``copy.csv``).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from parplan.cost.kernels import op_times  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402
from parplan.specs.model import with_seq_len  # noqa: E402
from parplan.cost.ops import LocalDims, layer_ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import gpu_profile, timed as cuda_timed  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CASES = [  # model, tp, micro-batch, seq, dtype, flash attention
    ("gpt3-175b", 8, 1, 2048, "fp16", False),
    ("gpt3-175b", 8, 1, 2048, "bf16", True),
    ("megatron-18.4b", 8, 4, 2048, "fp16", False),
    ("llama3.1-8b", 1, 1, 8192, "bf16", True),
    ("llama3.1-70b", 8, 1, 8192, "bf16", True),
    ("gpt3-1.3b", 1, 8, 2048, "bf16", True),
]


def timed(fn, reps=30, warmup=5):
    """Back-to-back calls, 10 per timed repeat (scripts/gpu_common.py)."""
    return cuda_timed(fn, reps, warmup, batch=10)


def fwd_bwd(make_inputs, f):
    """Median seconds of f forward, and of its backward (autograd over all inputs)."""
    inputs = make_inputs()
    out = f(*inputs)
    grad = torch.randn_like(out)
    t_f = timed(lambda: f(*inputs))

    def back():
        o = f(*inputs)
        torch.autograd.grad(o, [x for x in inputs if x.requires_grad], grad)
    t_fb = timed(back)
    return t_f, max(t_fb - t_f, 0.0)


def op_kernel(op, d, model, dtype, dev):
    dt = DT[dtype]

    def rnd(*shape, grad=True):
        return torch.randn(*shape, device=dev, dtype=dt, requires_grad=grad)
    tokens = int(d.batch * d.seq)
    if op.kind in ("matmul", "batched_matmul"):
        m, k, n, batch = (int(x) for x in op.gemm)
        if batch == 1:
            return (lambda: (rnd(m, k), rnd(k, n))), torch.matmul
        return (lambda: (rnd(batch, m, k), rnd(batch, k, n))), torch.bmm
    if op.kind == "flash_attention":
        b, s, hq, hkv, dh = int(d.batch), int(d.seq), int(d.heads), int(d.kv_heads), int(d.head_dim)

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hkv)
        return (lambda: (rnd(b, hq, s, dh), rnd(b, hkv, s, dh), rnd(b, hkv, s, dh))), sdpa
    h = model.hidden
    rows = int(tokens / d.norm_shard)
    if op.name in ("input_norm", "post_attn_norm"):
        w, bias = torch.ones(h, device=dev, dtype=dt), torch.zeros(h, device=dev, dtype=dt)
        if model.norm == "rmsnorm":
            return (lambda: (rnd(rows, h),)), (lambda x: F.rms_norm(x, (h,), w))
        return (lambda: (rnd(rows, h),)), (lambda x: F.layer_norm(x, (h,), w, bias))
    if op.name == "softmax":
        shape = (int(d.batch * d.heads), int(d.seq), int(d.seq_kv))
        return (lambda: (rnd(*shape),)), (lambda x: torch.softmax(x, -1))
    if op.name == "attn_dropout":
        shape = (int(d.batch * d.heads), int(d.seq), int(d.seq_kv))
        return (lambda: (rnd(*shape),)), (lambda x: F.dropout(x, 0.1, True))
    if op.name in ("attn_residual", "mlp_residual"):
        if op.fwd_bytes > rows * h * 3 * torch.finfo(dt).bits // 8:
            return (lambda: (rnd(rows, h), rnd(rows, h))), (lambda x, r: F.dropout(x, 0.1, True) + r)
        return (lambda: (rnd(rows, h), rnd(rows, h))), (lambda x, r: x + r)
    if op.name in ("gelu", "relu"):
        fn = F.gelu if op.name == "gelu" else F.relu
        return (lambda: (rnd(tokens, int(d.ffn)),)), fn
    if op.name == "swiglu":
        f = int(d.ffn)
        return (lambda: (rnd(tokens, 2 * f),)), (lambda x: F.silu(x[:, :f]) * x[:, f:])
    raise ValueError(op.name)


def layer_cases(hw, out_dir, dev):
    path = os.path.join(out_dir, "layer_ops.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "op", "kind", "predicted_fwd_s", "measured_fwd_s", "predicted_bwd_s", "measured_bwd_s"])
        for name, tp, mb, seq, dtype, flash in CASES:
            model = with_seq_len(load_model(name), seq)
            d = LocalDims(batch=mb, seq=seq, seq_kv=seq, hidden=model.hidden, heads=model.heads // tp,
                          kv_heads=max(1, model.kv_heads // tp), head_dim=model.head_dim,
                          ffn=model.ffn_hidden // tp, vocab=model.vocab // tp, norm_shard=1)
            dropout = model.position in ("learned", "alibi")
            case = f"{name} tp{tp} mb{mb} s{seq} {dtype}{' flash' if flash else ''}"
            tot = [0.0, 0.0, 0.0, 0.0]
            for op in layer_ops(model, d, dtype, flash, dropout):
                pf, pb = (float(x) for x in op_times(hw, op, dtype))
                make, fn = op_kernel(op, d, model, dtype, dev)
                mf, mbk = fwd_bwd(make, fn)
                w.writerow([case, op.name, op.kind, pf, mf, pb, mbk])
                fh.flush()
                for i, v in enumerate((pf, mf, pb, mbk)):
                    tot[i] += v
                torch.cuda.empty_cache()
            w.writerow([case, "LAYER", "total", *tot])
            fh.flush()
            print(f"{case:<40} fwd pred {tot[0]*1e3:7.3f} ms meas {tot[1]*1e3:7.3f} ms | "
                  f"bwd pred {tot[2]*1e3:7.3f} ms meas {tot[3]*1e3:7.3f} ms", flush=True)


def gemm_sweep(hw, out_dir, dev):
    from parplan.cost.roofline import matmul_time_s
    shapes = [(s, s, s) for s in (256, 512, 1024, 2048, 4096, 8192, 16384)]
    shapes += [(2048, 12288, 4608), (2048, 1536, 12288), (2048, 12288, 6144), (2048, 6144, 12288),
               (8192, 4096, 6144), (8192, 4096, 28672), (8192, 14336, 4096), (1, 8192, 8192), (16, 8192, 8192),
               (64, 8192, 28672), (256, 8192, 8192)]
    with open(os.path.join(out_dir, "gemm.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dtype", "m", "k", "n", "measured_s", "predicted_s", "tflops", "efficiency"])
        for dtype in ("bf16", "fp16"):
            for m, k, n in shapes:
                a = torch.randn(m, k, device=dev, dtype=DT[dtype])
                b = torch.randn(k, n, device=dev, dtype=DT[dtype])
                sets = max(1, min(16, -(-256 * 2**20 // ((m * k + k * n) * a.element_size()))))
                pairs = [(a, b)] + [(torch.randn_like(a), torch.randn_like(b)) for _ in range(sets - 1)]
                turn = [0]

                def mm():  # rotate operands through more than the L2 cache
                    x, y = pairs[turn[0] % sets]
                    turn[0] += 1
                    return x @ y
                t = timed(mm, reps=20)
                fl = 2 * m * k * n
                w.writerow([dtype, m, k, n, t, float(matmul_time_s(hw, m, k, n, dtype)), fl / t / 1e12,
                            fl / t / hw.peak(dtype)])
                fh.flush()
                del a, b, pairs


def copy_bw(out_dir, dev):
    x = torch.empty(2 * 2 ** 30, dtype=torch.uint8, device=dev).random_(0, 255)
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x), reps=20)
    with open(os.path.join(out_dir, "copy.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["bytes_moved", "seconds", "bytes_per_s"])
        w.writerow([2 * x.numel(), t, 2 * x.numel() / t])
    print(f"copy {2 * x.numel() / t / 1e12:.3f} TB/s (read + write)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--hw", default=None, help="profile to predict with (default: from the GPU's name)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    hw = gpu_profile(args.hw)
    os.makedirs(args.out, exist_ok=True)
    copy_bw(args.out, dev)
    gemm_sweep(hw, args.out, dev)
    layer_cases(hw, args.out, dev)


if __name__ == "__main__":
    main()
