"""The validation errors every prediction's interval is drawn from: each published run's signed error, grouped
by the framework that ran it.

``scripts/error_bands.py`` writes them to ``validation/error-bands.yaml`` from a ``parplan validate`` run over
the shipped files, and ``tests/validate/test_validation.py`` checks that file against the predictions of
today's model, so the intervals ``plan`` and ``estimate`` print never drift from what ``validate`` reports.
"""
from __future__ import annotations

from typing import Any

from ..plan.interval import BANDS_FILE
from .published import DEFAULT_FILES

DIGITS = 4  # errors are stored rounded to 0.01%


def framework_of(row: dict) -> str:
    """The framework profile a validation row was predicted with (its name, without where it came from)."""
    return str(row["framework"]).split(" (")[0]


def error_bands(results: dict[str, Any]) -> dict[str, Any]:
    """The data of ``validation/error-bands.yaml`` from :func:`validate_runs` results: per framework, each run's
    signed error (predicted / published - 1), in the order validate lists them."""
    frameworks: dict[str, dict[str, float]] = {}
    for row in results["rows"]:
        frameworks.setdefault(framework_of(row), {})[row["id"]] = round(float(row["error"]), DIGITS)
    return {"files": list(DEFAULT_FILES), "frameworks": dict(sorted(frameworks.items()))}


__all__ = ["BANDS_FILE", "DIGITS", "error_bands", "framework_of"]
