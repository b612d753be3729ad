"""Finding a model spec: a shipped name or alias, a YAML file, or a Hugging Face ``config.json``."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..errors import ParplanError
from .hf_config import model_from_hf_config
from .model import ModelSpec, model_from_dict
from .registry import shipped, shipped_names
from .yamlio import read_yaml, suggest


def model_names() -> list[str]:
    """Canonical names of the shipped models."""
    return shipped_names("models")


@lru_cache(maxsize=256)
def _load_model_path(path: Path) -> ModelSpec:
    if path.suffix == ".json":
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ParplanError(f"cannot read {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ParplanError(f"{path}: malformed JSON (line {exc.lineno}): {exc.msg}") from None
        return model_from_hf_config(cfg, str(path), str(path))
    return model_from_dict(read_yaml(path), str(path), str(path))


def load_model(name_or_path: str) -> ModelSpec:
    """A model by name or alias (``gpt3``), by YAML path, or from a local HF ``config.json``."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ParplanError("model name must be a non-empty string")
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml", ".json")) or path.is_file() or path.is_dir():
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ParplanError(f"model file not found: {name_or_path}")
        return _load_model_path(path.resolve())
    table = shipped("models")
    key = name_or_path.lower()
    if key not in table:
        raise ParplanError(f"unknown model '{name_or_path}'{suggest(key, table)}; see 'parplan list models'")
    return _load_model_path(table[key])
