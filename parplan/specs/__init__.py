"""Spec files shipped with parplan: hardware profiles, model specs, validation runs.

In the repository they live in the top-level folders ``hardware/``, ``models/``
and ``validation/``; the wheel installs them as ``parplan/specs/{hardware,models,validation}``.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_REPO_ROOT = _HERE.parents[1]


def spec_dir(kind: str) -> Path:
    """The folder holding the shipped specs of one kind ('hardware', 'models', 'validation')."""
    installed = _HERE / kind
    if installed.is_dir() and any(installed.glob("*.yaml")):
        return installed
    return _REPO_ROOT / kind
