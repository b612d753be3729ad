"""Ring context-parallel attention across the GPUs of one host, against the one-device result and parplan.

Run under torchrun, one process per GPU (gloo on CPUs for a small check):

    torchrun --nproc-per-node 8 scripts/multi_gpu_context.py --model llama3.1-8b --seq 32768,65536,131072 --out DIR
    torchrun --nproc-per-node 4 scripts/multi_gpu_context.py --device cpu --tiny --out DIR

For each sequence length and each ring size cp (2, 4, ... up to the world; contiguous groups of cp
ranks, every group at once), causal attention over the whole sequence the way Transformer Engine's
``AttnFuncWithCP`` runs it (Liu et al. 2023, arXiv 2310.01889): the sequence in 2 cp chunks, rank r
holding chunks r and 2cp-1-r (the causal load balance); forward, cp steps, each sending the keys and
values in hand to the next rank while the kernel runs on them (step 0: one causal kernel over the
rank's own chunks; then an earlier rank's first chunk against both local query chunks, or a later
rank's two chunks against the local second chunk, non-causal), the partial outputs merged by their
log-sum-exps; backward, the keys and values go round again, each block's gradients taken against the
merged output, dq kept, dk and dv added to an accumulator that travels with the block back to its
owner. Kernels: FlashAttention-2 through ATen on GPUs (grouped KV heads repeated to the query heads),
the same arithmetic in plain PyTorch on CPUs. The merges run as eager PyTorch ops.

Every rank checks its output and its q, k, v gradients against the same attention on the whole
sequence on one device. Rank 0 writes ``context.csv``: per (sequence, cp) the measured forward and
backward, the one-device kernel's, and parplan's prediction (``scripts/multi_gpu_predict.py``).
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

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parplan.specs.model import model_from_dict, with_seq_len  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402
from gpu_common import init_distributed  # noqa: E402
from multi_gpu_predict import predict_ring  # noqa: E402

TINY = {"name": "tiny-attention", "layers": 1, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn_hidden": 256,
        "activation": "swiglu", "vocab": 128, "seq_len": 128}


# --------------------------------------------------------------------------- one block of attention


def block_fwd(q, k, v, causal: bool, scale: float):
    """(output, log-sum-exp per row in fp32, what the backward needs) of attention of q over k, v."""
    if q.is_cuda:
        r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, scale=scale)
        return r[0], r[1], r[2:8]
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return (torch.exp(s - lse[..., None]) @ v.float()).to(q.dtype), lse, None


def block_bwd(do, q, k, v, out, lse, causal: bool, scale: float, meta):
    """dq, dk, dv of one block against the merged output ``out`` and its log-sum-exp ``lse``."""
    if q.is_cuda:
        cq, ck, mq, mk, seed, offset = meta
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            do, q, k, v, out, lse, cq, ck, mq, mk, 0.0, causal, seed, offset, scale=scale)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.exp(s - lse[..., None])
    dof = do.float()
    dv = p.transpose(-1, -2) @ dof
    dp = dof @ v.float().transpose(-1, -2)
    ds = p * (dp - (dof * out.float()).sum(-1, keepdim=True))
    return (ds @ k.float() * scale).to(q.dtype), (ds.transpose(-1, -2) @ q.float() * scale).to(q.dtype), dv.to(q.dtype)


def expand(t, groups: int):
    """Grouped KV heads repeated to the query heads (b, kv_heads, s, d) -> (b, heads, s, d)."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def fold(t, groups: int):
    """The inverse for gradients: each KV head's sum over the query heads that read it."""
    if groups == 1:
        return t
    b, h, s, d = t.shape
    return t.view(b, h // groups, groups, s, d).sum(2)


# --------------------------------------------------------------------------- the ring


class Ring:
    """One rank's place in a ring of ``cp`` ranks: its chunks, its neighbours, the blocks of each step."""

    def __init__(self, group, cp: int, seq: int):
        self.group, self.cp = group, cp
        self.me = dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.me + 1) % cp)
        self.prev = dist.get_global_rank(group, (self.me - 1) % cp)
        self.c = seq // (2 * cp)

    def local(self, t):
        """This rank's chunks r and 2cp-1-r of a (b, h, seq, d) tensor."""
        c, r = self.c, self.me
        return torch.cat([t[:, :, r * c:(r + 1) * c], t[:, :, (2 * self.cp - 1 - r) * c:(2 * self.cp - r) * c]], 2)

    def step(self, i: int):
        """(query rows, KV rows of the block in hand, causal) at ring step ``i``."""
        src = (self.me - i) % self.cp
        if i == 0:
            return slice(None), slice(None), True
        if src < self.me:  # an earlier rank's block: its first chunk precedes both local chunks
            return slice(None), slice(0, self.c), False
        return slice(self.c, None), slice(None), False  # a later rank's: only the local second chunk sees it

    def exchange(self, send, recv):
        ops = [dist.P2POp(dist.isend, send, self.next, self.group), dist.P2POp(dist.irecv, recv, self.prev, self.group)]
        return dist.batch_isend_irecv(ops)


def _wait(reqs):
    for r in reqs or ():
        r.wait()


def ring_forward(ring: Ring, q, k, v, scale: float, groups: int):
    """The rank's output and log-sum-exp over the whole sequence, and each step's kernel metadata."""
    kv = torch.stack([k, v])
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    metas = []
    for i in range(ring.cp):
        reqs, nxt = None, None
        if i < ring.cp - 1:
            nxt = torch.empty_like(kv)
            reqs = ring.exchange(kv, nxt)
        rows, cols, causal = ring.step(i)
        kb, vb = expand(kv[0][:, :, cols], groups), expand(kv[1][:, :, cols], groups)
        o_i, l_i, meta = block_fwd(q[:, :, rows].contiguous(), kb.contiguous(), vb.contiguous(), causal, scale)
        metas.append(meta)
        new = torch.logaddexp(lse[:, :, rows], l_i)
        out[:, :, rows] = out[:, :, rows] * torch.exp(lse[:, :, rows] - new)[..., None] + \
            o_i.float() * torch.exp(l_i - new)[..., None]
        lse[:, :, rows] = new
        _wait(reqs)
        kv = nxt if nxt is not None else kv
    return out.to(q.dtype), lse, metas


def ring_backward(ring: Ring, do, q, k, v, out, lse, metas, scale: float, groups: int):
    """dq, dk, dv of the rank's chunks: the blocks go round again, their dk/dv accumulators with them."""
    kv = torch.stack([k, v])
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dkv, pending = None, None
    for i in range(ring.cp):
        reqs, nxt = None, None
        if i < ring.cp - 1:
            nxt = torch.empty_like(kv)
            reqs = ring.exchange(kv, nxt)
        rows, cols, causal = ring.step(i)
        kb, vb = expand(kv[0][:, :, cols], groups).contiguous(), expand(kv[1][:, :, cols], groups).contiguous()
        dq_i, dk_i, dv_i = block_bwd(do[:, :, rows].contiguous(), q[:, :, rows].contiguous(), kb, vb,
                                     out[:, :, rows].contiguous(), lse[:, :, rows].contiguous(), causal, scale,
                                     metas[i])
        dq[:, :, rows] += dq_i.float()
        mine = torch.zeros(kv.shape, dtype=torch.float32, device=q.device)
        mine[0][:, :, cols] = fold(dk_i, groups).float()
        mine[1][:, :, cols] = fold(dv_i, groups).float()
        if pending is not None:  # the accumulator of the block in hand, from the previous rank
            _wait(pending[0])
            mine += pending[1].float()
        dkv = mine.to(q.dtype)
        incoming = torch.empty_like(dkv)
        pending = (ring.exchange(dkv, incoming), incoming)
        _wait(reqs)
        kv = nxt if nxt is not None else kv
    _wait(pending[0])  # after the last step every accumulator is back with its owner
    return dq.to(q.dtype), pending[1][0], pending[1][1]


# --------------------------------------------------------------------------- measurement


def timed(fn, cuda: bool, reps: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``reps`` after ``warmup``, every rank starting together."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def rel(got, want) -> float:
    return float((got.float() - want.float()).abs().max()) / max(float(want.float().abs().max()), 1e-30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3.1-8b", help="heads, KV heads and head size of this model")
    ap.add_argument("--tiny", action="store_true", help="4 heads of 16 (CPU checks)")
    ap.add_argument("--seq", default="32768,65536,131072", help="sequence lengths")
    ap.add_argument("--cp", default="auto", help="ring sizes, e.g. 2,4,8 (auto: powers of two up to the world)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--hw", action="append", default=None, help="profile or cluster file to predict with; repeatable")
    ap.add_argument("--framework", default="torchtitan",
                    help="parplan framework profile to predict with (its attention kernel: FlashAttention-2)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()

    rank, world, device, cuda = init_distributed(args.device)
    dtype, dname = (torch.bfloat16, "bf16") if cuda else (torch.float32, "fp32")
    tol = 3e-2 if cuda else 1e-4
    spec = model_from_dict(TINY, "tiny") if args.tiny else load_model(args.model)
    heads, kv_heads, d = spec.heads, spec.kv_heads, spec.head_dim
    groups, scale = heads // kv_heads, d ** -0.5
    if args.hw:
        profiles = args.hw
    else:
        from gpu_common import profile_for
        profiles = [profile_for(torch.cuda.get_device_name())] if cuda else ["h100-sxm"]
    seqs = [int(s) for s in args.seq.split(",")] if not args.tiny or args.seq != ap.get_default("seq") \
        else [64, 128]
    cps = [int(c) for c in args.cp.split(",")] if args.cp != "auto" else \
        [c for c in (2 ** i for i in range(1, 11)) if c <= world and world % c == 0]
    from torch.distributed.device_mesh import init_device_mesh
    rings = {cp: init_device_mesh("cuda" if cuda else "cpu", (world // cp, cp),
                                  mesh_dim_names=("rep", "cp")).get_group("cp") for cp in cps}
    rows, ok = [], True
    for seq in seqs:
        gen = torch.Generator(device=device).manual_seed(seq)

        def rand(h):
            return torch.randn(1, h, seq, d, generator=gen, device=device, dtype=dtype)
        q, k, v, do = rand(heads), rand(kv_heads), rand(kv_heads), rand(heads)
        # The one-device reference: the same kernel over the whole sequence.
        ke, ve = expand(k, groups).contiguous(), expand(v, groups).contiguous()
        ref_out, ref_lse, ref_meta = block_fwd(q, ke, ve, True, scale)
        ref_dq, ref_dk, ref_dv = block_bwd(do, q, ke, ve, ref_out, ref_lse, True, scale, ref_meta)
        ref_dk, ref_dv = fold(ref_dk, groups), fold(ref_dv, groups)
        one_f = timed(lambda: block_fwd(q, ke, ve, True, scale), cuda, args.reps, args.warmup)
        one_b = timed(lambda: block_bwd(do, q, ke, ve, ref_out, ref_lse, True, scale, ref_meta), cuda, args.reps,
                      args.warmup)
        del ke, ve
        for cp in cps:
            if seq % (2 * cp):
                continue
            ring = Ring(rings[cp], cp, seq)
            ql, kl, vl, dol = (ring.local(t).contiguous() for t in (q, k, v, do))
            out, lse, metas = ring_forward(ring, ql, kl, vl, scale, groups)
            dq, dk, dv = ring_backward(ring, dol, ql, kl, vl, out, lse, metas, scale, groups)
            err = torch.tensor([max(rel(out, ring.local(ref_out)), rel(dq, ring.local(ref_dq)),
                                    rel(dk, ring.local(ref_dk)), rel(dv, ring.local(ref_dv)))],
                               dtype=torch.float64, device=device)
            dist.all_reduce(err, op=dist.ReduceOp.MAX)
            t_f = timed(lambda: ring_forward(ring, ql, kl, vl, scale, groups), cuda, args.reps, args.warmup)

            def both():
                o, l_, m = ring_forward(ring, ql, kl, vl, scale, groups)
                ring_backward(ring, dol, ql, kl, vl, o, l_, m, scale, groups)
            t_fb = timed(both, cuda, args.reps, args.warmup)
            ok = ok and float(err) < tol
            model = with_seq_len(spec, seq)
            for hw in profiles:
                p = predict_ring(hw, model, cp, seq, 1, dname, args.framework)
                p1 = predict_ring(hw, model, 1, seq, 1, dname, args.framework)
                rows.append(dict(seq=seq, cp=cp, ranks=world, rings_at_once=world // cp, heads=heads,
                                 kv_heads=kv_heads, head_dim=d, dtype=dname, measured_fwd_s=t_f,
                                 measured_bwd_s=t_fb - t_f, one_device_fwd_s=one_f, one_device_bwd_s=one_b,
                                 max_rel_error_vs_reference=float(err), correct=float(err) < tol,
                                 profile=os.path.basename(hw), predicted_fwd_s=p["fwd_s"],
                                 predicted_bwd_s=p["bwd_s"], predicted_kernels_fwd_s=p["kernels_fwd_s"],
                                 predicted_kernels_bwd_s=p["kernels_bwd_s"], predicted_merges_fwd_s=p["merges_fwd_s"],
                                 predicted_merges_bwd_s=p["merges_bwd_s"], predicted_ring_fwd_s=p["ring_fwd_s"],
                                 predicted_ring_bwd_s=p["ring_bwd_s"], predicted_one_device_fwd_s=p1["fwd_s"],
                                 predicted_one_device_bwd_s=p1["bwd_s"]))
            if rank == 0:
                print(f"seq {seq:>7} cp {cp}: fwd {t_f * 1e3:9.3f} ms  bwd {(t_fb - t_f) * 1e3:9.3f} ms  "
                      f"(one device {one_f * 1e3:9.3f} / {one_b * 1e3:9.3f} ms)  error vs one device {float(err):.1e}",
                      flush=True)
            del ql, kl, vl, dol, out, lse, metas, dq, dk, dv
        del q, k, v, do, ref_out, ref_lse, ref_dq, ref_dk, ref_dv
        if cuda:
            torch.cuda.empty_cache()
    if rank == 0 and rows:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "context.csv")
        with open(path + ".part", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(path + ".part", path)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # gloo's background threads can abort the interpreter's teardown
