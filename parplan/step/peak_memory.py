"""Where a step's memory peaks: what lives through the whole step, and what the gradients add to the peak
when the framework frees them between steps (measured phase by phase: scripts/gpu_memory_phases.py,
reports/memory/h100-2026-12-06)."""
from __future__ import annotations

import numpy as np

# What a step holds from its start to its end; everything else (activations, the loss's buffers, cast and
# gathered weight copies, dispatch buffers) lives from the forward into the backward.
STEP_STATES = ("weights", "optimizer", "fp8_weight_cache", "gradients")


def freed_gradients_at_peak(mem: dict, micro_batches, pp):
    """What gradients freed between steps (``zero_grad(set_to_none=True)``) add to the peak.

    With one micro-batch per step and no pipeline, no gradient exists at the forward's end or at the
    loss's backward, where the activations peak; the backward allocates them as it frees the activations
    (linearly in both, so the peak is at an end) and the optimizer step holds them without activations:
    the peak is the step's states plus max(activations and the like, gradients), and the gradients add
    max(gradients - the rest, 0). Accumulating micro-batches or a pipeline keeps them beside the
    activations. Measured: ``scripts/gpu_memory_phases.py`` (reports/memory/h100-2026-12-06)."""
    transient = sum((v for k, v in mem.items() if k not in STEP_STATES), 0.0)
    once = (np.asarray(micro_batches) == 1) & (np.asarray(pp) == 1)
    return np.where(once, np.maximum(mem["gradients"] - transient, 0.0), mem["gradients"])


def gradient_note(fw, micro_batches, layout, added_bytes) -> tuple[str, ...]:
    """The note a scalar estimate carries when the gradients are freed between its steps: where its peak is.
    ``added_bytes``: what the gradients add to the peak (:func:`freed_gradients_at_peak`)."""
    values = [np.ravel(x) for x in (micro_batches, layout.pp, added_bytes)]
    if fw.gradients != "freed" or any(v.size != 1 for v in values) or values[0][0] != 1 or values[1][0] != 1:
        return ()
    where = ("the loss's backward, before any gradient exists" if values[2][0] == 0.0 else
             "the optimizer step, where the gradients outweigh the activations and the like")
    return (f"memory: {fw.name} frees the gradients between steps, so with one micro-batch the peak is {where}; "
            "'gradients' is what they add beyond the activations",)
