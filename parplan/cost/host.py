"""The host's time to issue one layer's kernels, and what a layer costs when the GPU outruns the host.

A framework issues a training layer's kernels from Python one at a time. While each kernel runs longer than
the host takes to issue the next, the host keeps ahead and the layer takes the GPU's time; once the kernels
are shorter (small layers, fine-grained experts, wide tensor parallelism), the GPU waits on the host and
the layer takes the host's time. Per direction, a layer therefore takes ``max(GPU, host)``: Megatron-Core's
MoE guide calls this the CPU overhead bottleneck and names its cures (CUDA graphs, fewer kernel launches:
a smaller TP or a larger micro-batch); the serving model's per-kernel launches are the same effect at decode.

The host's time is the framework's own measurement (``host`` in ``frameworks/*.yaml``, ``HostTimes``):

    host = layer_s + moe_share * (moe_s + local_experts * expert_s)      forward and backward each

``layer_s`` a transformer layer (attention and MLP), ``moe_s`` what an MoE layer's router, dispatch and
combine add, ``expert_s`` each local expert whose GEMMs launch one by one (a loop, or Transformer Engine's
GroupedLinear over streams); one grouped kernel launches once for all experts, so it adds none.
"""
from __future__ import annotations

import numpy as np

from ..specs.framework import HostTimes
from ..specs.model import ModelSpec
from . import moe as moe_mod


def layer_host_s(model: ModelSpec, d, host: HostTimes, expert_gemms: str, moe_share=1.0):
    """(forward_s, backward_s) the host takes to issue one layer of one micro-batch on one device.

    ``moe_share``: the share of this device's layers that are MoE layers (a dense model: none)."""
    fwd, bwd = (np.asarray(x, float) for x in host.layer_s)
    if not model.is_moe:
        return fwd, bwd
    local = model.experts / np.asarray(moe_mod.parallel(model, d).ep, float)
    per_expert = 0.0 if expert_gemms == "grouped" else 1.0
    share = np.asarray(moe_share, float)
    return tuple(base + share * (m + local * per_expert * e)
                 for base, m, e in zip((fwd, bwd), host.moe_s, host.expert_s))


def notes(gpu_s, host_s) -> tuple[str, ...]:
    """Say where the host sets a layer's pace: ``gpu_s`` and ``host_s`` are (forward, backward) seconds."""
    if any(np.ndim(x) for x in (*gpu_s, *host_s)):
        return ()
    slow = [(name, g, h) for name, g, h in zip(("forward", "backward"), gpu_s, host_s) if float(h) > float(g)]
    if not slow:
        return ()
    parts = "; ".join(f"{n} {1e3 * float(h):.3g} ms to issue, {1e3 * float(g):.3g} ms of kernels" for n, g, h in slow)
    return (f"host-bound layers: {parts} (the framework's host times). The host issues the same launches "
            "whatever their size: a larger micro-batch or a smaller TP gives each more work; CUDA graphs, fused "
            "or grouped kernels, or a faster host CPU shorten the host's part",)
