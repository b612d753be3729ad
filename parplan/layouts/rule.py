"""A layout rule: a mask of the candidates that break it and the sentence that explains it for one.

:mod:`parplan.layouts.rules` holds the rules of the mesh and the knobs, :mod:`parplan.layouts.software_rules`
those of what a framework's code can run; both are made of these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Rule:
    """A layout rule: ``broken(model, a)`` is the mask of candidates that break it; ``say(model, a)``
    explains it for one candidate (``a`` holds the candidate's fields as numbers); ``reads`` names the
    fields it needs, so the search can apply the mesh-shape rules before it multiplies the shapes by
    the knobs."""

    name: str
    reads: tuple[str, ...]
    broken: Callable
    say: Callable


def is_moe(m) -> bool:
    return bool(getattr(m, "is_moe", False))
