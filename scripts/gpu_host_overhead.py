"""Host (CPU) time of eager PyTorch launches on one GPU: what a serving stack's ``launch_s`` and
``graph_launch_s`` stand for, measured apart from the records they predict.

Each case runs on tiny CUDA tensors behind a queued GPU sleep (``torch.cuda._sleep``), so the GPU never
waits on the host and the host never waits on the GPU (each run stays under the ~1000 launches CUDA
queues before the host blocks): the wall time of ``--calls`` back-to-back calls,
per call, is the host's alone (the Python call, the dispatcher, ``cudaLaunchKernel``). Cases: single aten
ops (add, mul, silu, F.rms_norm, a matmul, a copy into a cache slice, SDPA at a decode shape, a slice and
view that launch nothing), a decode layer of ``scripts/gpu_inference_check.py`` at a tiny width (its
14 kernels and the views between them), and ``CUDAGraph.replay()`` of that layer stack.

usage: python scripts/gpu_host_overhead.py OUT_DIR [--calls=400] [--repeats=7]
Writes OUT_DIR/host_overhead.csv (case, kernels, calls, host_us_per_call: the median over repeats).
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())

from gpu_common import Table  # noqa: E402
from gpu_inference_check import as_graph, decode_fn, make_layers, rms_norm  # noqa: E402

from parplan.specs.model import model_from_dict  # noqa: E402

TINY = {"name": "tiny", "layers": 4, "hidden": 256, "heads": 4, "kv_heads": 2, "head_dim": 64, "ffn_hidden": 512,
        "activation": "swiglu", "vocab": 1024, "seq_len": 128, "norm": "rmsnorm", "position": "none", "bias": False}


def host_us(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the host microseconds per call of ``calls`` calls queued behind a sleep."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time: the queue stays ahead of the host throughout
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    out = argv[0]
    opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--"))
    calls, repeats = int(opts.get("calls", 400)), int(opts.get("repeats", 7))
    os.makedirs(out, exist_ok=True)
    table = Table(os.path.join(out, "host_overhead.csv"), ["case", "kernels", "calls", "host_us_per_call"])
    dev, dt = torch.device("cuda"), torch.bfloat16
    a, b = torch.randn(1, 256, device=dev, dtype=dt), torch.randn(1, 256, device=dev, dtype=dt)
    w, n = torch.randn(256, 256, device=dev, dtype=dt), torch.ones(256, device=dev, dtype=dt)
    cache = torch.zeros(1, 2, 128, 64, device=dev, dtype=dt)
    kv = torch.randn(1, 2, 1, 64, device=dev, dtype=dt)
    q = torch.randn(1, 2, 2, 64, device=dev, dtype=dt)
    big = torch.randn(1, 768, device=dev, dtype=dt)
    cases = [
        ("add", 1, lambda: a + b),
        ("mul", 1, lambda: a * b),
        ("silu", 1, lambda: F.silu(a)),
        ("rms_norm", 1, lambda: rms_norm(a, n)),
        ("matmul", 1, lambda: a @ w),
        ("copy_into_cache_slice", 1, lambda: cache[:, :, 64:65].copy_(kv)),
        ("sdpa_decode", 1, lambda: F.scaled_dot_product_attention(q, cache[:, :, :65], cache[:, :, :65])),
        ("slice_and_view", 0, lambda: big[:, :256].view(1, 4, 64)),
    ]
    for name, kernels, fn in cases:
        table.add(case=name, kernels=kernels, calls=calls, host_us_per_call=host_us(fn, calls, repeats))
    spec = model_from_dict(TINY, "tiny decode stack")
    layers = make_layers(spec, spec.layers, dt, dev)
    caches = [(torch.zeros(1, spec.kv_heads, 128, spec.head_dim, device=dev, dtype=dt),
               torch.zeros(1, spec.kv_heads, 128, spec.head_dim, device=dev, dtype=dt)) for _ in layers]
    run = decode_fn(spec, layers, torch.randn(1, spec.hidden, device=dev, dtype=dt), caches, 64)
    # 10 calls of 4 layers of 14 kernels: under the ~1000 launches CUDA queues before the host blocks
    per_stack = host_us(run, 10, repeats)
    table.add(case="decode_layer", kernels="", calls=10, host_us_per_call=per_stack / spec.layers)
    replay = as_graph(run)
    if replay is not None:
        table.add(case="graph_replay_4_layers", kernels="", calls=max(calls // 8, 20),
                  host_us_per_call=host_us(replay, max(calls // 8, 20), repeats))


if __name__ == "__main__":
    main(sys.argv[1:])
