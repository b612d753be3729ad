"""A context-parallel ring rank's attention, as Transformer Engine runs it, at the validated runs' lengths.

Each row times, on one GPU, the attention work one rank of a ``cp``-way ring does over a causal
sequence of ``seq`` tokens split in 2*cp load-balanced chunks (rank r holds chunks r and 2cp-1-r),
following ``AttnFuncWithCPAndKVP2P`` of Transformer Engine v2.7 (and its v1.9 predecessor
``AttnFuncWithCP``), cuDNN where ATen offers it (else FlashAttention-2), tensors of micro-batch 1 laid
out (batch, heads, tokens, head size):

* forward: the KV send buffer built by a concatenation; step 0 one causal kernel over the local
  S = seq/cp rows; each later step one non-causal kernel, KV from an earlier rank (S queries against
  the first S/2 received keys) or from a later rank (the second S/2 queries against all S keys), the
  steps alternating between two streams, each step's log-sum-exp merged into a running one (fp32)
  on the other stream; after the loop the cp output corrections (bf16 accumulator, fp32 math);
* backward: the diagonal block last, every step's kernel against the merged output and
  log-sum-exp, dq accumulated in bf16 (all S rows or the second half), dk/dv accumulated into the
  ring's receive buffer in bf16; TE v1.9 adds the half-KV and half-q/out/dout contiguous copies
  and a concatenation of dk and dv per step (``--te=1.9``).

The peers' sends are not made (one GPU): the buffers they fill are written once up front, and every
step reads the same keys and values, which a real ring would bring fresh (an L2 hit here at most; the
blocks are 4-64 MiB). v1.9's fp64 running log-sum-exp is kept in fp32 (a heads x rows tensor). Kernels
run at the query heads with keys and values expanded to them; the copies and sums of keys and
values use the model's KV heads, as grouped-query attention moves them.

Columns: the whole-sequence causal kernel (full_*), one causal kernel over the local S rows
(local_*: the shape whose rate the model applies to a rank's 1/cp share), the rank's kernels alone
back to back (kernels_*), and the whole rank as TE runs it (rank_*), forward and backward, GPU time.

usage: python scripts/gpu_cp_ring.py OUT_DIR [--quick] [--te=2.7|1.9] [--backend=flash2] [--eager-corrections]

The corrections run as TE runs them, each one torch.compile kernel (TE's ``@jit_fuser``).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, timed  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
BF16 = torch.bfloat16
QUICK = "--quick" in sys.argv
TE = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--te=")), "2.7")
HEAD_DIM = 128
# (seq, query heads per rank, KV heads per rank): Llama 3 8B at TP 1, Llama 3 70B / 3.1 405B at
# TP 4 / 8 (16 query heads, 2 or 1 KV heads), 405B at TP 4 (32 and 2); longer sequences for the
# earlier H200 table.
SHAPES = [(8192, 32, 8), (8192, 16, 2), (8192, 16, 1), (8192, 32, 2), (16384, 32, 8), (32768, 32, 8)]
CPS = (2, 4, 8)
SLEEP = 50_000_000  # GPU cycles queued ahead of each repeat: the host issues all calls before they run
MIN_LOCAL = 1024  # fewer local rows than this: not a layout the validated runs use


def _cudnn(q, k, v, causal):
    """cuDNN fused attention forward through ATen: (out, logsumexp, ...) with the log-sum-exp kept."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False)


def _cudnn_bwd(do, q, k, v, o, lse, fwd, causal):
    _, _, cq, ck, mq, mk, seed, offset, _ = fwd
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        do, q, k, v, o, lse, seed, offset, _NO_BIAS, cq, ck, mq, mk, 0.0, causal)


_NO_BIAS = None  # ATen takes an undefined tensor for "no bias"


def _flash(q, k, v, causal):
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)


def _flash_bwd(do, q, k, v, o, lse, fwd, causal):
    _, _, cq, ck, mq, mk, seed, offset, _ = fwd
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        do, q, k, v, o, lse, cq, ck, mq, mk, 0.0, causal, seed, offset)


def _cudnn_meta(q, k, v, causal):
    """cuDNN's forward recorded for autograd, for the backward to replay: (out, lse, ..., leaves)."""
    leaves = tuple(t.detach().requires_grad_() for t in (q, k, v))
    with torch.enable_grad():
        f = _cudnn(*leaves, causal)
    return (*f, leaves)


def _cudnn_bwd_autograd(do, q, k, v, o, lse, fwd, causal):
    """cuDNN's backward kernel reached through autograd (ATen's own backward op refused the call): the
    same kernel on the same shapes, against the forward's own output and log-sum-exp."""
    return torch.autograd.grad(fwd[0], fwd[-1], do, retain_graph=True)


def _pick_backend():
    """(name, forward, backward, the forward that records what the backward needs): cuDNN (Transformer
    Engine's choice on Hopper) where ATen offers it, its backward called directly or else through
    autograd; else FlashAttention-2 (``--backend=flash2`` asks for it)."""
    if "--backend=flash2" in sys.argv:
        return "flash2", _flash, _flash_bwd, _flash
    t = torch.randn(1, 2, 256, HEAD_DIM, device=DEV, dtype=BF16)
    for meta, bwd in ((_cudnn, _cudnn_bwd), (_cudnn_meta, _cudnn_bwd_autograd)):
        try:
            f = meta(t, t, t, True)
            bwd(t, t, t, t, f[0], f[1], f, True)
            return "cudnn", _cudnn, bwd, meta
        except Exception as exc:  # noqa: BLE001
            print(f"cuDNN attention through {bwd.__name__} failed: {type(exc).__name__}: "
                  f"{' '.join(str(exc).split())[:600]}", flush=True)
    print("FlashAttention-2 instead", flush=True)
    return "flash2", _flash, _flash_bwd, _flash


def _sq(lse):
    """A log-sum-exp as (batch, heads, rows), whichever trailing unit dimension the kernel gives it."""
    return lse.reshape(lse.shape[:3])


def _lse_merge(lse, lse_i):
    """TE's ``flash_attn_fwd_softmax_lse_correction``: the running log-sum-exp absorbs a step's (fp32)."""
    mx = torch.maximum(lse, lse_i)
    lse.copy_(mx + torch.log(torch.exp(lse - mx) + torch.exp(lse_i - mx)))


def _out_correction(out, out_i, lse, lse_i):
    """TE's ``flash_attn_fwd_out_correction``: out += out_i * exp(lse_i - lse), fp32 math, bf16 store."""
    out.add_((out_i.float() * torch.exp(lse_i - lse).unsqueeze(-1)).to(out.dtype))


def _out_init(out_0, lse_0, lse):
    """TE v2.7's ``flash_attn_fwd_out_correction_init``: step 0's output rescaled to the merged lse, bf16."""
    return (out_0.float() * torch.exp(lse_0 - lse).unsqueeze(-1)).to(out_0.dtype)


def _fuse(fn):
    """TE's ``@jit_fuser`` (torch.compile): one kernel per correction, as TE runs them (eager with
    ``--eager-corrections``, and from the first shape on which compiling fails)."""
    if "--eager-corrections" in sys.argv or not torch.cuda.is_available():
        return fn
    compiled = _compiled(fn)
    state = {"fn": compiled}

    def run(*args):
        try:
            return state["fn"](*args)
        except Exception as exc:  # noqa: BLE001  keep measuring, eager
            if state["fn"] is fn:
                raise
            print(f"{fn.__name__} stays eager from here ({type(exc).__name__})", flush=True)
            state["fn"] = fn
            _EAGER.add(fn.__name__)
            return fn(*args)
    return run


_EAGER: set[str] = set()  # corrections that fell back to eager: the rows' ``corrections`` column says so


def _compiled(fn):
    for knob in ("cache_size_limit", "recompile_limit"):   # one graph per shape: keep them all compiled
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 512)
    return torch.compile(fn, dynamic=False)


_FUSED = [_out_init, _out_correction, _lse_merge]


class Rank:
    """One ring rank's tensors for a (seq, cp, heads, kv_heads) shape: ``forward`` and ``backward`` run
    its whole attention as TE's p2p ring does, ``kernels_*`` its attention kernels alone."""

    def __init__(self, seq, cp, heads, kv_heads, backend):
        self.cp, self.S = cp, seq // cp
        self.r = cp // 2              # a middle rank: at cp 4 and 8 KV from both earlier and later ranks
        self.fwd_k, self.bwd_k, self.meta_k = backend
        S, h, d = self.S, heads, HEAD_DIM
        mk = lambda n, hh: torch.randn(1, hh, n, d, device=DEV, dtype=BF16)  # noqa: E731
        self.q, self.do = mk(S, h), mk(S, h)
        # KV as the kernels see it (expanded to the query heads) and as the ring moves it (KV heads)
        self.k, self.v = mk(S, h), mk(S, h)
        self.kv_small = torch.randn(2, 1, kv_heads, S, d, device=DEV, dtype=BF16)
        self.recv = torch.empty_like(self.kv_small)
        self.side = torch.cuda.Stream()
        self.steps = []                                  # (kind, q rows, kv rows, causal)
        for i in range(cp):
            if i == 0:
                self.steps.append(("diag", slice(0, S), slice(0, S), True))
            elif i <= self.r:
                self.steps.append(("earlier", slice(0, S), slice(0, S // 2), False))
            else:
                self.steps.append(("later", slice(S // 2, S), slice(0, S), False))
        self.fwd_saved = None
        self._fwd_meta = []
        self.out_init, self.out_correction, self.lse_merge = _FUSED

    def forward(self):
        S = self.S
        self.recv.copy_(self.kv_small)                   # the send buffer TE concatenates: one KV copy
        outs, lses, lse_run, merged = [], [], None, None
        streams = (torch.cuda.current_stream(), self.side)
        self.side.wait_stream(streams[0])
        for i, (kind, qs, ks, causal) in enumerate(self.steps):
            with torch.cuda.stream(streams[i % 2]):
                if TE == "1.9" and kind == "earlier":
                    self.kv_small[:, :, :, : S // 2].contiguous()   # the half-KV copy
                if TE == "1.9" and kind == "later":
                    self.q[:, :, S // 2:].contiguous()              # the half-q copy
                f = self.fwd_k(*self._views(qs, ks), causal)
                outs.append(f[0])
                lses.append(f[1])
            if i >= 1:                                   # step i-1's log-sum-exp merged on its stream
                lse_run, merged = self._merge_lse(lse_run, lses, i - 1, streams[(i - 1) % 2], merged)
        lse_run, merged = self._merge_lse(lse_run, lses, len(self.steps) - 1,
                                          streams[(len(self.steps) - 1) % 2], merged)
        streams[0].wait_stream(self.side)
        if TE == "1.9":                                  # a zeroed accumulator, every step corrected into it
            out, first = torch.zeros_like(self.q), 0
        else:                                            # v2.7: step 0's corrected output starts it
            out = self.out_init(outs[0], _sq(lses[0]), _sq(lse_run))
            first = 1
        for i in range(first, len(self.steps)):
            qs = self.steps[i][1]
            self.out_correction(out[:, :, qs], outs[i], _sq(lse_run)[:, :, qs], _sq(lses[i]))
        self.fwd_saved = (out, lse_run)
        return out

    def _views(self, qs, ks):
        return self.q[:, :, qs], self.k[:, :, ks], self.v[:, :, ks]

    def _merge_lse(self, lse_run, lses, i, stream, merged):
        """Step i's log-sum-exp merged on ``stream`` after the previous merge's event, as TE orders them."""
        with torch.cuda.stream(stream):
            if merged is not None:
                stream.wait_event(merged)
            if lse_run is None:
                lse_run = lses[0].clone()
            else:
                self.lse_merge(_sq(lse_run)[:, :, self.steps[i][1]], _sq(lses[i]))
            done = torch.cuda.Event()
            done.record(stream)
        return lse_run, done

    def backward(self):
        S, kv = self.S, self.kv_small.shape[2]
        out, lse = self.fwd_saved
        lse_half = lse[:, :, S // 2:].contiguous()
        dq = torch.empty_like(self.q)
        bufs = torch.empty((2, *self.kv_small.shape), device=DEV, dtype=BF16)
        bufs[0].copy_(self.kv_small)                     # KV and dKV travel together
        dkv = bufs[1]
        order = list(range(1, self.cp)) + [0]            # the diagonal block last
        for n, i in enumerate(order):
            kind, qs, ks, causal = self.steps[i]
            q, k, v = self._views(qs, ks)
            o, do = out[:, :, qs], self.do[:, :, qs]
            if TE == "1.9":
                if kind == "earlier":
                    self.kv_small[:, :, :, : S // 2].contiguous()
                elif kind == "later":
                    q, o, do = q.contiguous(), o.contiguous(), do.contiguous()
            g = self.bwd_k(do, q, k, v, o, lse_half if kind == "later" else lse, self._fwd_meta[i], causal)
            dq_i, dk_i, dv_i = g[0], g[1][:, :kv], g[2][:, :kv]   # the kernel's dk/dv at the KV heads
            if n == 0 and kind == "later":
                dq[:, :, : S // 2].zero_()
                dq[:, :, S // 2:].copy_(dq_i)
            elif n == 0:
                dq.copy_(dq_i)
            else:
                dq[:, :, qs].add_(dq_i)
            if TE == "1.9":
                torch.cat([dk_i, dv_i], 0)               # v1.9's per-step dK/dV concatenation
            tgt = dkv[:, :, :, slice(0, S // 2) if kind == "earlier" else slice(0, S)]
            if n == 0:
                tgt[0].copy_(dk_i)
                tgt[1].copy_(dv_i)
            else:
                tgt[0].add_(dk_i)
                tgt[1].add_(dv_i)
        return dq, dkv

    def prepare_backward(self):
        """Each step's forward metadata (seeds, lengths) that its backward kernel takes."""
        self._fwd_meta = []
        for kind, qs, ks, causal in self.steps:
            q, k, v = self._views(qs, ks)
            self._fwd_meta.append(self.meta_k(q, k, v, causal))

    def kernels_forward(self):
        for kind, qs, ks, causal in self.steps:
            self.fwd_k(*self._views(qs, ks), causal)

    def kernels_backward(self):
        out, lse = self.fwd_saved
        for i, (kind, qs, ks, causal) in enumerate(self.steps):
            q, k, v = self._views(qs, ks)
            ll = lse[:, :, qs].contiguous() if kind == "later" else lse
            self.bwd_k(self.do[:, :, qs], q, k, v, out[:, :, qs], ll, self._fwd_meta[i], causal)


def _causal_times(fwd_k, bwd_k, meta_k, q, k, v, do):
    """GPU seconds of one causal kernel over q, k, v: forward, backward."""
    f = meta_k(q, k, v, True)
    return (timed(lambda: fwd_k(q, k, v, True), reps=7, batch=3, sleep_cycles=SLEEP),
            timed(lambda: bwd_k(do, q, k, v, f[0], f[1], f, True), reps=7, batch=3, sleep_cycles=SLEEP))


def main() -> None:
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    name, fwd_k, bwd_k, meta_k = _pick_backend()
    try:
        fused = [_fuse(f) for f in (_out_init, _out_correction, _lse_merge)]
        t = torch.randn(1, 2, 256, HEAD_DIM, device=DEV, dtype=BF16)
        lse = torch.randn(1, 2, 256, device=DEV)
        fused[1](t.clone(), t, lse, lse)
        fused[0](t, lse, lse)
        fused[2](lse.clone(), lse)
        _FUSED[:] = fused
    except Exception as exc:  # noqa: BLE001
        print(f"corrections stay eager ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
    print(torch.cuda.get_device_name(), torch.__version__, "attention:", name, "TE", TE, flush=True)
    eager = "--eager-corrections" in sys.argv or _FUSED[0] is _out_init
    table = Table(f"{out_dir}/cp_ring_te{TE}_{name}{'_eager-corrections' if eager else ''}.csv",
                  ["seq", "cp", "heads", "kv_heads", "head_dim", "backend", "te", "full_fwd_s", "full_bwd_s",
                   "local_fwd_s", "local_bwd_s", "kernels_fwd_s", "kernels_bwd_s", "rank_fwd_s", "rank_bwd_s",
                   "corrections"])
    for seq, heads, kv_heads in (SHAPES[:1] if QUICK else SHAPES):
        try:
            full_f, full_b = _causal_times(fwd_k, bwd_k, meta_k, *(torch.randn(1, heads, seq, HEAD_DIM, device=DEV,
                                                                       dtype=BF16) for _ in range(4)))
            for cp in ((2,) if QUICK else CPS):
                if seq // cp < MIN_LOCAL or (seq > 16384 and cp > 2):
                    continue
                rank = Rank(seq, cp, heads, kv_heads, (fwd_k, bwd_k, meta_k))
                local_f, local_b = _causal_times(fwd_k, bwd_k, meta_k, rank.q, rank.k, rank.v, rank.do)
                rank.prepare_backward()
                rank.forward()
                row = dict(kernels_fwd_s=timed(rank.kernels_forward, reps=7, batch=3, sleep_cycles=SLEEP),
                           kernels_bwd_s=timed(rank.kernels_backward, reps=7, batch=3, sleep_cycles=SLEEP),
                           rank_fwd_s=timed(rank.forward, reps=7, batch=3, sleep_cycles=SLEEP),
                           rank_bwd_s=timed(rank.backward, reps=7, batch=3, sleep_cycles=SLEEP))
                table.add(seq=seq, cp=cp, heads=heads, kv_heads=kv_heads, head_dim=HEAD_DIM, backend=name, te=TE,
                          full_fwd_s=full_f, full_bwd_s=full_b, local_fwd_s=local_f, local_bwd_s=local_b,
                          corrections="eager" if eager or _EAGER else "compiled", **row)
                del rank
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001  keep the other shapes' rows
            print(f"seq {seq} heads {heads} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                  flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
