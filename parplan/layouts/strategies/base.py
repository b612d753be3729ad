"""The plug-in contract: what a mesh axis tells the step, and the records they exchange.

A strategy (one per mesh axis) says three things about a layout, and nothing else:

* how it shrinks the per-device shapes of one micro-batch (``local_dims``);
* which collectives it issues (``collectives``), each tagged with *when* it runs (``per``
  layer, micro-batch or step; ``phase``), *where* (``stage``: every pipeline stage, or the
  first or last, which hold the embedding and the head) and *what can hide it*
  (``hidden_by``: nothing, the attention core of the same layer, the layer's linear GEMMs it
  feeds (a collective matmul), the same layer's shared experts, the forward or backward pass of
  the micro-batch, or another micro-batch's compute of the same layers);
* how it divides the model states (``state_divisors``) and which extra buffers it keeps
  (``memory_bytes``).

The step composes those tags generically, so a new axis is one new class registered with
:func:`parplan.layouts.strategies.register`: its breakdown key (``<axis>_comm``), its result
columns and its bottleneck name follow from the registration. An axis may be *folded* over
others (``folded_over``): its ranks are laid over theirs rather than multiplying the device
count, as Megatron-Core lays expert parallelism over the data-parallel ranks.

One strategy may split the layers into pipeline stages (``Stages``); without one, the model
is a single stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...cost.ops import LocalDims
from ...specs.cluster import Cluster
from ...specs.model import ModelSpec

PERS = ("layer", "microbatch", "step")
PHASES = ("forward", "backward", "recompute", "step")
STAGES = ("all", "first", "last")
HIDERS = ("none", "attention", "matmul", "forward", "backward", "shared_experts", "micro_batch")


@dataclass(frozen=True)
class Collective:
    """One collective a layout issues, as seen by one device.

    ``size_bytes`` is the nccl-tests buffer size of one call; ``count`` the calls
    per ``per`` (a layer of one micro-batch, a micro-batch on one stage, or a step).
    ``hidden_by`` names the compute that can hide it (``none`` = critical path);
    ``stage`` the pipeline stage that issues it (``first``: the embedding's, ``last``: the
    head's; ``all``: every stage).
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
    hidden_by: str  # none | forward | backward | attention | matmul | shared_experts | micro_batch
    stage: str = "all"
    fanout: Any = None  # a dispatch's (top_k, experts, etp): parplan.cost.collectives.dispatch_time_s


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
    recompute: Any         # codes of parplan.cost.memory.RECOMPUTE_MODES
    sampling: bool = False  # a serving pass: the head's logits are gathered for sampling
    software: Any = None    # the run's parplan.specs.framework.Software (what its framework does)
    grad_bytes: Any = 4     # bytes per gradient element as accumulated and reduced
    weight_bytes: Any = 2   # bytes per weight element as ZeRO-3 gathers it
    expert_params: Any = 0  # of stage_params, the routed experts' (an MoE model's; the expert axis shards them)
    recompute_share: Any = None  # the fraction of layers whose forward (collectives included) runs again whole

    def again(self):
        """How many times per layer the recompute re-runs the forward's collectives (0 to 1)."""
        if self.recompute_share is None:
            return np.where(np.asarray(self.recompute) == 2, 1.0, 0.0)
        return np.asarray(self.recompute_share, float)

    def stride(self, axis: str):
        return self.layout.stride(axis)


class Strategy:
    """A mesh axis. Subclasses override what their parallelism changes."""

    axis = ""
    folded_over: tuple[str, ...] = ()
    # When the axis's per-step work runs after the last backward, lower first (the order the
    # step adds these costs in): Megatron-Core's finalize_model_grads syncs data-parallel
    # gradients before it all-reduces the pipeline's tied embeddings.
    finish_order = 2

    @classmethod
    def breakdown_labels(cls) -> dict[str, str]:
        """Step-breakdown keys this axis adds, with the name ``plan`` gives each as a bottleneck."""
        return {f"{cls.axis}_comm": f"{cls.axis.upper()} comm"}

    def local_dims(self, dims: dict, model: ModelSpec, layout) -> dict:
        """Shrink the per-device shapes (a dict of LocalDims fields)."""
        return dims

    def collectives(self, ctx: Context) -> list[Collective]:
        return []

    def layer_ops(self, dims, model: ModelSpec, layout, dtype: str) -> list:
        """Kernels this axis adds to each layer on a device (``parplan.cost.ops.Op``), beyond the
        layer's own: e.g. the merges of ring attention's partial outputs."""
        return []

    def state_divisors(self, ctx: Context) -> dict[str, Any]:
        """Divisors of the per-device weights, gradients and optimizer state this axis shards."""
        return {}

    def memory_bytes(self, ctx: Context) -> dict[str, Any]:
        """Buffers per device beyond weights, gradients, optimizer state and activations."""
        return {}


class Stages:
    """How the layers split into pipeline stages and how micro-batches flow through them.

    The default is one stage holding every layer, the embedding and the head; a pipeline
    strategy overrides each method (:class:`parplan.layouts.strategies.pipeline.PipelineParallel`).
    """

    splits_stages = False

    def stage_layers(self, model: ModelSpec, layout):
        """Transformer layers on the rank that holds the most."""
        return np.ceil(model.layers / np.asarray(1.0))

    def stage_params(self, model: ModelSpec, layout):
        """Parameters of the rank that holds the most (before tensor-parallel sharding)."""
        return model.layers * model.layer_params() + model.embedding_params() + model.output_params()

    def memory_stages(self, model: ModelSpec, layout, micro_batches) -> list["StageMemory"]:
        """The ranks whose memory may peak: their layers, parameters, the micro-batches whose activations
        they hold at their peak, and whether they hold the head (its logits)."""
        return [StageMemory(self.stage_layers(model, layout), self.stage_params(model, layout), np.asarray(1.0),
                            True)]

    def compose(self, model: ModelSpec, layout, t: "StageTimes"):
        """(seconds of the micro-batches through the stages, the busiest stage's :class:`Busiest` work per
        micro-batch, {breakdown key: seconds} of the schedule's own idle time) of one step."""
        layers = np.asarray(float(model.layers))
        busy = Busiest(layers, layers * t.layer_s + t.emb_f + t.emb_b + t.head_f + t.head_b, layers * t.layer_rec_s,
                       1.0, 1.0)
        per_mb = busy.compute_s + busy.recompute_s + layers * t.layer_comm_s + t.mb_comm_s + t.first_comm_s + \
            t.last_comm_s
        return t.micro_batches * per_mb, busy, {}


@dataclass(frozen=True)
class StageTimes:
    """What a schedule composes, per micro-batch on one device: one layer's compute (forward + backward),
    the weight-gradient part of it (the W pass zero-bubble schedules defer), its recompute and its exposed
    collectives; every stage's exposed per-micro-batch collectives, and the first's (the embedding's) and the
    last's (the head's); the embedding's and head's compute (forward, backward); the layer's forward.
    Arrays allowed."""

    micro_batches: Any
    layer_s: Any
    layer_wgrad_s: Any
    layer_rec_s: Any
    layer_comm_s: Any
    mb_comm_s: Any
    first_comm_s: Any
    last_comm_s: Any
    emb_f: Any
    emb_b: Any
    head_f: Any
    head_b: Any
    layer_fwd_s: Any         # the forward part of layer_s (DualPipe's F)


@dataclass(frozen=True)
class Busiest:
    """The busiest stage's work per micro-batch: its layers, its compute (with the embedding or head it
    holds), its recompute, and whether it issues the embedding's (``first_share``) and the head's
    (``last_share``) collectives (1 or 0)."""

    layers: Any
    compute_s: Any
    recompute_s: Any
    first_share: Any
    last_share: Any


@dataclass(frozen=True)
class StageMemory:
    """One rank as memory sees it: its layers and parameters, the micro-batches whose activations it
    holds at its peak, and whether it holds the head (and so the logits)."""

    layers: Any
    params: Any
    inflight: Any
    head: Any
