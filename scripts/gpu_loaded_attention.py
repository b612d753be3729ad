"""Causal attention kernels timed between GEMMs, as a training step runs them, and timed alone after an idle
spell, as ``gpu_causal_grid.py`` times them.

An H100 at its power limit runs its SMs at a lower clock while it is loaded than after an idle spell
(reports/gpu-checks/h100-2026-12-06b). A kernel of a few tens of microseconds timed right after a GPU sleep
runs at the idle clock; between the GEMMs of a step it runs at the loaded one. This times each kernel both
ways: ``alone`` (a GPU sleep, then three calls back to back, the mean) and ``loaded`` (after 1 s of GEMMs,
each call between two 8192^3 bf16 GEMMs, CUDA events around the attention call alone, the median over the
calls; ``gemm_s``, the GEMM after it), for SDPA's causal
forward and forward+backward (backward = the difference), FlashAttention-2 and cuDNN, at batch 1 over few
heads of 128 and at the attention tables' grid (the batch making 16k tokens, 32 heads) of each length.

Columns: backend, heads, seq, batch, grid, mode (alone | loaded), fwd_s, bwd_s, gemm_s.

``--table`` times only the attention tables' grid, loaded, for head sizes 64 (64 heads) and 128 (32 heads)
from 1k to 128k tokens, into ``attention_loaded.csv`` in the columns of ``gpu_stack_kernels.py``'s
``attention.csv`` (``scripts/attention_table.py`` reads either); the ``*_frac_gemm`` columns divide by the
sandwich's own GEMM rate, timed after each call (``gemm_tflops``: the clock state's witness).

``--causal-grid`` times ``gpu_causal_grid.py``'s shapes (batch 1 over 4-64 heads of 128 and 8-64 of 64, 1k-32k
tokens, beside the table grid of each length) loaded, into ``causal_grid_loaded.csv`` in that script's
columns, so ``scripts/causal_grid_check.py`` reads it as it reads the ones timed alone.

usage: python scripts/gpu_loaded_attention.py OUT_DIR [--quick | --table | --causal-grid]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, timed  # noqa: E402

QUICK = "--quick" in sys.argv
TABLE = "--table" in sys.argv
CAUSAL_GRID = "--causal-grid" in sys.argv
DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
BF16 = torch.bfloat16
HEAD_DIM = 128
TABLE_TOKENS, TABLE_HEADS = 16384, 32
SEQS = (2048,) if QUICK else (1024, 2048, 4096, 8192)
HEADS = (4, 32) if QUICK else (4, 8, 16, 32)
GEMM = 512 if QUICK else 8192   # the loaded sandwich: GEMMs of this size either side of each call
CALLS = 5 if QUICK else 30
WARM_S = 0.05 if QUICK else 1.0   # seconds of GEMMs before each loaded measurement
SLEEP = 50_000_000


def _warm(gemm, seconds: float) -> None:
    """GEMMs back to back for ``seconds`` of wall time: the power cap takes hold within 0.3 s of GEMM load
    (reports/gpu-checks/h100-2026-12-06b), so what follows runs in a step's clock state."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            gemm()
        torch.cuda.synchronize()


def _loaded(fn, gemm, calls: int = CALLS, warm_s: float = WARM_S) -> tuple[float, float]:
    """Median GPU seconds of ``fn`` called between two GEMMs over ``calls`` calls after ``warm_s`` of GEMMs, and
    the median of the GEMM after it (the clock state's witness)."""
    _warm(gemm, warm_s)
    marks = [[torch.cuda.Event(enable_timing=True) for _ in range(3)] for _ in range(calls)]
    for a, b, c in marks:
        gemm()
        a.record()
        fn()
        b.record()
        gemm()
        c.record()
    torch.cuda.synchronize()
    return (statistics.median(a.elapsed_time(b) / 1e3 for a, b, _ in marks),
            statistics.median(b.elapsed_time(c) / 1e3 for _, b, c in marks))


def _loaded_pass(backend, shape, gemm, calls: int = CALLS, warm_s: float = WARM_S):
    """Loaded causal SDPA on ``shape`` (batch, heads, seq, head size): forward seconds, backward seconds
    (forward+backward less forward) and the witness GEMM's seconds."""
    from torch.nn.attention import sdpa_kernel
    q, k, v = (torch.randn(shape, device=DEV, dtype=BF16, requires_grad=True) for _ in range(3))
    dy = torch.randn(shape, device=DEV, dtype=BF16)
    with sdpa_kernel([backend]):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        t_f, g_f = _loaded(fwd, gemm, calls, warm_s)
        t_fb, g_fb = _loaded(lambda: torch.autograd.grad(fwd(), (q, k, v), dy), gemm, calls, warm_s)
    return t_f, max(t_fb - t_f, 1e-9), (g_f + g_fb) / 2


def _shape_times(backend, batch, heads, seq, gemm):
    from torch.nn.attention import sdpa_kernel
    shape = (batch, heads, seq, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=DEV, dtype=BF16, requires_grad=True) for _ in range(3))
    dy = torch.randn(shape, device=DEV, dtype=BF16)
    out = {}
    with sdpa_kernel([backend]):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        both = lambda: torch.autograd.grad(fwd(), (q, k, v), dy)  # noqa: E731
        t_f = timed(fwd, reps=9, warmup=2, batch=3, sleep_cycles=SLEEP)
        out["alone"] = (t_f, max(timed(both, reps=9, warmup=2, batch=3, sleep_cycles=SLEEP) - t_f, 1e-9), None)
    out["loaded"] = _loaded_pass(backend, shape, gemm)
    return out


def _table_grid(out_dir, gemm, gemm_flops) -> None:
    """The attention tables' grid, loaded: each measured point as ``gpu_stack_kernels.py`` writes it."""
    from torch.nn.attention import SDPBackend
    table = Table(f"{out_dir}/attention_loaded.csv", ["backend", "head_dim", "heads", "seq", "batch", "fwd_s", "bwd_s",
                                                      "fwd_tflops", "bwd_tflops", "fwd_frac_gemm", "bwd_frac_gemm",
                                                      "gemm_tflops"])
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    seqs = (1024, 8192) if QUICK else (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
    for name, backend in backends.items():
        for head_dim in (64, 128):
            heads = 4096 // head_dim
            for seq in seqs:
                batch = max(1, 16384 // seq)
                calls = 30 if seq <= 16384 else 8 if seq <= 32768 else 3
                try:
                    t_f, t_b, t_g = _loaded_pass(backend, (batch, heads, seq, head_dim), gemm, calls)
                except RuntimeError as exc:
                    print(f"skip {name} d={head_dim} s={seq}: {str(exc).splitlines()[0][:160]}", flush=True)
                    torch.cuda.empty_cache()
                    continue
                flops = 4.0 * batch * heads * seq * seq * head_dim / 2  # causal half
                gemm_rate = gemm_flops / t_g
                table.add(backend=name, head_dim=head_dim, heads=heads, seq=seq, batch=batch, fwd_s=t_f, bwd_s=t_b,
                          fwd_tflops=flops / t_f / 1e12, bwd_tflops=2.5 * flops / t_b / 1e12,
                          fwd_frac_gemm=flops / t_f / gemm_rate, bwd_frac_gemm=2.5 * flops / t_b / gemm_rate,
                          gemm_tflops=gemm_rate / 1e12)
                torch.cuda.empty_cache()


def _causal_grid(out_dir, gemm) -> None:
    """gpu_causal_grid.py's shapes, loaded: 1 s of GEMMs before each length, 0.25 s before each shape."""
    from torch.nn.attention import SDPBackend
    table = Table(f"{out_dir}/causal_grid_loaded.csv", ["backend", "head_dim", "heads", "seq", "batch", "grid",
                                                        "fwd_s", "bwd_s", "gemm_s"])
    heads_of = {128: (8, 32) if QUICK else (4, 8, 16, 24, 32, 48, 64), 64: () if QUICK else (8, 16, 32, 64)}
    seqs = (1024, 4096) if QUICK else (1024, 2048, 4096, 8192, 16384, 32768)
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    for name, backend in backends.items():
        for head_dim, head_counts in heads_of.items():
            for seq in seqs:
                _warm(gemm, WARM_S)
                cases = [("table", max(1, TABLE_TOKENS // seq), 4096 // head_dim)]
                cases += [("mb1", 1, h) for h in head_counts]
                calls = 30 if seq <= 8192 else 10
                for grid, batch, heads in cases:
                    try:
                        t_f, t_b, t_g = _loaded_pass(backend, (batch, heads, seq, head_dim), gemm, calls, 0.25)
                    except RuntimeError as exc:
                        print(f"skip {name} d={head_dim} h={heads} s={seq}: {str(exc).splitlines()[0][:160]}",
                              flush=True)
                        torch.cuda.empty_cache()
                        continue
                    table.add(backend=name, head_dim=head_dim, heads=heads, seq=seq, batch=batch, grid=grid,
                              fwd_s=t_f, bwd_s=t_b, gemm_s=t_g)
                    torch.cuda.empty_cache()


def main() -> None:
    from torch.nn.attention import SDPBackend
    out_dir = next(a for a in sys.argv[1:] if not a.startswith("--"))
    os.makedirs(out_dir, exist_ok=True)
    print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch.__version__, flush=True)
    a, b = (torch.randn(GEMM, GEMM, device=DEV, dtype=BF16) for _ in range(2))
    gemm = lambda: a @ b  # noqa: E731
    if TABLE:
        _table_grid(out_dir, gemm, 2.0 * GEMM ** 3)
        return
    if CAUSAL_GRID:
        _causal_grid(out_dir, gemm)
        return
    table = Table(f"{out_dir}/loaded_attention.csv",
                  ["backend", "heads", "seq", "batch", "grid", "mode", "fwd_s", "bwd_s", "gemm_s"])
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    for name, backend in backends.items():
        for seq in SEQS:
            cases = [("table", max(1, TABLE_TOKENS // seq), TABLE_HEADS)] + [("mb1", 1, h) for h in HEADS]
            for grid, batch, heads in cases:
                try:
                    times = _shape_times(backend, batch, heads, seq, gemm)
                except Exception as exc:  # noqa: BLE001  keep the other shapes' rows
                    print(f"skip {name} h={heads} s={seq}: {str(exc).splitlines()[0][:160]}", flush=True)
                    torch.cuda.empty_cache()
                    continue
                for mode, (t_f, t_b, t_g) in times.items():
                    table.add(backend=name, heads=heads, seq=seq, batch=batch, grid=grid, mode=mode,
                              fwd_s=t_f, bwd_s=t_b, gemm_s=t_g if t_g is not None else "")
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
