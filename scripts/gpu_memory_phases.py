"""Where a training step's memory peaks, phase by phase: the step of `parplan bench --suite step` (fp32
parameters under bf16 autocast, fused AdamW, ``zero_grad(set_to_none=True)``), eager, compiled and compiled
with torchao FP8 linears, measured with ``torch.cuda.memory_allocated`` at the phase boundaries and
``max_memory_allocated`` within each phase.

Columns (bytes; "held" = allocated at that point minus the step-start states):
  states: allocated at the step's start (weights and optimizer state; the gradients were freed),
  layer: median over blocks of what one block's forward leaves allocated (its saved tensors and output),
  forward_end: held when the loss is computed, forward_peak: the peak within the forward,
  backward_peak / backward_end: within and after the backward (the gradients),
  optimizer_peak: within the optimizer step, step_peak: max_memory_allocated over the step.

usage: python scripts/gpu_memory_phases.py OUT_DIR [MODEL:SEQ:MICRO_BATCH ...] [--modes=eager,compiled,compiled-fp8]
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.getcwd())

from gpu_common import Table  # noqa: E402

from parplan.bench.step import step_model  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

CONFIGS = ["gpt2-large:1024:8", "qwen2.5-0.5b:4096:4", "llama3.2-1b:8192:2", "llama3.2-1b:16384:1",
           "llama3.2-3b:4096:2", "mistral-7b:2048:1"]   # scripts/gpu_step_suite.sh's steps
FIELDS = ["model", "seq", "micro_batch", "mode", "params", "states", "layer", "forward_end", "forward_peak",
          "backward_peak", "backward_end", "optimizer_peak", "step_peak"]


def phases(spec, seq: int, micro_batch: int, mode: str, warmup: int = 2) -> dict:
    dev = torch.device("cuda")
    torch._dynamo.reset()  # every model's blocks share Block.forward: without a reset they hit the recompile limit
    model, loss_fn = step_model(spec, seq, dev, compile=mode.startswith("compiled"),
                                fp8="tensorwise" if mode == "compiled-fp8" else "")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, spec.vocab, (micro_batch, seq + 1), device=dev)
    x, y = tokens[:, :-1], tokens[:, 1:]
    after_block: list[int] = []
    for block in model.layers:
        block.register_forward_hook(lambda *_: after_block.append(torch.cuda.memory_allocated()))

    def step(record: bool) -> dict:
        out = {}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        after_block.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        torch.cuda.synchronize()
        out["states"], out["forward_end"] = base, torch.cuda.memory_allocated() - base
        out["forward_peak"] = torch.cuda.max_memory_allocated() - base
        deltas = [b - a for a, b in zip(after_block, after_block[1:])]
        out["layer"] = statistics.median(deltas) if deltas else 0
        torch.cuda.reset_peak_memory_stats()
        loss.backward()
        torch.cuda.synchronize()
        out["backward_peak"] = torch.cuda.max_memory_allocated() - base
        out["backward_end"] = torch.cuda.memory_allocated() - base
        del loss
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        out["optimizer_peak"] = torch.cuda.max_memory_allocated() - base
        opt.zero_grad(set_to_none=True)
        out["step_peak"] = base + max(out["forward_peak"], out["backward_peak"], out["optimizer_peak"])
        return out

    for _ in range(warmup):
        step(False)
    result = step(True)
    result["params"] = sum(p.numel() for p in model.parameters())
    return result


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    out_dir, rest = argv[0], [a for a in argv[1:] if not a.startswith("--modes=")]
    modes = next((a.split("=", 1)[1] for a in argv if a.startswith("--modes=")), "eager,compiled,compiled-fp8")
    os.makedirs(out_dir, exist_ok=True)
    table = Table(os.path.join(out_dir, "memory_phases.csv"), FIELDS)
    for item in rest or CONFIGS:
        name, seq, mb = item.split(":")
        spec = load_model(name)
        for mode in modes.split(","):
            try:
                row = phases(spec, int(seq), int(mb), mode)
            except Exception as exc:  # a mode that cannot run (no torchao, out of memory) costs its row only
                print(f"{name} {mode}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
                continue
            finally:
                torch.cuda.empty_cache()
            table.add(model=name, seq=int(seq), micro_batch=int(mb), mode=mode, **row)


if __name__ == "__main__":
    main(sys.argv[1:])
