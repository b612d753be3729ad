"""Time a GPT layer written as Megatron-LM 2019 wrote it (eager PyTorch, no fused kernels) on one GPU.

Runs on a CUDA machine with PyTorch (``PYTHONPATH=. python3 scripts/gpu_unfused_layer.py --out DIR``).
The layer is one tensor-parallel shard, without its all-reduces: LayerNorm; the QKV linear with
its bias added by a separate kernel; q, k, v transposed to [b, a, s, d]; scores scaled, multiplied
by the causal mask and offset by ``-10000 (1 - mask)``; softmax; dropout; the context transposed
back; the output linear, bias, dropout and residual add as separate kernels; then the MLP likewise
(GeLU as one kernel, as the 2019 code's ``torch.jit.script`` gelu). Forward and forward + backward
are timed back to back with CUDA events (median of repeats), and written to ``unfused_layer.csv``
beside parplan's prediction of the same layer with ``fused=False`` and with Megatron's fused kernels.
"""
from __future__ import annotations

import argparse
import csv
import math
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
from gpu_common import gpu_profile, timed  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16}
CASES = [  # model, tp, micro-batch, seq, dtype: the two Megatron-LM 2019 GPT-2 runs, and GPT-3 175B
    ("gpt2-2.5b", 2, 8, 1024, "fp16"),
    ("gpt2-8.3b", 8, 8, 1024, "fp16"),
    ("gpt3-175b", 8, 1, 2048, "fp16"),
]


def layer_2019(x, w, mask, heads_local, head_dim, drop=0.1):
    """Megatron-LM 2019 ``mpu/transformer.py`` GPT-2 layer on one shard, op by op."""
    b, s, h = x.shape
    ln1 = F.layer_norm(x, (h,), w["ln1_w"], w["ln1_b"])
    qkv = torch.matmul(ln1, w["qkv_w"]) + w["qkv_b"]
    q, k, v = qkv.chunk(3, dim=-1)

    def heads(t):
        return t.view(b, s, heads_local, head_dim).permute(0, 2, 1, 3)
    q, k, v = heads(q), heads(k), heads(v)
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores = scores / math.sqrt(head_dim)
    scores = torch.mul(scores, mask) - 10000.0 * (1.0 - mask)
    probs = F.dropout(torch.softmax(scores, dim=-1), drop, True)
    ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous().view(b, s, heads_local * head_dim)
    attn = F.dropout(torch.matmul(ctx, w["proj_w"]) + w["proj_b"], drop, True)
    x = x + attn
    ln2 = F.layer_norm(x, (h,), w["ln2_w"], w["ln2_b"])
    up = F.gelu(torch.matmul(ln2, w["fc1_w"]) + w["fc1_b"], approximate="tanh")
    down = F.dropout(torch.matmul(up, w["fc2_w"]) + w["fc2_b"], drop, True)
    return x + down


def run_case(hw, name, tp, mb, seq, dtype, dev):
    model = with_seq_len(load_model(name), seq)
    h, hd = model.hidden, model.head_dim
    a, f = model.heads // tp, model.ffn_hidden // tp
    dt = DT[dtype]

    def p(*shape):
        return (torch.randn(*shape, device=dev, dtype=dt) * 0.02).requires_grad_()
    w = {"ln1_w": p(h), "ln1_b": p(h), "qkv_w": p(h, 3 * a * hd), "qkv_b": p(3 * a * hd),
         "proj_w": p(a * hd, h), "proj_b": p(h), "ln2_w": p(h), "ln2_b": p(h),
         "fc1_w": p(h, f), "fc1_b": p(f), "fc2_w": p(f, h), "fc2_b": p(h)}
    x = torch.randn(mb, seq, h, device=dev, dtype=dt, requires_grad=True)
    mask = torch.tril(torch.ones(seq, seq, device=dev, dtype=dt)).view(1, 1, seq, seq)
    grad = torch.randn(mb, seq, h, device=dev, dtype=dt)
    params = [x, *w.values()]
    fwd = timed(lambda: layer_2019(x, w, mask, a, hd), batch=5)
    both = timed(lambda: torch.autograd.grad(layer_2019(x, w, mask, a, hd), params, grad), batch=5)
    d = LocalDims(batch=mb, seq=seq, seq_kv=seq, hidden=h, heads=a, kv_heads=a, head_dim=hd, ffn=f,
                  vocab=model.vocab // tp, norm_shard=1)
    pred = {}
    for fused in (False, True):
        ts = [op_times(hw, o, dtype) for o in layer_ops(model, d, dtype, False, True, fused)]
        pred[fused] = (sum(float(t[0]) for t in ts), sum(float(t[1]) for t in ts))
    return {"case": f"{name} tp{tp} mb{mb} s{seq} {dtype}", "measured_fwd_s": fwd,
            "measured_bwd_s": max(both - fwd, 0.0), "predicted_unfused_fwd_s": pred[False][0],
            "predicted_unfused_bwd_s": pred[False][1], "predicted_fused_fwd_s": pred[True][0],
            "predicted_fused_bwd_s": pred[True][1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--hw", default=None, help="profile to predict with (default: from the GPU's name)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    hw = gpu_profile(args.hw)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "unfused_layer.csv")
    with open(path + ".part", "w", newline="") as fh:
        out = None
        for case in CASES:
            row = run_case(hw, *case, dev)
            if out is None:
                out = csv.DictWriter(fh, fieldnames=list(row))
                out.writeheader()
            out.writerow(row)
            fh.flush()
            print(f"{row['case']:<32} fwd meas {row['measured_fwd_s']*1e3:7.3f} ms "
                  f"pred unfused {row['predicted_unfused_fwd_s']*1e3:7.3f} fused {row['predicted_fused_fwd_s']*1e3:7.3f}"
                  f" | bwd meas {row['measured_bwd_s']*1e3:7.3f} pred unfused {row['predicted_unfused_bwd_s']*1e3:7.3f}"
                  f" fused {row['predicted_fused_bwd_s']*1e3:7.3f}", flush=True)
            torch.cuda.empty_cache()
    os.replace(path + ".part", path)


if __name__ == "__main__":
    main()
