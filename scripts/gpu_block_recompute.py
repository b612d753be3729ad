"""Whole training steps on one GPU with the first N blocks recomputed: what a block recompute costs and saves.

Megatron's ``--recompute-method block --recompute-num-layers N`` (parplan's ``--recompute-layers N``) recomputes
the first N layers of each pipeline chunk whole and lets the rest keep their activations. parplan prices it as
``N / L`` of a full recompute's extra forward, and holds ``N`` layer inputs, ``L - N`` layers' activations and,
while one layer is rebuilt, that layer's activations. This script times the bench's plain-PyTorch model
(``parplan.bench.model``, eager, bf16 autocast, fused AdamW) with its first N blocks under
``torch.utils.checkpoint`` for N = 0, L/4, L/2, 3L/4 and L, and records the step, forward, backward and
optimizer medians and the peak of ``torch.cuda.max_memory_allocated``; a size that runs out of memory is a
row with ``status oom``. ``scripts/block_recompute_check.py`` predicts the same rows.

usage: python scripts/gpu_block_recompute.py OUT_DIR [--quick]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table  # noqa: E402

from parplan.bench.step import time_step  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

# (model, sequence, micro-batch): a 16-layer and a 28-layer Llama, activations a large share of the memory
CASES = (("llama3.2-1b", 8192, 2), ("llama3.2-3b", 4096, 2))
FIELDS = ["model", "seq", "micro_batch", "layers", "recompute_layers", "status", "step_s", "forward_s", "backward_s",
          "optimizer_s", "peak_memory_bytes", "attention"]


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        sys.exit(__doc__[__doc__.index("usage:"):].strip())
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    quick = "--quick" in sys.argv
    os.makedirs(args[0], exist_ok=True)
    table = Table(f"{args[0]}/block_recompute.csv", FIELDS)
    device = torch.device("cuda")
    for name, seq, mb in CASES[:1] if quick else CASES:
        spec = load_model(name)
        layers = spec.layers
        for k in sorted({0, layers // 4, layers // 2, 3 * layers // 4, layers}):
            row = dict(model=name, seq=seq, micro_batch=mb, layers=layers, recompute_layers=k)
            try:
                r = time_step(spec, seq, mb, device, iters=3 if quick else 5, warmup=2 if quick else 3,
                              recompute_layers=k)
            except torch.OutOfMemoryError:
                table.add(**row, status="oom")
            else:
                table.add(**row, status="ok", step_s=r.step_s, forward_s=r.forward_s, backward_s=r.backward_s,
                          optimizer_s=r.optimizer_s, peak_memory_bytes=r.peak_memory_bytes, attention=r.attention)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
