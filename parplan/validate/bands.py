"""The validation errors every prediction's interval is drawn from: each published run's signed error, grouped
by the framework that ran it and the kind of model (dense or mixture-of-experts).

``scripts/error_bands.py`` writes them to ``validation/error-bands.yaml`` from a ``parplan validate`` run over
the shipped files, and ``tests/validate/test_validation.py`` checks that file against the predictions of
today's model, so the intervals ``plan`` and ``estimate`` print never drift from what ``validate`` reports.
"""
from __future__ import annotations

from typing import Any

from .published import DEFAULT_FILES

DIGITS = 4  # errors are stored rounded to 0.01%


def framework_of(row: dict) -> str:
    """The framework profile a validation row was predicted with (its name, without where it came from)."""
    return str(row["framework"]).split(" (")[0]


def kind_of(record: dict) -> str:
    """``moe`` for a run of a mixture-of-experts model (its routed experts: a source of error of its own), else
    ``dense``."""
    return "moe" if (record.get("model") or {}).get("experts") else "dense"


def error_bands(results: dict[str, Any], records: list[dict]) -> dict[str, Any]:
    """The data of ``validation/error-bands.yaml`` from :func:`validate_runs` results over ``records``: per
    framework and kind of model (dense, MoE), each run's signed error (predicted / published - 1)."""
    kinds = {str(r.get("id")): kind_of(r) for r in records}
    frameworks: dict[str, dict[str, dict[str, float]]] = {}
    for row in results["rows"]:
        if row.get("left_out"):
            continue  # a regression its publisher tracks: not an error of the model's
        group = frameworks.setdefault(framework_of(row), {}).setdefault(kinds.get(row["id"], "dense"), {})
        group[row["id"]] = round(float(row["error"]), DIGITS)
    return {"files": list(DEFAULT_FILES),
            "frameworks": {f: dict(sorted(k.items())) for f, k in sorted(frameworks.items())}}


__all__ = ["DIGITS", "error_bands", "framework_of", "kind_of"]
