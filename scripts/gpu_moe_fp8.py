"""Expert GEMMs in FP8 and bf16 against tokens per expert, as the training frameworks launch them.

parplan prices an MoE layer's local experts as one grouped GEMM at the profile's ``grouped_gemm`` fraction of
the roofline, measured with ``torch._grouped_mm`` in bf16 (scripts/gpu_moe.py). Two things that curve does not
say are measured here:

* **FP8.** Under an FP8 recipe the expert GEMMs run in FP8; the model has taken the bf16 grouped fraction
  times the dense FP8 fraction. Small per-expert GEMMs gain less from FP8 than large ones (the same tile
  count, half the bytes per tile), so this times them: ``torch._scaled_mm`` per expert (per-tensor scales,
  operands already in FP8: the casts are priced apart) and ``torch._scaled_grouped_mm`` (row-wise scales),
  where this PyTorch has it.
* **The launch.** Transformer Engine's ``GroupedLinear`` (Megatron-Core's ``--moe-grouped-gemm`` on Hopper)
  runs one cuBLAS GEMM per expert spread over several CUDA streams (``general_grouped_gemm`` over
  ``nvte_multi_stream_cublas_gemm``, 4 streams by default), not one grouped kernel; so each dtype is timed as
  one grouped launch, a loop on one stream and a loop round-robin over 4 streams.

Every time is the GPU's alone: a GPU sleep is queued ahead of each repeat so that the host has launched every
kernel before the GPU reaches them (gpu_common.timed); the sleep also lets the GPU run above its loaded clock,
which scripts/grouped_gemm_curve.py takes out against a back-to-back run of scripts/gpu_moe.py. Each row
carries the model's time for the same GEMMs as the profile prices them now (``predicted_{dtype}_{launch}_s``).

    PYTHONPATH=. python3 scripts/gpu_moe_fp8.py OUT_DIR           # H100/H200, a few minutes
    PYTHONPATH=. python3 scripts/gpu_moe_fp8.py OUT_DIR --quick   # two shapes, for a smoke run
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, gpu_profile, timed  # noqa: E402

from parplan.cost import ops as ops_mod  # noqa: E402
from parplan.cost.kernels import KernelEnv, op_times  # noqa: E402

# (model, hidden, expert width): the gate/up GEMM of each is tokens x hidden x 2 * width
SHAPES = (("qwen3-30b-a3b", 2048, 768), ("qwen3-235b-a22b", 4096, 1536), ("deepseek-v3", 7168, 2048),
          ("gpt-oss-120b", 2880, 2880))
LOCAL_EXPERTS = (4, 16, 32)
TOKENS_PER_EXPERT = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
STREAMS = 4
SLEEP_CYCLES = 20_000_000   # ~10 ms of GPU sleep ahead of each repeat: the host launches a whole loop meanwhile


def _loop(fns, streams):
    """Run ``fns`` one after another on the current stream, or round-robin over ``streams``."""
    if not streams:
        for f in fns:
            f()
        return
    cur = torch.cuda.current_stream()
    for s in streams:
        s.wait_stream(cur)
    for i, f in enumerate(fns):
        with torch.cuda.stream(streams[i % len(streams)]):
            f()
    for s in streams:
        cur.wait_stream(s)


def bf16_fns(x, w, t):
    """One GEMM per expert: rows ``i*t .. (i+1)*t`` of ``x`` times ``w[i]`` (hidden x 2 width)."""
    return [lambda i=i: torch.mm(x[i * t:(i + 1) * t], w[i]) for i in range(w.shape[0])]


def fp8_fns(xq, wq_t, t, one):
    """FP8 GEMMs per expert with per-tensor scales; ``wq_t[i]`` is column-major, as _scaled_mm needs."""
    return [lambda i=i: torch._scaled_mm(xq[i * t:(i + 1) * t], wq_t[i], scale_a=one, scale_b=one,
                                         out_dtype=torch.bfloat16) for i in range(wq_t.shape[0])]


def grouped_bf16(x, w, offs):
    return torch._grouped_mm(x, w, offs=offs)


def grouped_fp8(xq, wq_t, offs, sa, sb):
    return torch._scaled_grouped_mm(xq, wq_t, sa, sb, offs=offs, out_dtype=torch.bfloat16)


def predicted(hw, e, t, h, n, fp8: bool, launch: str):
    """parplan's forward seconds of ``e`` experts' t x h x n GEMMs launched as ``launch`` (ops.GROUPED, with
    row-wise FP8 scales as torch._scaled_grouped_mm takes them, or ops.STREAMS, per tensor)."""
    op = replace(ops_mod._gemm("expert_gate_up", t, h, n, 2, batch=e, kind=ops_mod.BATCHED, fp8=fp8), grouped=launch)
    scaling = "rowwise" if launch == ops_mod.GROUPED else "tensorwise"
    return float(op_times(hw, op, "bf16", env=KernelEnv(fp8_scaling=scaling))[0])


def rows_for(hw, shapes, experts, tpes, reps):
    dev = "cuda"
    streams = [torch.cuda.Stream() for _ in range(STREAMS)]
    one = torch.ones((), device=dev, dtype=torch.float32)
    have_grouped = hasattr(torch, "_grouped_mm")
    have_scaled_grouped = hasattr(torch, "_scaled_grouped_mm")
    for name, h, f in shapes:
        n = 2 * f
        for e in experts:
            w = torch.randn(e, h, n, device=dev, dtype=torch.bfloat16) * 0.02
            # FP8 weights stored (e, n, h) row-major: each expert's transpose is the column-major operand.
            wq_t = (w.transpose(1, 2).contiguous() * 8).to(torch.float8_e4m3fn).transpose(1, 2)
            for t in tpes:
                x = torch.randn(e * t, h, device=dev, dtype=torch.bfloat16)
                xq = x.to(torch.float8_e4m3fn)
                offs = torch.arange(1, e + 1, device=dev, dtype=torch.int32) * t
                flops = 2.0 * e * t * h * n
                row = {"model": name, "hidden": h, "expert_width": f, "local_experts": e, "tokens_per_expert": t}

                def time_it(fn):
                    try:
                        return timed(fn, reps=reps, warmup=2, sleep_cycles=SLEEP_CYCLES)
                    except (RuntimeError, TypeError) as exc:   # a kernel this PyTorch or GPU lacks
                        print(f"  skipped: {str(exc).splitlines()[0][:120]}", flush=True)
                        return math.nan

                bf, fq = bf16_fns(x, w, t), fp8_fns(xq, wq_t, t, one)
                row["bf16_loop_s"] = time_it(lambda: _loop(bf, None))
                row["bf16_streams_s"] = time_it(lambda: _loop(bf, streams))
                row["bf16_grouped_s"] = time_it(lambda: grouped_bf16(x, w, offs)) if have_grouped else math.nan
                row["fp8_loop_s"] = time_it(lambda: _loop(fq, None))
                row["fp8_streams_s"] = time_it(lambda: _loop(fq, streams))
                if have_scaled_grouped:
                    sa = torch.ones(e * t, device=dev, dtype=torch.float32)
                    sb = torch.ones(e, n, device=dev, dtype=torch.float32)
                    row["fp8_grouped_s"] = time_it(lambda: grouped_fp8(xq, wq_t, offs, sa, sb))
                else:
                    row["fp8_grouped_s"] = math.nan
                for dtype in ("bf16", "fp8"):
                    for launch in (ops_mod.GROUPED, ops_mod.STREAMS):
                        row[f"predicted_{dtype}_{launch}_s"] = predicted(hw, e, t, h, n, dtype == "fp8", launch)
                best = {k: flops / row[k] / 1e12 for k in row if k.endswith("_s") and not k.startswith("pred")
                        and row[k] == row[k]}
                print(f"{name} E={e} t={t}: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in best.items())
                      + " TFLOP/s", flush=True)
                yield row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for moe_gemm_fp8.csv")
    ap.add_argument("--quick", action="store_true", help="two shapes, two sizes")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_moe_fp8.py: needs a CUDA GPU with FP8 (compute capability 8.9 or newer)")
    os.makedirs(args.out, exist_ok=True)
    hw = gpu_profile()
    shapes, experts, tpes = (SHAPES[:1], (4,), (256, 2048)) if args.quick else (SHAPES, LOCAL_EXPERTS,
                                                                                 TOKENS_PER_EXPERT)
    table = None
    for row in rows_for(hw, shapes, experts, tpes, args.reps):
        table = table or Table(os.path.join(args.out, "moe_gemm_fp8.csv"), list(row))
        table.add(**row)   # appended as measured: a run that dies keeps what it finished


if __name__ == "__main__":
    main()
