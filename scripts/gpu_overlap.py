"""What overlapping communication costs the compute beside it, and what ring attention costs, on one GPU.

1. contention.csv: transformer GEMMs, flash attention (forward, backward) and a memory-bound
   element-wise pass, each timed alone and while a concurrent kernel on another stream holds
   ``ctas`` SMs, as NCCL's kernels do (one CTA per channel, each holding its SM: NVIDIA/nccl issue
   1656). The concurrent kernel either spins (SMs taken, no memory traffic) or copies HBM to HBM
   at full speed (SMs and memory bandwidth taken, as an NVLink collective's local reads and writes
   do). Columns: alone_s, with_s, slowdown = with_s / alone_s - 1, and the copy's own GB/s.
2. ring_attention.csv: the attention a context-parallel ring rank computes, as its kernels run: the
   sequence in 2*cp chunks (rank r holds chunks r and 2cp-1-r, the causal load balance of Megatron-
   Core / Transformer Engine), one causal kernel over its own chunks, then cp-1 non-causal kernels
   against the KV chunks the ring brings, each forward followed by the log-sum-exp merge of its
   partial output; the backward per block against the merged output. Against one causal kernel
   over the whole sequence divided by cp (the work a rank would do at the full kernel's rate).

usage: python scripts/gpu_overlap.py OUT_DIR [--quick] [--parts=contention,ring]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, queued_median, timed  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
BF16 = torch.bfloat16
QUICK = "--quick" in sys.argv

_KERNEL = r"""
extern "C" __global__ void hold(const float4* __restrict__ src, float4* __restrict__ dst,
                                long long per_block, int iters, int copy) {
    extern __shared__ float4 smem[];          // dynamic shared memory: no GEMM CTA fits beside it
    const float4* s = src + blockIdx.x * per_block;
    float4* d = dst + blockIdx.x * per_block;
    for (int it = 0; it < iters; ++it) {
        if (copy) {
            for (long long i = threadIdx.x; i < per_block; i += blockDim.x) d[i] = s[i];
        } else {
            __nanosleep(2000);
        }
    }
    if (threadIdx.x == 0 && iters < 0) smem[0] = s[0];  // keeps the shared allocation referenced
}
"""


class Holder:
    """A kernel on a side stream that holds ``ctas`` SMs (512 threads each, 96 KiB of shared memory)."""

    SMEM = 96 * 1024
    PER_BLOCK = 1 << 20  # float4 per CTA: 16 MiB, beyond L2 together

    def __init__(self, max_ctas: int):
        import cupy

        self.cupy = cupy
        self.kernel = cupy.RawKernel(_KERNEL, "hold")
        self.kernel.max_dynamic_shared_size_bytes = self.SMEM
        n = max_ctas * self.PER_BLOCK * 4
        self.src = torch.randn(n, device=DEV, dtype=torch.float32)
        self.dst = torch.empty_like(self.src)
        self.stream = torch.cuda.Stream()

    def launch(self, ctas: int, iters: int, copy: bool) -> None:
        cp = self.cupy
        with cp.cuda.ExternalStream(self.stream.cuda_stream):
            self.kernel((ctas,), (512,), (cp.asarray(self.src), cp.asarray(self.dst),
                                          cp.int64(self.PER_BLOCK), cp.int32(iters), cp.int32(int(copy))),
                        shared_mem=self.SMEM)

    def seconds(self, ctas: int, iters: int, copy: bool) -> float:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            a.record()
        self.launch(ctas, iters, copy)
        with torch.cuda.stream(self.stream):
            b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3


def victims():
    """(name, kind, fn) of the kernels a layer runs: GEMMs of Llama-3 8B and 70B/TP8 blocks at 8192 tokens,
    flash attention forward and backward, an RMSNorm-sized element-wise pass."""
    out = []
    tokens = 4096 if QUICK else 8192
    for name, k, n in (("llama3-8b up", 4096, 14336), ("llama3-8b down", 14336, 4096),
                       ("llama3-8b qkv", 4096, 6144), ("llama3-70b-tp8 up", 8192, 3584)):
        a = torch.randn(tokens, k, device=DEV, dtype=BF16)
        b = torch.randn(k, n, device=DEV, dtype=BF16)
        out.append((f"gemm {name}", "gemm", 2.0 * tokens * k * n, lambda a=a, b=b: a @ b))
    q, k_, v = (torch.randn(1, 32, tokens, 128, device=DEV, dtype=BF16, requires_grad=True) for _ in range(3))
    dy = torch.randn(1, 32, tokens, 128, device=DEV, dtype=BF16)
    fwd = lambda: F.scaled_dot_product_attention(q, k_, v, is_causal=True)  # noqa: E731
    flops = 4.0 * 32 * tokens * tokens * 128 / 2
    out.append(("attention fwd", "attention", flops, fwd))
    out.append(("attention fwd+bwd", "attention", 3.5 * flops, lambda: torch.autograd.grad(fwd(), (q, k_, v), dy)))
    x = torch.randn(tokens * 4, 4096, device=DEV, dtype=BF16)
    out.append(("elementwise x*2+1", "elementwise", 0.0, lambda: x * 2 + 1))
    return out


def contention(out: str) -> None:
    table = Table(f"{out}/contention.csv", ["victim", "kind", "ctas", "mode", "alone_s", "with_s", "slowdown",
                                            "victim_tflops_alone", "holder_gbps", "sms"])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    holder = Holder(64)
    reps = 20
    side = torch.cuda.Stream()  # the victim on a non-blocking stream of its own, beside the holder's
    for name, kind, flops, fn in victims():
        with torch.cuda.stream(side):
            alone = timed(fn, reps=reps, batch=10)
        for copy in (False, True):
            for ctas in ((16,) if QUICK else (8, 16, 24, 32, 64)):
                # Size the holder to outlast the timed loop: iterations from its own measured pace.
                n_probe = 8 if copy else 4000
                probe = holder.seconds(ctas, n_probe, copy) / n_probe
                iters = int(max(8, 3.0 * alone * 10 * reps / max(probe, 1e-7)))
                torch.cuda.synchronize()
                holder.launch(ctas, iters, copy)
                with_s = queued_median(fn, reps, 10, side)
                gbps = 2 * 16 * Holder.PER_BLOCK * ctas / probe / 1e9 if copy else 0.0
                table.add(victim=name, kind=kind, ctas=ctas, mode="copy" if copy else "spin", alone_s=alone,
                          with_s=with_s, slowdown=with_s / alone - 1, victim_tflops_alone=flops / alone / 1e12,
                          holder_gbps=gbps, sms=sms)


def _flash(q, k, v, causal):
    """FlashAttention-2 forward through ATen: (out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, seed, offset)."""
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)[:8]


def _flash_bwd(do, q, k, v, fwd, causal):
    o, lse, cq, ck, mq, mk, seed, offset = fwd
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        do, q, k, v, o, lse, cq, ck, mq, mk, 0.0, causal, seed, offset)


def _merge(o, lse, o_i, lse_i):
    """Online-softmax merge of two partial attention outputs by their log-sum-exps (fp32)."""
    new = torch.logaddexp(lse, lse_i)
    w, w_i = torch.exp(lse - new).unsqueeze(-1), torch.exp(lse_i - new).unsqueeze(-1)
    return (o.float() * w + o_i.float() * w_i).to(o.dtype), new


def ring(out: str) -> None:
    table = Table(f"{out}/ring_attention.csv", ["seq", "cp", "heads", "head_dim", "full_fwd_s", "full_bwd_s",
                                                "rank_fwd_s", "rank_merge_s", "rank_bwd_s", "fwd_ratio",
                                                "bwd_ratio", "kernels_fwd"])
    heads, d = 32, 128
    for seq in ((16384,) if QUICK else (32768, 65536, 131072)):
        q, k, v = (torch.randn(1, heads, seq, d, device=DEV, dtype=BF16) for _ in range(3))
        do = torch.randn_like(q)
        full = _flash(q, k, v, True)
        full_f = timed(lambda: _flash(q, k, v, True), reps=5, batch=2)
        full_b = timed(lambda: _flash_bwd(do, q, k, v, full, True), reps=5, batch=2)
        for cp in ((2,) if QUICK else (2, 4, 8)):
            c = seq // (2 * cp)
            r = cp // 2  # a middle rank: its blocks are typical
            chunks = lambda t: [t[:, :, i * c:(i + 1) * c] for i in range(2 * cp)]  # noqa: E731
            qc, kc, vc = chunks(q), chunks(k), chunks(v)
            mine = (r, 2 * cp - 1 - r)
            q_loc = torch.cat([qc[i] for i in mine], 2)
            blocks = [(q_loc, torch.cat([kc[i] for i in mine], 2), torch.cat([vc[i] for i in mine], 2), True)]
            for step in range(1, cp):
                src = (r - step) % cp
                if src < r:  # an earlier rank's KV: both local q chunks against its first chunk
                    blocks.append((q_loc, kc[src], vc[src], False))
                else:        # a later rank's KV: the local second chunk against both of its chunks
                    their = (src, 2 * cp - 1 - src)
                    blocks.append((qc[mine[1]], torch.cat([kc[i] for i in their], 2),
                                   torch.cat([vc[i] for i in their], 2), False))
            parts = [_flash(*b) for b in blocks]
            t_f = sum(timed(lambda b=b: _flash(*b), reps=5, batch=2) for b in blocks)
            o0, l0 = parts[0][:2]
            t_m = 0.0
            for (qb, *_), (oi, li, *_) in zip(blocks[1:], parts[1:]):
                if qb.shape[2] == o0.shape[2]:
                    t_m += timed(lambda oi=oi, li=li: _merge(o0, l0, oi, li), reps=5, batch=2)
                else:  # only the second chunk's half of the output is merged
                    oh, lh = o0[:, :, c:], l0[:, :, c:]
                    t_m += timed(lambda oi=oi, li=li, oh=oh, lh=lh: _merge(oh, lh, oi, li), reps=5, batch=2)
            t_b = 0.0
            for b, fwd in zip(blocks, parts):
                dob = torch.randn_like(fwd[0])
                t_b += timed(lambda b=b, fwd=fwd, dob=dob: _flash_bwd(dob, b[0], b[1], b[2], fwd, b[3]),
                             reps=5, batch=2)
            table.add(seq=seq, cp=cp, heads=heads, head_dim=d, full_fwd_s=full_f, full_bwd_s=full_b,
                      rank_fwd_s=t_f, rank_merge_s=t_m, rank_bwd_s=t_b, fwd_ratio=(t_f + t_m) / (full_f / cp),
                      bwd_ratio=t_b / (full_b / cp), kernels_fwd=len(blocks))
            del parts
            torch.cuda.empty_cache()
        del q, k, v, do, full
        torch.cuda.empty_cache()


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    parts = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--parts=")), ["contention", "ring"])
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for part in parts:
        try:
            {"contention": contention, "ring": ring}[part](out)
        except Exception as exc:  # keep the other part's rows
            print(f"{part} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)


if __name__ == "__main__":
    main()
