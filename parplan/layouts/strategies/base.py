"""What every parallelism plug-in provides, and the records they exchange with the estimator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...specs.hardware import Cluster
from ...specs.model import ModelSpec
from ...cost.ops import LocalDims


@dataclass(frozen=True)
class Collective:
    """One collective a layout issues, as seen by one device.

    ``size_bytes`` is the nccl-tests buffer size of one call; ``count`` the calls
    per ``per`` (a layer of one micro-batch, a micro-batch on one stage, or a step).
    ``hidden_by`` names the compute that can hide it (``none`` = critical path).
    """

    name: str
    op: str
    axis: str
    group: Any
    stride: Any
    size_bytes: Any
    count: Any
    per: str        # layer | microbatch | step
    phase: str      # forward | backward | recompute | step
    hidden_by: str  # none | forward | backward | attention


@dataclass(frozen=True)
class Context:
    """Everything a plug-in needs to know about one (or many, as arrays) layout on one cluster."""

    model: ModelSpec
    cluster: Cluster
    layout: Any
    dims: LocalDims
    bpe: int
    seq: Any               # full sequence length
    stage_layers: Any      # layers on the busiest pipeline stage
    micro_batches: Any     # per pipeline per step
    layer_params: Any      # parameters of one layer (before tensor-parallel sharding)
    stage_params: Any      # parameters of the busiest pipeline stage (before tensor-parallel sharding)
    recompute: Any         # 0 none, 1 selective, 2 full

    def stride(self, axis: str):
        return self.layout.stride(axis)


class Strategy:
    """A mesh axis. Subclasses override what their parallelism changes."""

    axis = ""

    def local_dims(self, dims: dict, model: ModelSpec, layout) -> dict:
        """Shrink the per-device shapes (a dict of LocalDims fields)."""
        return dims

    def collectives(self, ctx: Context) -> list[Collective]:
        return []

    def state_divisors(self, ctx: Context) -> dict[str, Any]:
        """Divisors of the per-device weights, gradients and optimizer state this axis shards."""
        return {}
