"""What a tensor-parallel communication overlap costs the GEMMs it hides under, on one GPU.

Megatron-Core's ``--tp-comm-overlap`` (Transformer Engine's userbuffers) and torchtitan's async TP split
each sequence-parallel all-gather and reduce-scatter into steps and run a piece of the GEMM per step. In
NVIDIA's FP8 userbuffers configs every forward GEMM and the data-gradient GEMMs fed by an all-gather run
as a ring exchange (``RingExchangeOverlapCfg``: ``tp`` chunks of rows, the peer copies on the copy
engines), and the backward's other collectives as a bulk overlap beside the weight-gradient GEMM holding
2-24 SMs (``BulkOverlapCfg``; Megatron-Bridge 7af9601c9 src/megatron/bridge/training/comm_overlap.py,
userbuffers_fp8_h100_h8192_tp4_mbs1_seqlen8192); the BF16 configs pipeline the reduce-scatters in 4
splits. What SMs held beside a GEMM cost is ``scripts/gpu_overlap.py``'s contention table.

1. chunks.csv: the column-parallel (all-gather fed) and row-parallel (reduce-scatter fed) GEMMs of the
   validated collective-matmul layouts (``MODELS``), bf16 and FP8 (per-tensor
   ``torch._scaled_mm``), timed whole and as ``tp`` and 4 chunks of rows back to back; ``ratio`` =
   chunked / whole time.
2. copy_engine.csv: the same bf16 GEMMs alone and beside device-to-device copies looping on another
   stream (``Tensor.copy_`` of contiguous same-dtype tensors is a cudaMemcpyAsync; CUDA does not promise
   that a same-device copy runs on the copy engines), with the copies' own rate. A local copy reads and
   writes HBM far faster than one GPU's share of a ring exchange over NVLink, so the slowdown is an upper
   bound on what the exchange's traffic costs the GEMM.

3. ring.csv: each GEMM as the ring exchange runs it (``ring``'s docstring), unpaced and paced at the
   profile's NVLink rate, against the whole GEMM: what chunking, the exchange's HBM traffic and the waits
   between steps cost together.

4. paced_copy.csv: the bf16 and FP8 GEMMs beside copies paced to 1/8, 1/4, 1/2 and all of the copy's full
   rate: the GEMM slowdown against the HBM share a copy-engine exchange takes.

usage: python scripts/gpu_tp_overlap.py OUT_DIR [--quick] [--parts=chunks,copy,ring,paced] [--hw=PROFILE]
       [--link-gbps=G] [--only=MODEL-OR-LAYOUT, e.g. "llama3-70b tp4"]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, gpu_profile, queued_median, timed  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
BF16 = torch.bfloat16 if DEV.type == "cuda" else torch.float32
QUICK = "--quick" in sys.argv
SPLITS = 4  # num_splits of the pipelined reduce-scatter in NVIDIA's BF16 userbuffers configs

# (model, tp, hidden, kv_heads x head_dim, ffn, gated MLP, tokens per micro-batch): the TP layouts of the
# validated rows that run a collective matmul (Megatron-Bridge's Llama 3 70B and 405B at 8192 tokens; NeMo
# 24.07's GPT-3 20B, Nemotron 8B and 22B at TP 2 and Llama 2 70B at TP 4, with their micro-batch x sequence)
MODELS = (("llama3-70b", 4, 8192, 1024, 28672, True, 8192), ("llama3.1-405b", 4, 16384, 1024, 53248, True, 8192),
          ("llama3.1-405b", 8, 16384, 1024, 53248, True, 8192), ("gpt3-20b", 2, 6144, 6144, 24576, False, 4096),
          ("nemotron-8b", 2, 4096, 4096, 16384, False, 16384), ("nemotron-22b", 2, 6144, 6144, 24576, False, 8192),
          ("llama2-70b", 4, 8192, 1024, 28672, True, 4096))


def gemms():
    """(name, feeds, tp, m, k, n) of one layer's tensor-parallel GEMMs at each layout's tokens (1024 with
    --quick)."""
    only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), "")
    out = []
    for model, tp, h, kv, ffn, gated, tokens in MODELS[:1] if QUICK else \
            [x for x in MODELS if only in f"{x[0]} tp{x[1]}"]:
        scale, m = (16, 1024) if QUICK else (1, tokens)
        h_, kv_, ffn_ = h // scale, kv // scale, ffn // scale
        out += [(f"{model} tp{tp} qkv", "all_gather", tp, m, h_, (h_ + 2 * kv_) // tp),
                (f"{model} tp{tp} fc1", "all_gather", tp, m, h_, (2 if gated else 1) * ffn_ // tp),
                (f"{model} tp{tp} proj", "reduce_scatter", tp, m, h_ // tp, h_),
                (f"{model} tp{tp} fc2", "reduce_scatter", tp, m, ffn_ // tp, h_)]
    return out


def operands(m, k, n):
    return torch.randn(m, k, device=DEV, dtype=BF16), torch.randn(k, n, device=DEV, dtype=BF16)


def gemm_fn(a, b, dtype: str):
    """One GEMM of ``a`` (m x k) and ``b`` (k x n) in bf16, or in FP8 with per-tensor scales as
    Transformer Engine's current scaling runs it (row-major x column-major operands)."""
    if dtype == "bf16":
        return lambda x=a: x @ b
    fa, fb = a.to(torch.float8_e4m3fn), b.t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=DEV)
    return lambda x=fa: torch._scaled_mm(x, fb, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def chunks(out: str) -> None:
    table = Table(f"{out}/chunks.csv", ["gemm", "feeds", "dtype", "tp", "m", "k", "n", "pieces", "whole_s",
                                        "chunked_s", "ratio", "whole_tflops"])
    reps = 5 if QUICK else 20
    for name, feeds, tp, m, k, n in gemms():
        a, b = operands(m, k, n)
        for dtype in ("bf16", "fp8"):
            whole = timed(gemm_fn(a, b, dtype), reps=reps, batch=10)
            for pieces in sorted({tp, SPLITS}):
                parts = [gemm_fn(p, b, dtype) for p in a.chunk(pieces, dim=0)]
                chunked = timed(lambda: [f() for f in parts], reps=reps, batch=10)
                table.add(gemm=name, feeds=feeds, dtype=dtype, tp=tp, m=m, k=k, n=n, pieces=pieces, whole_s=whole,
                          chunked_s=chunked, ratio=chunked / whole, whole_tflops=2.0 * m * k * n / whole / 1e12)


def copy_buffers(nbytes: int, reps: int, batch: int):
    """(bytes, source, destination, seconds of one device-to-device copy between them)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    return nbytes, src, dst, timed(lambda: dst.copy_(src), reps=reps, batch=batch)


def copy_engine(out: str) -> None:
    table = Table(f"{out}/copy_engine.csv", ["gemm", "m", "k", "n", "alone_s", "with_s", "slowdown",
                                             "copy_gbps_alone"])
    reps = 5 if QUICK else 20
    nbytes, src, dst, copy_alone = copy_buffers((64 if QUICK else 1024) << 20, reps, 4)
    gbps = 2 * nbytes / copy_alone / 1e9  # read + write
    side, main = torch.cuda.Stream(), torch.cuda.Stream()
    for name, _feeds, _tp, m, k, n in gemms():
        a, b = operands(m, k, n)
        with torch.cuda.stream(main):
            alone = timed(lambda: a @ b, reps=reps, batch=10)
        torch.cuda.synchronize()
        copies = int(3.0 * alone * 10 * reps / copy_alone) + 4  # outlast the timed loop
        with torch.cuda.stream(side):
            for _ in range(copies):
                dst.copy_(src)
        with_s = queued_median(lambda: a @ b, reps, 10, main)
        table.add(gemm=name, m=m, k=k, n=n, alone_s=alone, with_s=with_s, slowdown=with_s / alone - 1,
                  copy_gbps_alone=gbps)


def sleep_rate() -> float:
    """Cycles per second of ``torch.cuda._sleep`` on this GPU (its SM clock, as it runs now)."""
    cycles = 2_000_000
    return cycles / timed(lambda: torch.cuda._sleep(cycles), reps=5, batch=4)


def ring(out: str, link_gbps: float) -> None:
    """Each TP GEMM as Transformer Engine's ring exchange runs it, with a local copy standing in for each
    step's peer copy: ``tp`` chunks on one stream, the next chunk's copy on another, each chunk waiting
    for its copy (all-gather fed: the copied input rows, in FP8 for FP8 GEMMs as Transformer Engine
    gathers them; reduce-scatter fed: each chunk's bf16 output sent on, and one pass that sums the ``tp``
    partials at the end). A ring step reads what it sends and writes what it receives, as a local copy of
    the same bytes does. ``paced``: each copy cut in 8 pieces with GPU sleeps between them so that it
    lasts as long as the chunk takes over a link of ``link_gbps`` (the profile's NVLink rate), the HBM
    traffic spread as the link spreads it."""
    table = Table(f"{out}/ring.csv", ["gemm", "feeds", "dtype", "tp", "m", "k", "n", "whole_s", "chunks_s",
                                      "ring_s", "paced_s", "paced_copies_s", "ring_ratio", "paced_ratio"])
    reps = 5 if QUICK else 20
    main_s, side = torch.cuda.Stream(), torch.cuda.Stream()
    per_s = sleep_rate()
    for name, feeds, tp, m, k, n in gemms():
        a, b = operands(m, k, n)
        for dtype in ("bf16", "fp8"):
            gathers = feeds == "all_gather"
            nbytes = (m // tp) * (k if gathers else n) * (1 if gathers and dtype == "fp8" else 2)
            src = torch.empty(nbytes, dtype=torch.uint8, device=DEV)
            dst = [torch.empty_like(src) for _ in range(tp)]
            parts = [gemm_fn(p, b, dtype) for p in a.chunk(tp, dim=0)]
            partial = torch.empty(tp, m // tp, n, device=DEV, dtype=BF16)  # the received partials, summed last
            pause = int(per_s * nbytes / (link_gbps * 1e9) / 8)

            def copy(i, paced):
                pieces = zip(src.chunk(8), dst[i].chunk(8)) if paced else [(src, dst[i])]
                for s_, d_ in pieces:
                    d_.copy_(s_)
                    if paced:
                        torch.cuda._sleep(pause)

            def exchange(paced):
                side.wait_stream(main_s)  # each call's exchange starts with its GEMMs, not ahead of them
                done = []
                for i in range(tp):
                    if gathers and i + 1 < tp:  # the next chunk arrives while this one multiplies
                        with torch.cuda.stream(side):
                            copy(i + 1, paced)
                            done.append(torch.cuda.Event())
                            done[-1].record()
                    if gathers and i > 0:
                        main_s.wait_event(done[i - 1])
                    parts[i]()
                    if not gathers and i + 1 < tp:  # this chunk's partial goes on while the next multiplies
                        ev = torch.cuda.Event()
                        ev.record(main_s)
                        with torch.cuda.stream(side):
                            side.wait_event(ev)
                            copy(i, paced)
                            done.append(torch.cuda.Event())
                            done[-1].record()
                if not gathers:
                    for ev in done:
                        main_s.wait_event(ev)
                    partial.sum(dim=0)
            with torch.cuda.stream(main_s):
                whole = timed(gemm_fn(a, b, dtype), reps=reps, batch=10)
                chunked = timed(lambda: [f() for f in parts], reps=reps, batch=10)
                ringed = timed(lambda: exchange(False), reps=reps, batch=5)
                paced = timed(lambda: exchange(True), reps=reps, batch=5)
            with torch.cuda.stream(side):
                copies = timed(lambda: [copy(i, True) for i in range(tp - 1)], reps=reps, batch=2)
            table.add(gemm=name, feeds=feeds, dtype=dtype, tp=tp, m=m, k=k, n=n, whole_s=whole, chunks_s=chunked,
                      ring_s=ringed, paced_s=paced, paced_copies_s=copies, ring_ratio=ringed / whole,
                      paced_ratio=paced / whole)


def paced_copies(out: str) -> None:
    """Each bf16 and FP8 GEMM alone and beside device-to-device copies paced to a share of the copy's full
    rate (each 64 MiB copy followed by a GPU sleep): the GEMM slowdown against the HBM traffic a
    copy-engine exchange adds, which a ring exchange sets by its link rate (read + write of what it moves)."""
    table = Table(f"{out}/paced_copy.csv", ["gemm", "dtype", "m", "k", "n", "share", "copy_gbps", "alone_s", "with_s",
                                            "slowdown"])
    reps = 5 if QUICK else 10
    nbytes, src, dst, one_copy = copy_buffers((8 if QUICK else 64) << 20, reps, 8)
    per_s = sleep_rate()
    side, main_s = torch.cuda.Stream(), torch.cuda.Stream()
    for name, _feeds, _tp, m, k, n in gemms():
        a, b = operands(m, k, n)
        for dtype in ("bf16", "fp8"):
            fn = gemm_fn(a, b, dtype)
            with torch.cuda.stream(main_s):
                alone = timed(fn, reps=reps, batch=10)
            for share in (0.125, 0.25, 0.5, 1.0):
                pause = int(per_s * one_copy * (1 / share - 1))
                period = one_copy / share
                with torch.cuda.stream(side):
                    rate = 2 * nbytes / timed(lambda: (dst.copy_(src), torch.cuda._sleep(pause) if pause else None),
                                              reps=3, batch=4) / 1e9
                torch.cuda.synchronize()
                with torch.cuda.stream(side):
                    for _ in range(int(3.0 * alone * 10 * reps / period) + 4):  # outlast the timed loop
                        dst.copy_(src)
                        if pause:
                            torch.cuda._sleep(pause)
                with_s = queued_median(fn, reps, 10, main_s)
                torch.cuda.synchronize()
                table.add(gemm=name, dtype=dtype, m=m, k=k, n=n, share=share, copy_gbps=rate, alone_s=alone,
                          with_s=with_s, slowdown=with_s / alone - 1)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        sys.exit(__doc__[__doc__.index("usage:"):].strip())
    out = args[0]
    os.makedirs(out, exist_ok=True)
    parts = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--parts=")), "chunks,copy,ring,paced").split(",")
    unknown = set(parts) - {"chunks", "copy", "ring", "paced"}
    if unknown:
        sys.exit(f"unknown part(s) {sorted(unknown)}: choose from chunks, copy, ring, paced")
    if DEV.type != "cuda":
        sys.exit("needs a CUDA GPU")
    if "chunks" in parts:
        chunks(out)
    if "copy" in parts:
        copy_engine(out)
    if "paced" in parts:
        paced_copies(out)
    if "ring" in parts:
        hw = gpu_profile(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--hw=")), None))
        link = hw.intra_node.bandwidth * hw.intra_node.efficiency / 1e9
        ring(out, float(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--link-gbps=")), link)))


if __name__ == "__main__":
    main()
