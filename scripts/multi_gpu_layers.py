"""Real tensor-parallel, sequence-parallel and FSDP transformer layers across the GPUs of one host, against parplan.

Run under torchrun, one process per GPU (gloo on CPUs for a small check):

    torchrun --nproc-per-node 8 scripts/multi_gpu_layers.py --model llama3.1-70b --seq 4096 --out DIR
    torchrun --nproc-per-node 4 scripts/multi_gpu_layers.py --device cpu --tiny --out DIR

Layouts (every group of a partition runs at once, as the groups of one mesh axis do in training):

* ``one_device``: the whole layer on each GPU alone, which splits a gap in the sharded layers
  into its kernels' part and its communication's part.
* ``tpT`` (T = 2, 4, ... up to the world; contiguous groups of T): Megatron 1D: QKV column-parallel
  with the heads split (KV heads replicated when fewer than T), the output projection row-parallel,
  the MLP column- then row-parallel; one all-reduce after the attention block and one after the
  MLP forward, and their conjugates backward.
* ``tpT-sp``: the same with sequence parallel (Korthikanti et al. 2022): each rank holds 1/T of the
  sequence outside the tensor-parallel regions; an all-gather enters each region and a
  reduce-scatter leaves it (backward: the reverse).
* ``fsdpN``: the layer unsharded, wrapped with PyTorch's ``fully_shard`` over all N ranks as an
  inner unit (gathered for forward, freed, gathered again for backward, gradients reduce-scattered).
* ``fsdpD-tp2`` (4 or more ranks): a 2D mesh, tensor parallel over contiguous pairs and FSDP over
  the D = N/2 ranks of each pair position (stride 2), as torchtitan lays FSDP x TP.

Each is checked against the one-device layer (the same weights: outputs and input gradients must
match, on the rank's shard of the sequence under sequence parallel) and timed forward and backward
as in training: the backward makes the weight gradients too (median of repeats after warm-up, CUDA
events on GPUs). Rank 0 writes ``multi_gpu_layers.csv`` with parplan's prediction for the same
shapes beside each measurement (``scripts/multi_gpu_predict.py``), one row per ``--hw`` profile or
cluster file.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from parplan.specs.model_loader import load_model  # noqa: E402
from parplan.specs.model import model_from_dict, with_seq_len  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import init_distributed, profile_for, timed as cuda_timed  # noqa: E402
from multi_gpu_predict import predict_layers  # noqa: E402

# PyTorch 2.13 renames the flat-tensor collectives; 2.11 (the GPU machines') has only the old names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

TINY = {"name": "tiny", "layers": 1, "hidden": 64, "heads": 4, "ffn_hidden": 256, "activation": "gelu",
        "vocab": 128, "seq_len": 32}


def layer_weights(model, dtype, device, seed=0):
    """Full (unsharded) weights of one pre-norm GELU/SwiGLU layer, the same on every rank."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    h, q, kv, f = model.hidden, model.q_dim, model.kv_dim, model.ffn_hidden
    up = 2 * f if model.activation == "swiglu" else f

    def w(*shape):
        return (torch.randn(*shape, generator=g) * shape[-1] ** -0.5).to(device=device, dtype=dtype)
    return {"qkv": w(q + 2 * kv, h), "proj": w(h, q), "up": w(up, h), "down": w(h, f)}


def layer_forward(x, wts, model, heads, kv_heads, reduce=None, enter=None):
    """One layer on (a shard of) the weights. Under tensor parallelism ``enter`` (Megatron's f; under
    sequence parallel an all-gather of the sequence) marks where each block's sharded region begins and
    ``reduce`` (g; a reduce-scatter of the sequence) sums its partial outputs."""
    b, _, h = x.shape
    hd = model.head_dim
    enter = enter or (lambda t: t)
    y = enter(F.layer_norm(x, (h,)))
    s = y.shape[1]
    q, k, v = F.linear(y, wts["qkv"]).split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    q = q.view(b, s, heads, hd).transpose(1, 2)
    k = k.view(b, s, kv_heads, hd).transpose(1, 2)
    v = v.view(b, s, kv_heads, hd).transpose(1, 2)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads)
    o = F.linear(a.transpose(1, 2).reshape(b, s, heads * hd), wts["proj"])
    x = x + (reduce(o) if reduce else o)
    u = F.linear(enter(F.layer_norm(x, (h,))), wts["up"])
    if model.activation == "swiglu":
        gate, up = u.chunk(2, dim=-1)
        u = F.silu(gate) * up
    else:
        u = F.gelu(u)
    m = F.linear(u, wts["down"])
    return x + (reduce(m) if reduce else m)


class _AllReduce(torch.autograd.Function):
    """Megatron's g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Copy(torch.autograd.Function):
    """Megatron's f: identity forward, all-reduce backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _gather_seq(x, group, n):
    """All-gather (b, s/n, h) shards along the sequence into (b, s, h)."""
    b, s, h = x.shape
    out = torch.empty(n * s, b, h, dtype=x.dtype, device=x.device)
    _all_gather(out, x.transpose(0, 1).contiguous(), group=group)
    return out.transpose(0, 1).contiguous() if b > 1 else out.view(b, n * s, h)


def _scatter_seq(x, group, n):
    """Reduce-scatter a (b, s, h) partial sum into this rank's (b, s/n, h) shard of the sequence."""
    b, s, h = x.shape
    out = torch.empty(s // n, b, h, dtype=x.dtype, device=x.device)
    _reduce_scatter(out, x.transpose(0, 1).contiguous(), group=group)
    return out.transpose(0, 1).contiguous() if b > 1 else out.view(b, s // n, h)


class _SeqGather(torch.autograd.Function):
    """Sequence parallel's entry into a tensor-parallel region: all-gather forward, reduce-scatter backward."""

    @staticmethod
    def forward(ctx, x, group, n):
        ctx.group, ctx.n = group, n
        return _gather_seq(x, group, n)

    @staticmethod
    def backward(ctx, grad):
        return _scatter_seq(grad, ctx.group, ctx.n), None, None


class _SeqScatter(torch.autograd.Function):
    """Sequence parallel's exit: reduce-scatter forward, all-gather backward."""

    @staticmethod
    def forward(ctx, x, group, n):
        ctx.group, ctx.n = group, n
        return _scatter_seq(x, group, n)

    @staticmethod
    def backward(ctx, grad):
        return _gather_seq(grad, ctx.group, ctx.n), None, None


def tp_shard(wts, model, rank, world):
    """Rank's slice: QKV by heads, proj by its input columns, up by rows, down by columns. With fewer KV
    heads than ranks each KV head is replicated over the ranks whose query heads read it (Megatron)."""
    hd, heads = model.head_dim, model.heads // world
    q, kv = model.q_dim, model.kv_dim
    if model.kv_heads >= world:
        kvh, first = model.kv_heads // world, rank * (model.kv_heads // world)
    else:
        kvh, first = 1, rank * model.kv_heads // world
    qkv = wts["qkv"]
    qs = qkv[:q].view(model.heads, hd, -1)[rank * heads:(rank + 1) * heads].reshape(heads * hd, -1)
    ks = qkv[q:q + kv].view(model.kv_heads, hd, -1)[first:first + kvh].reshape(kvh * hd, -1)
    vs = qkv[q + kv:].view(model.kv_heads, hd, -1)[first:first + kvh].reshape(kvh * hd, -1)
    f = model.ffn_hidden // world
    if model.activation == "swiglu":
        gate, up = wts["up"].chunk(2, dim=0)
        up_shard = torch.cat([gate[rank * f:(rank + 1) * f], up[rank * f:(rank + 1) * f]])
    else:
        up_shard = wts["up"][rank * f:(rank + 1) * f]
    return ({"qkv": torch.cat([qs, ks, vs]).contiguous(),
             "proj": wts["proj"][:, rank * heads * hd:(rank + 1) * heads * hd].contiguous(),
             "up": up_shard.contiguous(), "down": wts["down"][:, rank * f:(rank + 1) * f].contiguous()},
            heads, kvh)


def kernel_category(name: str) -> str:
    """Coarse class of a CUDA kernel by its name: communication, GEMM, attention, or other."""
    low = name.lower()
    if "nccl" in low:
        return "communication"
    if "flash" in low or "fmha" in low or "attention" in low:
        return "attention"
    if any(k in low for k in ("gemm", "cutlass", "nvjet", "xmma", "sm90_", "sm80_", "cublas")):
        return "gemm"
    return "other"


def kernel_times(step, steps: int):
    """(category, kernel, calls per step, seconds per step) of every GPU kernel ``step`` runs."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    dist.barrier()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    out = []
    for ev in prof.key_averages():
        total_us = getattr(ev, "device_time_total", None)
        if total_us is None:
            total_us = ev.cuda_time_total
        if total_us > 0:
            out.append((kernel_category(ev.key), ev.key[:120], ev.count / steps, total_us / 1e6 / steps))
    return sorted(out, key=lambda r: -r[3])


def rel_error(y, dx, y_ref, dx_ref) -> float:
    """Largest deviation of the output and the input gradient from the one-device reference, relative."""
    with torch.no_grad():
        return max(float((y - y_ref).abs().max()) / float(y_ref.abs().max()),
                   float((dx - dx_ref).abs().max()) / float(dx_ref.abs().max()))


def timed(fn, device, reps, warmup, batch=5):
    """Median over ``reps`` of the mean time of ``batch`` back-to-back calls, all ranks starting together.

    Back to back, the CPU queues the next call's kernels while the GPU runs this one's; timing
    single calls would measure Python's launch overhead, not the GPUs.
    """
    if device.type == "cuda":
        return cuda_timed(fn, reps, warmup, batch, before=dist.barrier)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        dist.barrier()
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        out.append((time.perf_counter() - t) / batch)
    return statistics.median(out)


def tp_sizes(text: str, world: int, model) -> list[int]:
    """Tensor-parallel degrees to measure: ``auto`` is every power of two from 2 to the world that divides
    the world, the heads, the MLP width and the sequence (sequence parallel splits it)."""
    if text != "auto":
        return [int(t) for t in text.split(",") if t.strip()]
    sizes, t = [], 2
    while t <= world:
        if world % t == 0 and model.heads % t == 0 and model.ffn_hidden % t == 0 and model.seq_len % t == 0:
            sizes.append(t)
        t *= 2
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt3-1.3b")
    ap.add_argument("--tiny", action="store_true", help="a 64-wide toy layer (CPU checks)")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tp", default="auto", help="tensor-parallel degrees, e.g. 2,4,8 (auto: every power of two "
                                                  "up to the world that divides it and the layer)")
    ap.add_argument("--hw", action="append", default=None,
                    help="parplan profile or cluster file (name or YAML) to predict with; repeatable "
                         "(default: the GPU's shipped profile)")
    ap.add_argument("--framework", default=None, help="parplan framework profile to predict with [the planner's]")
    ap.add_argument("--profile", action="store_true",
                    help="also write each GPU kernel's time per training step (kernel_times.csv, rank 0)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()

    rank, world, device, cuda = init_distributed(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype if cuda else "fp32"]
    model = model_from_dict(TINY, "tiny") if args.tiny else with_seq_len(load_model(args.model), args.seq)
    b, s, h = args.micro_batch, model.seq_len, model.hidden
    mesh_device = "cuda" if cuda else "cpu"

    wts = layer_weights(model, dtype, device)
    g = torch.Generator(device="cpu").manual_seed(1)
    x0 = torch.randn(b, s, h, generator=g).to(device=device, dtype=dtype)
    dy = torch.randn(b, s, h, generator=g).to(device=device, dtype=dtype)

    # One-device reference.
    xr = x0.clone().requires_grad_(True)
    yr = layer_forward(xr, wts, model, model.heads, model.kv_heads)
    yr.backward(dy)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    rows, kernels = [], []

    def check_and_time(name, forward, params, part=slice(None)):
        """Output and input gradient against the one-device layer (on the sequence ``part`` this rank
        holds), then forward and backward times.

        The backward makes the input's and every weight's gradient; the weights' are dropped
        before each call (no accumulation kernel), as an optimizer step would consume them.
        """
        x_in, dy_in = x0[:, part].contiguous(), dy[:, part].contiguous()
        x = x_in.clone().requires_grad_(True)
        y = forward(x)
        y.backward(dy_in)
        err = torch.tensor([rel_error(y, x.grad, yr[:, part], xr.grad[:, part])], dtype=torch.float64,
                           device=device)
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        xb = x_in.clone().requires_grad_(True)
        t_f = timed(lambda: forward(xb), device, args.reps, args.warmup)

        def step():
            for p in params:
                p.grad = None
            forward(xb).backward(dy_in)
        t_fb = timed(step, device, args.reps, args.warmup)
        rows.append((name, t_f, t_fb - t_f, float(err)))
        if args.profile and device.type == "cuda":
            kernels.extend((name, *k) for k in kernel_times(step, steps=3))
        if rank == 0:
            print(f"{name:<10} fwd {t_f * 1e3:8.3f} ms  bwd {(t_fb - t_f) * 1e3:8.3f} ms  error vs one device "
                  f"{float(err):.1e}", flush=True)

    # The whole layer on each device alone.
    full = {k: v.clone().requires_grad_(True) for k, v in wts.items()}
    check_and_time("one_device", lambda x: layer_forward(x, full, model, model.heads, model.kv_heads),
                   list(full.values()))

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # Tensor parallel over contiguous groups of t, every group at once; with and without sequence parallel.
    for t in tp_sizes(args.tp, world, model):
        group = init_device_mesh(mesh_device, (world // t, t), mesh_dim_names=("rep", "tp")).get_group("tp")
        me = dist.get_rank(group)
        shard, heads, kvh = tp_shard(wts, model, me, t)
        shard = {k: v.requires_grad_(True) for k, v in shard.items()}
        check_and_time(f"tp{t}", lambda x: layer_forward(x, shard, model, heads, kvh,
                                                         reduce=lambda o: _AllReduce.apply(o, group),
                                                         enter=lambda y: _Copy.apply(y, group)),
                       list(shard.values()))
        chunk = s // t
        check_and_time(f"tp{t}-sp", lambda x: layer_forward(x, shard, model, heads, kvh,
                                                            reduce=lambda o: _SeqScatter.apply(o, group, t),
                                                            enter=lambda y: _SeqGather.apply(y, group, t)),
                       list(shard.values()), slice(me * chunk, (me + 1) * chunk))

    class Layer(torch.nn.Module):
        def __init__(self, weights, heads, kv_heads, group=None):
            super().__init__()
            self.p = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in weights.items()})
            self.heads, self.kv_heads, self.group = heads, kv_heads, group

        def forward(self, x):
            if self.group is None:
                return layer_forward(x, self.p, model, self.heads, self.kv_heads)
            return layer_forward(x, self.p, model, self.heads, self.kv_heads,
                                 reduce=lambda o: _AllReduce.apply(o, self.group),
                                 enter=lambda y: _Copy.apply(y, self.group))

    # FSDP (FULL_SHARD) of the whole layer over all ranks. The layer is one FSDP unit inside a root, as
    # each block of a model is: a root unit keeps its weights gathered after forward (it would gather
    # them again at once for backward); an inner one frees them, and gathers them again for backward,
    # as a training step does.
    layer = Layer(wts, model.heads, model.kv_heads)
    fully_shard(layer)
    root = torch.nn.Sequential(layer)
    fully_shard(root)
    check_and_time(f"fsdp{world}", root, list(root.parameters()))

    # FSDP x TP: tensor parallel over contiguous pairs, FSDP over the ranks of each pair position.
    if world >= 4 and world % 2 == 0 and 2 in tp_sizes("auto", 2, model):
        mesh = init_device_mesh(mesh_device, (world // 2, 2), mesh_dim_names=("dp", "tp"))
        group = mesh.get_group("tp")
        shard, heads, kvh = tp_shard(wts, model, dist.get_rank(group), 2)
        layer = Layer(shard, heads, kvh, group)
        fully_shard(layer, mesh=mesh["dp"])
        root = torch.nn.Sequential(layer)
        fully_shard(root, mesh=mesh["dp"])
        check_and_time(f"fsdp{world // 2}-tp2", root, list(root.parameters()))

    ok = all(r[3] < tol for r in rows)
    if rank == 0:
        profiles = (args.hw or [profile_for(torch.cuda.get_device_name())]) if cuda else (args.hw or ["-"])
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "multi_gpu_layers.csv")
        names = [r[0] for r in rows]
        with open(path + ".part", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["layout", "ranks", "model", "micro_batch", "seq", "dtype", "device", "profile",
                        "measured_fwd_s", "measured_bwd_s", "predicted_fwd_s", "predicted_bwd_s",
                        "max_rel_error_vs_reference", "correct"])
            for hw in profiles:
                predictions = {} if hw == "-" else predict_layers(hw, model, world, b, args.dtype if cuda else "fp32",
                                                                   names, args.framework)
                for name, tf, tb, err in rows:
                    pf, pb = predictions.get(name, (float("nan"), float("nan")))
                    w.writerow([name, world, model.name, b, s, args.dtype if cuda else "fp32",
                                torch.cuda.get_device_name() if cuda else "cpu", os.path.basename(hw), tf, tb,
                                pf, pb, err, err < tol])
        os.replace(path + ".part", path)
        if kernels:
            path = os.path.join(args.out, "kernel_times.csv")
            with open(path + ".part", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["layout", "category", "kernel", "calls_per_step", "seconds_per_step"])
                w.writerows(kernels)
            os.replace(path + ".part", path)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


def predict_on(hw, model, world, batch, dtype, layouts=("one_device", "tp", "fsdp")):
    """parplan's forward/backward seconds of one layer per layout (``scripts/multi_gpu_predict.py``)."""
    return predict_layers(hw, model, world, batch, dtype, layouts)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's teardown: gloo's background threads can abort it after
    # the work is done and the results are written.
    os._exit(code)
