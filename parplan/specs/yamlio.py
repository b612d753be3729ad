"""Safe YAML loading and strict field checks shared by every spec loader.

Only ``yaml.safe_load`` is ever used: a file with Python tags or other unsafe
constructs is refused with a one-line error, never executed.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..errors import ParplanError

MAX_SPEC_BYTES = 4 * 1024 * 1024


def read_yaml(path: Path) -> Any:
    """Parse one YAML file with ``safe_load``; every failure becomes a ParplanError."""
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise ParplanError(f"{path}: file is larger than {MAX_SPEC_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParplanError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ParplanError(f"{path}: not a UTF-8 text file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParplanError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ParplanError(f"{path}: YAML nested too deeply") from None


def require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ParplanError(f"{what}: expected a mapping of fields, got {type(data).__name__}")
    return data


def number(data: Mapping[str, Any], key: str, what: str, *, required: bool = True,
           positive: bool = True, integer: bool = False, default: Any = None,
           maximum: float | None = None) -> Any:
    """Read a numeric field, refusing strings, booleans, NaN, infinities and non-positive values."""
    if key not in data or data[key] is None:
        if required:
            raise ParplanError(f"{what}: missing field '{key}'")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (write floats as 1.0e+12: YAML 1.1 reads 1e12 as a string)" if isinstance(value, str) else ""
        raise ParplanError(f"{what}: field '{key}' must be a number, got {value!r}{hint}")
    if not math.isfinite(value):
        raise ParplanError(f"{what}: field '{key}' must be finite, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ParplanError(f"{what}: field '{key}' must be a whole number, got {value!r}")
        value = int(value)
    if positive and value <= 0:
        raise ParplanError(f"{what}: field '{key}' must be positive, got {value!r}")
    if maximum is not None and value > maximum:
        raise ParplanError(f"{what}: field '{key}' = {value!r} is absurdly large (limit {maximum:g})")
    return value


def text(data: Mapping[str, Any], key: str, what: str, *, required: bool = True,
         choices: Iterable[str] | None = None, default: str | None = None) -> str | None:
    if key not in data or data[key] is None:
        if required:
            raise ParplanError(f"{what}: missing field '{key}'")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise ParplanError(f"{what}: field '{key}' must be text, got {value!r}")
    if choices is not None:
        choices = list(choices)
        if value not in choices:
            raise ParplanError(f"{what}: field '{key}' must be one of {', '.join(choices)}; got {value!r}")
    return value


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest known name, or '' when nothing is close."""
    close = difflib.get_close_matches(name.lower(), sorted(set(known)), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(data: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    """Refuse a key no reader knows (a typo would otherwise be ignored and its default used)."""
    known = tuple(known)
    for key in data:
        if key not in known:
            hint = suggest(str(key), known) or f"; the keys are {', '.join(sorted(known))}"
            raise ParplanError(f"{what}: unknown key '{key}'{hint}")


def names(data: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    """A list of names (``aliases``); a single string counts as one."""
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ParplanError(f"{what}: field '{key}' must be a list of names, got {value!r}")
    return tuple(str(v) for v in value)


def flag(data: Mapping[str, Any], key: str, what: str, default: bool) -> bool:
    """A true/false field (absent or null: ``default``)."""
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParplanError(f"{what}: field '{key}' must be true or false, got {value!r}")
    return value


def choices(data: Mapping[str, Any], key: str, what: str, allowed: Iterable[str], default=()) -> tuple[str, ...]:
    """A list of names, each one of ``allowed`` (absent: ``default``)."""
    allowed = tuple(allowed)
    values = names(data, key, what) if key in data else tuple(default)
    for v in values:
        if v not in allowed:
            raise ParplanError(f"{what}: '{key}' takes {', '.join(allowed)}; got '{v}'{suggest(v, allowed)}")
    return values


def text_mapping(data: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    """A mapping of names to text (``sources``)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ParplanError(f"{what}: field '{key}' must be a mapping, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def read_records(path: Path, what: str) -> list[Mapping[str, Any]]:
    """A YAML file holding a non-empty list of mappings (validation runs, serving measurements)."""
    if not path.is_file():
        raise ParplanError(f"{what} file not found: {path}")
    data = read_yaml(path)
    if not isinstance(data, list) or not data:
        raise ParplanError(f"{path}: expected a non-empty list of {what} records")
    return [require_mapping(r, f"{path}: record {i}") for i, r in enumerate(data)]
