"""The tables of a multi-GPU pass (``scripts/multi_gpu_pass8.sh``), against issue 19's targets, as Markdown.

    python scripts/multi_gpu_tables.py PASS_DIR [--hw LABEL=SPEC ...] [-o PASS_DIR/tables.md]

Reads what the pass wrote under PASS_DIR: the evaluation run of collectives (``collectives-eval``,
predicted here again with each ``--hw``, by default the profiles the pass predicted with, listed in
``profiles.txt``), the layers (``layers-*/multi_gpu_layers.csv``), the overlap (``overlap/overlap.csv``),
ring attention (``context/context.csv``) and whole steps (``step``, predicted here with each profile
as ``parplan compare`` does). Needs no GPU: run it again on the pass's files with any profile.

Targets (issue 19): after calibration on a separate run, collectives within 10% from 1 MiB to 4 GiB
at every group size (and the small-message error stated); layers and whole steps within 10%; the
overlap model's exposed time within 15% of measured.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.getcwd())
from parplan.calibrate.compare import STEP_FRAMEWORK, compare  # noqa: E402
from parplan.calibrate.load import load_results  # noqa: E402

MIB = 2**20
SMALL_MAX = 64 * 1024  # small messages: 8 B - 64 KiB
TARGET_MIN = MIB       # the target band: 1 MiB - 4 GiB


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.0f}%"


def _abs(x: float | None) -> str:
    return "-" if x is None else f"{abs(x):.0f}%"


def _ms(x: float) -> str:
    return f"{x * 1e3:.3f}" if x < 0.1 else f"{x * 1e3:.1f}"


def _median(xs):
    return statistics.median(xs) if xs else None


def _band(size: int) -> str:
    if size <= SMALL_MAX:
        return "small"
    return "target" if size >= TARGET_MIN else "middle"


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def profiles_of(pass_dir: Path, given: list[str]) -> list[tuple[str, str]]:
    """(label, spec) of each profile: ``--hw LABEL=SPEC``, else ``profiles.txt`` (one ``LABEL SPEC`` a line)."""
    if given:
        return [tuple(g.split("=", 1)) if "=" in g else (os.path.basename(g), g) for g in given]
    listed = pass_dir / "profiles.txt"
    if not listed.is_file():
        raise SystemExit(f"{listed} not found: pass --hw LABEL=SPEC")
    out = []
    for line in listed.read_text().splitlines():
        if line.strip():
            label, spec = line.split(None, 1)
            out.append((label, str(pass_dir / spec) if (pass_dir / spec).is_file() else spec))
    return out


# --------------------------------------------------------------------------- collectives


def collective_tables(pass_dir: Path, profiles) -> list[str]:
    run = pass_dir / "collectives-eval"
    if not (run / "results.csv").is_file():
        return ["## Collectives", "", "not measured (no collectives-eval/results.csv)", ""]
    rows = [r for r in load_results([run]) if r.kind == "collective" and r.group_size > 1]
    errors = {}  # (label, op, group) -> band -> [error %]
    for label, spec in profiles:
        for row, c in zip(rows, compare(rows, spec)):
            if c.error_pct is not None and row.correct:
                errors.setdefault((label, row.op, row.group), defaultdict(list))[_band(row.size_bytes)].append(
                    c.error_pct)
    groups = sorted({(r.op, r.group, r.group_size) for r in rows}, key=lambda k: (k[0], k[2], k[1]))
    out = ["## Collectives: predicted against measured (evaluation run)", "",
           f"{len(rows)} rows of `collectives-eval` ({rows[0].world_size} ranks, {rows[0].device_name}); "
           f"error of the predicted time, median |error| (median signed), worst |error| in brackets. "
           f"Profiles: " + ", ".join(f"`{label}` ({spec})" for label, spec in profiles) + ".", ""]
    for band, title in (("target", "1 MiB - 4 GiB (target: every size within 10%)"),
                        ("middle", "128 KiB - 512 KiB"), ("small", "8 B - 64 KiB (small messages)")):
        out += [f"### {title}", ""]
        lines = []
        for op, group, size in groups:
            cells = []
            for label, _ in profiles:
                e = errors.get((label, op, group), {}).get(band, [])
                cells.append("-" if not e else
                             f"{_abs(_median([abs(x) for x in e]))} ({_pct(_median(e))}) [{_abs(max(e, key=abs))}]")
            if any(c != "-" for c in cells):
                lines.append(f"| {op} | {group} | {size} | " + " | ".join(cells) + " |")
        if lines:
            out += ["| collective | group | ranks | " + " | ".join(label for label, _ in profiles) + " |",
                    "|---|---|---|" + "---|" * len(profiles), *lines, ""]
        else:
            out += ["no sizes measured in this band", ""]
    out += ["### Target check (1 MiB - 4 GiB, every size within 10%)", ""]
    for label, _ in profiles:
        keys = [(op, g) for op, g, _ in groups if errors.get((label, op, g), {}).get("target")]
        good = [k for k in keys if max(abs(x) for x in errors[(label, *k)]["target"]) <= 10.0]
        out.append(f"- `{label}`: {len(good)} of {len(keys)} (collective, group) pairs")
    out += ["", "### Groups at once against one group alone (measured, 1 MiB - 4 GiB)", "",
            "Median over sizes of the time with every group of the partition communicating over the time "
            "with its first group alone; parplan predicts 1.00 inside a node.", "",
            "| collective | group | at once / alone |", "|---|---|---|"]
    times = defaultdict(dict)
    for r in rows:
        if r.size_bytes >= TARGET_MIN and r.correct:
            times[(r.op, r.group)][r.size_bytes] = r.time_s
    for op, group, _ in groups:
        if group.endswith("-alone") or (op, f"{group}-alone") not in times:
            continue
        alone, both = times[(op, f"{group}-alone")], times[(op, group)]
        ratios = [both[s] / alone[s] for s in both if s in alone and alone[s] > 0]
        if ratios:
            out.append(f"| {op} | {group} | {_median(ratios):.2f} |")
    return out + [""]


# --------------------------------------------------------------------------- layers, overlap, context, steps


def _label(profile: str, profiles) -> str:
    """The label of a profile the measuring scripts wrote by its file's base name."""
    return next((label for label, spec in profiles if os.path.basename(spec) == profile), profile)


def layer_tables(pass_dir: Path, profiles) -> list[str]:
    files = sorted(pass_dir.glob("layers-*/multi_gpu_layers.csv"))
    if not files:
        return ["## Layers", "", "not measured", ""]
    rows = [dict(r, profile=_label(r["profile"], profiles)) for f in files for r in _read_csv(f)]
    labels = list(dict.fromkeys(r["profile"] for r in rows))
    out = ["## Layers: sharded against one device, predicted", "",
           "Measured forward / backward per layer (ms, median), whether every rank matched the one-device "
           "layer, and the error of the predicted step (forward + backward) per profile.", "",
           "| layer | layout | fwd ms | bwd ms | matches one device | " + " | ".join(labels) + " |",
           "|---|---|---|---|---|" + "---|" * len(labels)]
    by = defaultdict(dict)
    for r in rows:
        by[(f"{r['model']} mb{r['micro_batch']} s{r['seq']}", r["layout"])][r["profile"]] = r
    errs = defaultdict(list)
    for (case, layout), per in by.items():
        first = next(iter(per.values()))
        mf, mb = float(first["measured_fwd_s"]), float(first["measured_bwd_s"])
        cells = []
        for label in labels:
            r = per.get(label)
            if r is None or r["predicted_fwd_s"] in ("", "nan"):
                cells.append("-")
                continue
            e = 100 * ((float(r["predicted_fwd_s"]) + float(r["predicted_bwd_s"])) / (mf + mb) - 1)
            errs[label].append(e)
            cells.append(_pct(e))
        out.append(f"| {case} | {layout} | {_ms(mf)} | {_ms(mb)} | {first['correct']} | " + " | ".join(cells) + " |")
    out += ["", "Target check (every layer step within 10%): " + "; ".join(
        f"`{k}` {sum(abs(e) <= 10 for e in v)} of {len(v)}, median |error| {_median([abs(e) for e in v]):.0f}%"
        for k, v in errs.items()), ""]
    return out


def overlap_tables(pass_dir: Path, profiles) -> list[str]:
    path = pass_dir / "overlap" / "overlap.csv"
    if not path.is_file():
        return ["## Overlap", "", "not measured", ""]
    rows = [dict(r, profile=_label(r["profile"], profiles)) for r in _read_csv(path)]
    out = ["## Overlap: FSDP's collectives beside a layer's compute", "",
           "W compute alone, L collectives alone, T both; exposed = T - W; the compute's stretch W'/W - 1. "
           "`model` is parplan's exposed time max(L - W, L s/(1+s)) from the measured W and L with the "
           "profile's slowdown s; `predicted` from its own W and L too.", "",
           "| profile | phase | tokens | W ms | L ms | T ms | exposed ms | hidden ms | stretch | implied s | "
           "s | model exposed (error) | predicted exposed (error) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    errs = defaultdict(list)
    for r in rows:
        f = {k: float(r[k]) for k in r if k.startswith(("measured_", "predicted_", "model_exposed"))}
        meas = f["measured_exposed_s"]
        e_model = 100 * (f["model_exposed_on_measured_s"] / meas - 1) if meas > 0 else None
        e_pred = 100 * (f["predicted_exposed_s"] / meas - 1) if meas > 0 else None
        if e_model is not None:
            errs[r["profile"]].append(e_model)
        out.append(f"| {r['profile']} | {r['phase']} | {r['tokens']} | {_ms(f['measured_compute_s'])} | "
                   f"{_ms(f['measured_comm_s'])} | {_ms(f['measured_both_s'])} | {_ms(meas)} | "
                   f"{_ms(f['measured_hidden_s'])} | {100 * f['measured_compute_stretch']:+.0f}% | "
                   f"{f['measured_implied_slowdown']:.2f} | {f['predicted_slowdown']:.2f} | "
                   f"{_ms(f['model_exposed_on_measured_s'])} ({_pct(e_model)}) | "
                   f"{_ms(f['predicted_exposed_s'])} ({_pct(e_pred)}) |")
    out += ["", "Target check (the model's exposed time within 15% of measured, from measured W and L): " + "; ".join(
        f"`{k}` {sum(abs(e) <= 15 for e in v)} of {len(v)}" for k, v in errs.items()), ""]
    return out


def context_tables(pass_dir: Path, profiles) -> list[str]:
    path = pass_dir / "context" / "context.csv"
    if not path.is_file():
        return ["## Ring attention", "", "not measured", ""]
    rows = [dict(r, profile=_label(r["profile"], profiles)) for r in _read_csv(path)]
    out = ["## Ring context-parallel attention", "",
           "Per rank, ms; `one device` is the same kernel over the whole sequence; errors of the predicted "
           "forward / backward.", "",
           "| profile | seq | cp | fwd ms | bwd ms | one device fwd / bwd ms | matches one device | "
           "predicted fwd / bwd ms | error fwd / bwd |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = {k: float(r[k]) for k in r if k.endswith("_s")}
        ef = 100 * (f["predicted_fwd_s"] / f["measured_fwd_s"] - 1)
        eb = 100 * (f["predicted_bwd_s"] / f["measured_bwd_s"] - 1)
        out.append(f"| {r['profile']} | {r['seq']} | {r['cp']} | {_ms(f['measured_fwd_s'])} | "
                   f"{_ms(f['measured_bwd_s'])} | {_ms(f['one_device_fwd_s'])} / {_ms(f['one_device_bwd_s'])} | "
                   f"{r['correct']} | {_ms(f['predicted_fwd_s'])} / {_ms(f['predicted_bwd_s'])} | "
                   f"{_pct(ef)} / {_pct(eb)} |")
    return out + [""]


def step_tables(pass_dir: Path, profiles) -> list[str]:
    run = pass_dir / "step"
    if not (run / "results.csv").is_file():
        return ["## Whole steps", "", "not measured", ""]
    rows = [r for r in load_results([run]) if r.kind == "step"]
    out = ["## Whole sharded training steps (FSDP2 over every GPU)", "",
           f"Predicted as the `{STEP_FRAMEWORK}` framework profile runs them (`parplan compare`).", "",
           "| profile | model | mode | shape | measured s | predicted s | error | peak memory error |",
           "|---|---|---|---|---|---|---|---|"]
    for label, spec in profiles:
        for row, c in zip(rows, compare(rows, spec)):
            out.append(f"| {label} | {row.model} | {row.op} | {row.shape} | {row.time_s:.3f} | "
                       f"{'-' if c.predicted_s is None else f'{c.predicted_s:.3f}'} | {_pct(c.error_pct)} | "
                       f"{_pct(c.memory_error_pct)} |")
    return out + [""]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pass_dir")
    ap.add_argument("--hw", action="append", default=[], help="LABEL=SPEC: a profile or cluster file; repeatable")
    ap.add_argument("-o", "--output", default=None, help="Markdown file [PASS_DIR/tables.md]")
    args = ap.parse_args()
    pass_dir = Path(args.pass_dir)
    profiles = profiles_of(pass_dir, args.hw)
    parts = [f"# Multi-GPU pass: {pass_dir.name}", ""]
    env = pass_dir / "environment.txt"
    if env.is_file():
        parts += ["```", *env.read_text().strip().splitlines()[:12], "```", ""]
    for make in (collective_tables, layer_tables, overlap_tables, context_tables, step_tables):
        try:
            parts += make(pass_dir, profiles)
        except Exception as exc:  # one broken part must not cost the others
            parts += [f"(a table failed: {type(exc).__name__}: {exc})", ""]
    text = "\n".join(parts) + "\n"
    out = Path(args.output) if args.output else pass_dir / "tables.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
