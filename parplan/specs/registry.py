"""Where the shipped spec files live: hardware profiles, model specs, validation runs.

In the repository they are the top-level folders ``hardware/``, ``models/`` and
``validation/``; the wheel installs them as the data packages
``parplan/data/{hardware,models,validation}`` (named apart from the code modules of
``parplan.specs`` so a data folder can never shadow a module).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
_REPO_ROOT = _PACKAGE.parent


def spec_dir(kind: str) -> Path:
    """The folder holding the shipped specs of one kind ('hardware', 'models', 'validation')."""
    installed = _PACKAGE / "data" / kind
    if installed.is_dir() and any(installed.glob("*.yaml")):
        return installed
    return _REPO_ROOT / kind
