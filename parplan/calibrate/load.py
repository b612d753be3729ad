"""Reading measurement rows back: bench result directories, their CSV or JSON-lines files, and
nccl-tests logs; a torn last line (a run that died mid-write) is dropped, any other bad line is an error."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from ..errors import ParplanError
from .nccl_tests import parse_nccl_tests_file
from .rows import CSV_NAME, JSONL_NAME, Row, row_from_mapping


def _read_csv(path: Path) -> list[Row]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "kind" not in header or "time_s" not in header:
        raise ParplanError(f"{path}: not a parplan bench CSV (no 'kind' and 'time_s' columns)")
    rows: list[Row] = []
    lines = list(reader)
    for i, rec in enumerate(lines):
        if None in rec or any(rec.get(c) is None for c in header):
            if i == len(lines) - 1:  # a torn last line from a run that died mid-write
                break
            raise ParplanError(f"{path}: line {i + 2} has the wrong number of fields")
        rows.append(row_from_mapping(rec, f"{path}: line {i + 2}"))
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows: list[Row] = []
    lines = _read_text(path).splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ParplanError(f"{path}: line {i + 1} is not JSON") from None
        if not isinstance(rec, dict):
            raise ParplanError(f"{path}: line {i + 1} is not a JSON object")
        rows.append(row_from_mapping(rec, f"{path}: line {i + 1}"))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParplanError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ParplanError(f"{path}: not a UTF-8 text file") from None


def load_results(paths: Sequence[str | Path]) -> list[Row]:
    """Rows from bench result directories, ``results.csv``/``results.jsonl`` files, or nccl-tests logs."""
    if not paths:
        raise ParplanError("give at least one results directory or file")
    rows: list[Row] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if path.is_dir():
            if (path / CSV_NAME).is_file():
                found = _read_csv(path / CSV_NAME)
            elif (path / JSONL_NAME).is_file():
                found = _read_jsonl(path / JSONL_NAME)
            else:
                raise ParplanError(f"{path}: no {CSV_NAME} or {JSONL_NAME} in this directory")
        elif not path.is_file():
            raise ParplanError(f"results not found: {path}")
        elif path.suffix.lower() == ".csv":
            found = _read_csv(path)
        elif path.suffix.lower() in (".jsonl", ".json"):
            found = _read_jsonl(path)
        else:
            found = parse_nccl_tests_file(path)
        rows.extend(found)
    if not rows:
        raise ParplanError(f"no result rows in {', '.join(str(p) for p in paths)}")
    return rows
