"""Parallelism strategies as plug-ins, and the registry of mesh axes they make.

Each mesh axis is one :class:`~parplan.layouts.strategies.base.Strategy`; the step asks
each how it shrinks the per-device shapes, which collectives it issues and how it divides
the model states (``base`` states the contract). The registry below is the one list of
axes: the Layout's valid axis names, the ``--mesh`` parser, the step breakdown's keys, the
search's result columns and the bottleneck names all come from it. A new axis is one
``register(MyStrategy)`` call (its class in its own module), not an edit here or elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import ParplanError
from .base import Busiest, Collective, Context, StageMemory, Stages, StageTimes, Strategy
from .context import ContextParallel
from .data import DataParallel
from .expert import ExpertParallel, ExpertTensorParallel
from .pipeline import PipelineParallel
from .tensor import TENSOR_PARALLEL, TensorParallel1D

BUILTIN = ("tp", "cp", "pp", "dp")  # the axes every Layout has as fields


@dataclass(frozen=True)
class Axis:
    """A registered mesh axis: its strategy (built per layout) and what the step needs to know of it."""

    name: str
    strategy: Callable[[object], Strategy]
    folded_over: tuple[str, ...]
    labels: dict
    finish_order: int


_AXES: dict[str, Axis] = {}


def register(cls: type[Strategy], build: Callable[[object], Strategy] | None = None) -> Axis:
    """Register a strategy class as the mesh axis ``cls.axis``; ``build(layout)`` makes its instance."""
    name = cls.axis
    if not name or not name.isidentifier() or name != name.lower():
        raise ParplanError(f"a mesh axis needs a lower-case identifier as its name, got {name!r}")
    if name in _AXES:
        raise ParplanError(f"mesh axis '{name}' is already registered")
    for other in cls.folded_over:
        if other not in _AXES or _AXES[other].folded_over:
            raise ParplanError(f"axis '{name}' folds over '{other}', which is not a registered unfolded axis")
    axis = Axis(name, build or (lambda layout: cls()), tuple(cls.folded_over), dict(cls.breakdown_labels()),
                cls.finish_order)
    _AXES[name] = axis
    return axis


def unregister(name: str) -> None:
    """Remove a plug-in axis (the built-in ones stay)."""
    if name in BUILTIN:
        raise ParplanError(f"the built-in axis '{name}' cannot be removed")
    _AXES.pop(name, None)


def axis_names() -> tuple[str, ...]:
    """Every registered axis, in registration order (the built-in ones first)."""
    return tuple(_AXES)


def axis(name: str) -> Axis:
    try:
        return _AXES[name]
    except KeyError:
        raise ParplanError(f"unknown mesh axis '{name}'; axes are {', '.join(_AXES)}") from None


def is_folded(name: str) -> bool:
    return bool(axis(name).folded_over)


def strategies_for(layout) -> list[Strategy]:
    """The plug-ins for a layout: its mesh axes innermost first, then the folded ones."""
    folded = [a for a, _ in getattr(layout, "axes", ()) if is_folded(a)]
    return [axis(a).strategy(layout) for a in (*layout.order, *folded)]


def breakdown_labels() -> dict[str, str]:
    """Every axis's step-breakdown keys (``tp_comm``, ``bubble``, ...) with its bottleneck name."""
    out: dict[str, str] = {}
    for a in _AXES.values():
        out.update(a.labels)
    return out


def breakdown_keys() -> tuple[str, ...]:
    """The keys of ``Estimate.breakdown_s``, in order: compute, recompute, each axis's, the exposed copies of
    offloaded activations, optimizer."""
    return ("compute", "recompute", *breakdown_labels(), "offload", "optimizer")


def stages_of(strategies: list[Strategy]) -> Stages:
    """The strategy that splits the layers into pipeline stages, else a single stage."""
    return next((s for s in strategies if isinstance(s, Stages) and s.splits_stages), Stages())


register(TensorParallel1D, lambda layout: TENSOR_PARALLEL[layout.tp_mode]())
register(ContextParallel)
register(PipelineParallel)
register(DataParallel)
register(ExpertParallel)
register(ExpertTensorParallel)

__all__ = ["Axis", "BUILTIN", "Busiest", "Collective", "Context", "StageMemory", "Stages", "StageTimes",
           "Strategy", "axis", "axis_names", "breakdown_keys", "breakdown_labels", "is_folded", "register",
           "stages_of", "strategies_for", "unregister"]
