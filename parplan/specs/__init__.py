"""Spec files shipped with parplan: hardware profiles, model specs, validation runs.

In the repository they live in the top-level folders ``hardware/``, ``models/``
and ``validation/``; the wheel maps them to ``parplan.specs.{hardware,models,validation}``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def spec_dir(kind: str) -> Path:
    """The folder holding the shipped specs of one kind ('hardware', 'models', 'validation')."""
    try:
        found = Path(str(resources.files(f"parplan.specs.{kind}")))
        if found.is_dir():
            return found
    except ModuleNotFoundError:
        pass
    return _REPO_ROOT / kind
