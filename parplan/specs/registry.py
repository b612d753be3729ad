"""Where the shipped spec files live: hardware profiles, model specs, framework profiles, validation runs.

In the repository they are the top-level folders ``hardware/``, ``models/``,
``frameworks/`` and ``validation/``; the wheel installs them as the data packages
``parplan/data/{hardware,models,frameworks,validation}`` (named apart from the code modules of
``parplan.specs`` so a data folder can never shadow a module).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping

from .yamlio import names, read_yaml

_PACKAGE = Path(__file__).resolve().parents[1]
_REPO_ROOT = _PACKAGE.parent


def spec_dir(kind: str) -> Path:
    """The folder holding the shipped specs of one kind ('hardware', 'models', 'frameworks', 'validation')."""
    installed = _PACKAGE / "data" / kind
    if installed.is_dir() and any(installed.glob("*.yaml")):
        return installed
    return _REPO_ROOT / kind


@lru_cache(maxsize=None)
def shipped(kind: str) -> dict[str, Path]:
    """Every shipped spec of one kind, by its name and by each of its aliases."""
    table: dict[str, Path] = {}
    for path in sorted(spec_dir(kind).glob("*.yaml")):
        data = read_yaml(path)
        if isinstance(data, Mapping):
            table[str(data.get("name", path.stem))] = path
            for alias in names(data, "aliases", str(path)):
                table[alias] = path
    return table


def shipped_names(kind: str) -> list[str]:
    """The canonical names (file stems) of the shipped specs of one kind."""
    return sorted({p.stem for p in shipped(kind).values()})
