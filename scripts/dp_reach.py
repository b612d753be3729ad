"""Validation error against how far data parallelism reaches, within each publication group.

Reads the JSON ``parplan validate --format json`` writes and the validation files it predicted, and prints
each record's devices, mesh, predicted and published step time, what the prediction misses in seconds and
its error, sorted by group and data-parallel size, so a trend with the DP degree inside one layout (the
README's "Data parallelism across a fabric's spine") can be checked as the model changes.

usage: parplan validate --format json validation/*-runs.yaml > /tmp/v.json
       python scripts/dp_reach.py /tmp/v.json [--group TEXT] [--min-runs 3]
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import click
import yaml

ROOT = Path(__file__).resolve().parents[1]


def validation_records(files) -> dict[str, dict]:
    """The records of these validation files (names under validation/), by id."""
    out = {}
    for name in files:
        data = yaml.safe_load((ROOT / "validation" / name).read_text())
        for rec in data["runs"] if isinstance(data, dict) else data:
            out[rec["id"]] = rec
    return out


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--group", default="", help="Only groups whose name contains this text.")
@click.option("--min-runs", default=3, show_default=True, help="Only groups with at least this many records.")
def main(path: str, group: str, min_runs: int) -> None:
    result = json.loads(Path(path).read_text())
    recs = validation_records(sorted({row["file"] for row in result["rows"]}))
    groups = defaultdict(list)
    for row in result["rows"]:
        if row.get("error") is not None and group.lower() in row["group"].lower():
            groups[row["group"]].append(row)
    for name, rows in sorted(groups.items()):
        if len(rows) < min_runs:
            continue
        print(f"\n{name}")
        print(f"  {'record':44} {'devices':>7} {'tp':>3} {'pp':>3} {'cp':>3} {'dp':>4}  {'predicted s':>11} "
              f"{'published s':>11} {'miss s':>7} {'error':>7}")
        lay = lambda r: recs[r["id"]]["layout"]  # noqa: E731
        for r in sorted(rows, key=lambda r: (lay(r).get("dp") or 0, recs[r["id"]]["devices"])):
            lo = lay(r)
            print(f"  {r['id'][:44]:44} {recs[r['id']]['devices']:7d} {lo.get('tp') or 1:3d} {lo.get('pp') or 1:3d} "
                  f"{lo.get('cp') or 1:3d} {lo.get('dp') or 0:4d}  {r['predicted_s']:11.2f} {r['published_s']:11.2f} "
                  f"{r['published_s'] - r['predicted_s']:7.2f} {100 * r['error']:+6.1f}%")


if __name__ == "__main__":
    sys.exit(main())
