"""parplan: how to lay a transformer out over a cluster, how fast it runs, and how much memory it needs."""
from __future__ import annotations

from .errors import ParplanError
from .step.train import Estimate, estimate
from .cost.flops import model_flops_per_step
from .specs.cluster import Cluster, load_cluster
from .specs.hardware import Hardware, load_hardware
from .layouts.layout import Layout
from .specs.model import ModelSpec
from .specs.model_loader import load_model
from .cost.roofline import matmul_time_s as _matmul_time_s

from .version import __version__  # noqa: F401


def matmul_time_s(hardware, m: int, k: int, n: int, dtype: str = "bf16") -> float:
    """Predicted seconds for one (m x k) @ (k x n) matmul on ``hardware`` (a Hardware or a profile name)."""
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    for name, v in (("m", m), ("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1:
            raise ParplanError(f"matmul dimension {name} must be a positive number, got {v!r}")
    return float(_matmul_time_s(hw, m, k, n, dtype))


__all__ = ["Cluster", "Estimate", "Hardware", "Layout", "ModelSpec", "ParplanError", "estimate",
           "load_cluster", "load_hardware", "load_model", "matmul_time_s", "model_flops_per_step"]
