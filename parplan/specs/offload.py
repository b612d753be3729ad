"""Activation offload as a framework runs it: a profile's ``activation_offload`` key (``--offload-layers N``).

The saved activations of N transformer layers of each pipeline rank wait in host memory from their forward
to their backward; what they are is what the run's recompute keeps (every saved tensor without recompute,
the layer's input under full recompute). The frameworks differ in when they allow it:

* Megatron-Core ``--cpu-offloading-num-layers N``: N layers of the rank's block offload the tensors their
  backward saves; N below the model's layers, no pipeline, no activation recompute (NVIDIA/Megatron-LM
  d98e8a64 megatron/core/transformer/transformer_config.py, the cpu_offloading checks); up to core_v0.14.0
  ``cpu_offloading_weights`` defaults on and moves the weights too, which this does not price;
* MaxText: a remat policy that names a saved tensor ``offload`` (``remat_policy: custom`` with
  ``decoder_layer_input: offload``, base.yml) moves it to host memory in every layer of the scanned stack.

A profile's ``activation_offload`` says under which recompute modes it offloads (``recompute``), whether with
a pipeline (``pipeline``) and how many layers may go (``layers``: any count, every layer of a rank, or fewer
than the model's); a profile without it offers none.
:mod:`parplan.step.offload` prices the copies and the memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ParplanError
from .yamlio import check_keys, choices, flag, require_mapping, text

KEYS = ("recompute", "pipeline", "layers")
# Which counts of layers it offloads: any; every layer of a rank (a scanned stack shares one policy); or fewer than
# the model's layers (Megatron-Core).
LAYER_COUNTS = ("any", "all", "below-all")


@dataclass(frozen=True)
class ActivationOffload:
    recompute: tuple[str, ...]          # the recompute modes it offloads under
    pipeline: bool = True               # combines with pipeline parallelism
    layers: str = "any"                 # LAYER_COUNTS


def offload_from_dict(data: Any, what: str, recompute_modes: tuple[str, ...]) -> ActivationOffload | None:
    """The profile's ``activation_offload`` mapping, or None where it has none."""
    if data is None:
        return None
    data = require_mapping(data, what)
    check_keys(data, KEYS, what)
    modes = choices(data, "recompute", what, recompute_modes)
    if not modes:
        raise ParplanError(f"{what}: recompute must list the recompute modes it offloads under")
    return ActivationOffload(recompute=modes, pipeline=flag(data, "pipeline", what, True),
                             layers=text(data, "layers", what, required=False, choices=LAYER_COUNTS, default="any"))


def check_offload_layers(framework, layers) -> int | None:
    """``--offload-layers``: a whole number of layers, 1 or more, on a framework that offloads (one line else)."""
    if layers is None:
        return None
    if isinstance(layers, bool) or not isinstance(layers, (int, float)) or not float(layers).is_integer() \
            or int(layers) < 1:
        raise ParplanError(f"--offload-layers must be a whole number of layers, 1 or more, not {layers}")
    if framework.activation_offload is None:
        raise ParplanError(f"framework '{framework.name}' keeps every activation on the device (no "
                           f"activation_offload in its profile): drop --offload-layers, or pick a framework whose "
                           f"profile has one")
    return int(layers)
