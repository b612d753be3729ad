"""Parallelism strategies as plug-ins: each mesh axis brings its own sharding, collectives and memory.

``strategies_for(layout)`` returns one object per axis; the estimator asks each
how it shrinks the per-device shapes (``local_dims``), which collectives it adds
(``collectives``) and how it divides the model states (``state_divisors``).
A new layout is a new class here, not a branch in the estimator.
"""
from __future__ import annotations

from .base import Collective, Context, Strategy
from .context import ContextParallel
from .data import DataParallel
from .pipeline import PipelineParallel
from .tensor import TENSOR_PARALLEL


def strategies_for(layout) -> list[Strategy]:
    """The plug-ins for a layout, innermost mesh axis first."""
    by_axis = {
        "tp": TENSOR_PARALLEL[layout.tp_mode](),
        "cp": ContextParallel(),
        "pp": PipelineParallel(),
        "dp": DataParallel(),
    }
    return [by_axis[a] for a in layout.order]


__all__ = ["Collective", "Context", "Strategy", "strategies_for"]
