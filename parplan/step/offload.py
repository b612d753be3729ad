"""What keeping layers' saved activations in host memory costs and saves (``--offload-layers N``).

Which frameworks offload, and under which recompute and pipeline, is profile data (:mod:`parplan.specs.offload`).
Each offloaded layer's saved tensors (what the run's recompute keeps) leave for the host on a copy engine once
its forward is done and come back ahead of its backward (Megatron-Core's cpu_offload handlers; XLA's host
offload of remat names). Each copy runs beside the neighbouring layer's compute: hidden where that compute lasts
longer, the rest exposed, per layer and micro-batch. A copy moves at the hardware's ``host_link``: an H100
measured 55 GB/s each way over PCIe Gen5 x16 and no slowdown of the GEMMs beside it
(reports/gpu-checks/h100-2026-12-07b), so the model charges no compute slowdown.

Memory: a rank keeps its other layers' activations on the device as before, plus one offloaded layer's (the one
whose copy is under way); the host holds the offloaded layers' activations of every micro-batch in flight.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParplanError


def offloaded_layers(offload_layers, rank_layers):
    """Layers of a pipeline rank whose activations go to the host: N, or all of the rank's where it holds fewer."""
    if not offload_layers:
        return np.zeros_like(np.asarray(rank_layers, float))
    return np.minimum(float(offload_layers), np.asarray(rank_layers, float))


def copy_s(hw, nbytes):
    """Seconds of one copy of ``nbytes`` over the device's host link, one direction."""
    link = hw.host_link
    if link is None:
        raise ParplanError(f"{hw.name} states no host link (host_link in its profile): activation offload needs its "
                           f"bandwidth; drop --offload-layers, or give the profile a host_link")
    return link.latency_s + np.asarray(nbytes, float) / link.effective_bandwidth


def exposed_s(copy, forward_s, backward_s):
    """One offloaded layer's exposed copy time per micro-batch: the outbound copy beside the next layer's forward,
    the inbound one beside the previous layer's backward (recompute included)."""
    return np.maximum(copy - forward_s, 0.0) + np.maximum(copy - backward_s, 0.0)


def device_bytes(rank_layers, offloaded, per_layer_bytes, inflight):
    """A rank's saved activations on the device: its other layers' for every micro-batch in flight, plus one
    offloaded layer's while its copy is under way."""
    kept = (np.asarray(rank_layers, float) - offloaded) * per_layer_bytes * inflight
    return kept + np.where(offloaded > 0, per_layer_bytes, 0.0)


def host_bytes(offloaded, per_layer_bytes, inflight):
    """What the host holds for a rank: its offloaded layers' activations for every micro-batch in flight."""
    return offloaded * per_layer_bytes * inflight
