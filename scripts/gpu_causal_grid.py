"""Causal fused attention over small grids: how the rate falls when few heads share the GPU.

The profiles' attention tables were measured with the batch making 16k tokens (``gpu_stack_kernels.py``:
32 heads of 128 or 64 of 64, batch 16384 / seq), a grid of thousands of query tiles. A run at
micro-batch 1 with few heads a GPU (tensor parallelism, context-parallel blocks) launches far fewer,
and a causal kernel's query tiles do unequal work (tile m of a head visits m + 1 key tiles), so the
longest can run alone at the end. This times SDPA's causal forward and backward (FlashAttention-2 and
cuDNN, chosen as ``sdpa_kernel`` chooses them) at batch 1 over 4 to 64 heads and 1k to 32k tokens, and,
in the same process and clock state, the table's own grid at each length as the reference.

Columns: backend, head_dim, heads, seq, batch, fwd_s, bwd_s (backward = forward+backward minus
forward, as the table's run took it), grid ("table" or "mb1").

``--holdout`` times shapes the model's one fitted number (``CAUSAL_TILE_FIXED``) was not fitted to: other
head counts and lengths, and micro-batch 2, into ``causal_grid_holdout.csv`` (grid "mb1" or "mb2").

usage: python scripts/gpu_causal_grid.py OUT_DIR [--quick | --holdout]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, timed  # noqa: E402

QUICK = "--quick" in sys.argv
HOLDOUT = "--holdout" in sys.argv
DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
BF16 = torch.bfloat16
TABLE_TOKENS = 16384   # the table run's batch x seq
TABLE_COLUMNS = 4096   # ... and heads x head size
SEQS = (1024, 4096) if QUICK else (1024, 2048, 4096, 8192, 16384, 32768)
HEADS = {128: (8, 32) if QUICK else (4, 8, 16, 24, 32, 48, 64), 64: () if QUICK else (8, 16, 32, 64)}
MICRO_BATCHES = (1,)
if HOLDOUT:
    SEQS = (3072, 6144, 12288, 24576)
    HEADS = {128: (6, 12, 20, 40), 64: (12, 40)}
    MICRO_BATCHES = (1, 2)
SLEEP = 50_000_000  # GPU cycles queued ahead of each repeat, so the host issues every call first


def _time(backend, batch, heads, seq, head_dim):
    """GPU seconds of one causal forward, and of its backward, on (batch, heads, seq, head_dim)."""
    from torch.nn.attention import sdpa_kernel
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, device=DEV, dtype=BF16, requires_grad=True) for _ in range(3))
    dy = torch.randn(shape, device=DEV, dtype=BF16)
    with sdpa_kernel([backend]):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        reps = 5 if seq >= 32768 else 9
        t_f = timed(fwd, reps=reps, warmup=2, batch=3, sleep_cycles=SLEEP)
        t_fb = timed(lambda: torch.autograd.grad(fwd(), (q, k, v), dy), reps=reps, warmup=2, batch=3,
                     sleep_cycles=SLEEP)
    return t_f, max(t_fb - t_f, 1e-9)


def main() -> None:
    from torch.nn.attention import SDPBackend
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch.__version__, flush=True)
    csv_name = "causal_grid_holdout.csv" if HOLDOUT else "causal_grid.csv"
    table = Table(f"{out_dir}/{csv_name}", ["backend", "head_dim", "heads", "seq", "batch", "grid",
                                                 "fwd_s", "bwd_s"])
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    for name, backend in backends.items():
        for head_dim, head_counts in HEADS.items():
            for seq in SEQS:
                cases = [("table", max(1, TABLE_TOKENS // seq), TABLE_COLUMNS // head_dim)]
                cases += [(f"mb{mb}", mb, h) for mb in MICRO_BATCHES for h in head_counts]
                for grid, batch, heads in cases:
                    try:
                        t_f, t_b = _time(backend, batch, heads, seq, head_dim)
                    except Exception as exc:  # noqa: BLE001  keep the other shapes' rows
                        print(f"skip {name} d={head_dim} h={heads} s={seq}: {str(exc).splitlines()[0][:160]}",
                              flush=True)
                        torch.cuda.empty_cache()
                        continue
                    table.add(backend=name, head_dim=head_dim, heads=heads, seq=seq, batch=batch, grid=grid,
                              fwd_s=t_f, bwd_s=t_b)
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
