"""The text of ``parplan plan``: the ranked plans as a table, JSON or CSV."""
from __future__ import annotations

import json
import re

from ..layouts.strategies import breakdown_keys
from ..plan.interval import overlapping
from ..plan.planner import PlanResult
from ..plan.search import describe_row, why
from ..step.train import bottleneck
from ..units import GIB
from .records import estimate_dict, format_budget, mfu_above_ceiling, mfu_notes, plan_budget

CSV_COLUMNS = ["tp", "pp", "dp", "cp", "zero", "micro_batch", "sp", "vpp", "recompute", "recompute_layers",
               "global_batch", "step_time_s", "tokens_per_s", "mfu", "tflops_per_device", "fits", "bottleneck", "rank_holds"]


def plan_dicts(result: PlanResult) -> list[dict]:
    """One JSON object per top plan: its estimate's stable names, its knobs, bottleneck and rank checks."""
    plans = []
    intervals = result.intervals or [None] * len(result.estimates)
    overlaps = set(overlapping(result.intervals or []))
    for i, ((_, row), est, trust, interval) in enumerate(zip(result.top.iterrows(), result.estimates,
                                                             result.stability, intervals), 1):
        d = estimate_dict(est)
        if interval is not None:
            d["step_time_interval_s"] = [interval.low_s, interval.high_s]
            d["interval"] = interval.as_dict()
            d["interval_overlaps_first"] = i == 1 or i in overlaps
        d.update({k: d["layout"][k] for k in ("tp", "pp", "dp", "cp", "zero", "micro_batch", "sp", "vpp",
                                              "recompute", "recompute_layers", "order", "global_batch")})
        d["bottleneck"] = bottleneck(row)
        d["global_batch_note"] = result.batch_note
        d["rank_holds"] = trust["holds"]
        d["rank_stability"] = trust
        plans.append(d)
    return plans


def plan_report(result: PlanResult, fmt: str = "table", tokens: float | None = None,
                price: float | None = None) -> str:
    """``table``, ``json`` or ``csv``; with an emit target, the launch config (inside the JSON for ``json``);
    with ``tokens``, each plan's time (and, with a price, cost) to train on them."""
    plans = plan_dicts(result)
    budgets = [plan_budget(est, tokens, price) for est in result.estimates]
    for p, b in zip(plans, budgets):
        if b is not None:
            p["budget"] = b.as_dict()
    extra = {}
    if result.binding_constraint is not None:
        extra = {"binding_constraint": result.binding_constraint, "sensitivity": result.sensitivity}
    if result.emitted is not None:
        if fmt != "json":
            return result.emitted
        plans[0]["emit"] = {result.emit_target: result.emitted}
    if fmt == "json":
        if extra:
            plans[0].update(extra)
        return json.dumps(plans, indent=2)
    if fmt == "csv":
        lines = [",".join(CSV_COLUMNS + ["memory_total_bytes", "step_time_low_s", "step_time_high_s"])]
        for p in plans:
            low, high = p.get("step_time_interval_s", ("", ""))
            lines.append(",".join([str(p[c]) for c in CSV_COLUMNS] + [str(p["memory_bytes"]["total"]), str(low),
                                                                       str(high)]))
        return "\n".join(lines)
    return _table(result, plans, extra) + (f"\n#1 {format_budget(budgets[0])}" if budgets[0] else "")


def _table(result: PlanResult, plans: list[dict], extra: dict) -> str:
    model, cluster, ranked, best = result.model, result.cluster, result.ranked, result.top
    batches, stability = result.batches, result.stability
    hbm = cluster.hardware.hbm_bytes
    seq = model.seq_len
    torus = cluster.is_torus and "ici" in best
    width = max([11] + [len(_placement(r, torus)) + 2 for _, r in best.iterrows()])
    gb = ", ".join(map(str, batches))
    lw = max([56] + [len(describe_row(row)) for _, row in best.iterrows()]) + 2
    out = [f"{model.name} on {cluster.label}: {result.evaluated} candidates evaluated, {len(ranked)} fit; "
           f"global batch {gb} x {seq} tokens ({result.batch_note}); objective {result.objective}"
           + (f"; software {result.estimates[0].software.describe()}" if result.estimates
              and result.estimates[0].software is not None else ""),
           *([f"sequence length: {model.seq_note}"] if model.seq_note else []),
           "",
           f"{'#':>3}  {'layout':<{lw}}{'ici' if torus else 'placement':<{width}}{'batch':>6}{'step s':>9}"
           f"{'interval s':>14}{'tokens/s':>11}{'MFU':>7}{'memory GiB':>16}  {'bottleneck':<10} "
           f"best within 1% if +-15%"]
    for i, ((_, row), trust, p) in enumerate(zip(best.iterrows(), stability, plans), 1):
        holds = "yes" if trust["holds"] else f"{trust['first_in']}/{trust['cases']} (worst #{trust['worst_rank']})"
        span = "{:.3g}-{:.3g}".format(*p["step_time_interval_s"]) if "step_time_interval_s" in p else "-"
        out.append(f"{i:>3}  {describe_row(row):<{lw}}{_placement(row, torus):<{width}}"
                   f"{int(row['global_batch']):>6}{row['step_time_s']:9.3f}{span:>14}{row['tokens_per_s']:11.4g}"
                   f"{100 * row['mfu']:6.1f}%{row['memory_bytes'] / GIB:8.1f} / {hbm / GIB:4.0f}  "
                   f"{bottleneck(row):<10} {holds}")
    out += ["", "ici: each mesh axis over the slice's torus axes (x, y, z: chips along each) and the slices (dcn), "
                "as --ici takes it" if torus else
            "placement: the order of the outer mesh axes on the devices, innermost first (dp,pp: each "
            "pipeline stage's data-parallel replicas sit side by side, the stages outermost; pp,dp: the reverse)"]
    out += _same_layout_other_placement(best)
    if len(ranked) > 1:
        out += [why(ranked.iloc[0], ranked.iloc[1])]
    flips = stability[0].get("loses_first_under") if stability else None
    if flips:
        out.append(f"#1 stops being fastest (by >1%) of these plans if: {', '.join(flips)}")
    elif stability:
        out.append("#1 stays fastest of these plans with any one efficiency or bandwidth 15% off")
    out.append(f"MFU counts model FLOPs with full attention (PaLM App. B); #1 executes "
               f"{100 * plans[0]['mfu_causal']:.1f}% of peak counting only causal attention")
    out += _mfu_flags(result.estimates)
    out += _interval_lines(result.intervals)
    b = plans[0]["breakdown_s"]
    out += ["", "best plan's step: " + ", ".join(f"{k} {b[k]:.3g} s" for k in breakdown_keys() if b[k] > 0)]
    if extra:
        out += ["", f"binding constraint: {extra['binding_constraint']}",
                "what +10% of one hardware parameter buys (best plan re-searched):"]
        for r in extra["sensitivity"]:
            out.append(f"  {r['parameter']:<20} {r['step_time_s']:9.3f} s/step  {100 * r['speedup']:+6.2f}%")
    return "\n".join(out)


def _placement(row, torus: bool) -> str:
    """Where a plan's axes lie: its torus map on a TPU, else its outer mesh order."""
    return str(row["ici"]) if torus else re.sub("^tp,cp,", "", row["order"])


def _numbers(plans: list[int]) -> str:
    """``#2-#4, #7`` for plans 2, 3, 4 and 7."""
    runs: list[list[int]] = []
    for n in plans:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"#{r[0]}" if len(r) == 1 else f"#{r[0]}-#{r[-1]}" for r in runs)


def _interval_lines(intervals) -> list[str]:
    """Where the intervals come from, and which plans the model's error cannot tell from #1."""
    if not intervals:
        return []
    lines = [intervals[0].describe()]
    if len(intervals) > 1:
        near = overlapping(intervals)
        lines.append(f"#1's interval overlaps {_numbers(near)}'s: the model's validated error does not order them "
                     f"(the last column says whether #1 stays first when a profile value is 15% off)" if near else
                     "#1's interval overlaps no other plan's: #1 is faster beyond the model's validated error")
    return lines


def _mfu_flags(estimates) -> list[str]:
    """The MFU notes of the shown plans, one per kind, about the first plan of that kind (naming the others)."""
    out = []
    for kind in ("causal", "full"):
        which = [i for i, est in enumerate(estimates, 1) if mfu_above_ceiling(est) == kind]
        if which:
            more = f" (and {', '.join(f'#{i}' for i in which[1:])})" if len(which) > 1 else ""
            out += mfu_notes(estimates[which[0] - 1], f"#{which[0]}'s{more} ")
    return out


def _same_layout_other_placement(rows) -> list[str]:
    """Name the shown plans that are one layout in two placements (they differ in nothing else)."""
    first: dict[str, int] = {}
    lines = []
    for i, (_, row) in enumerate(rows.iterrows(), 1):
        key = f"{describe_row(row)} gb={row['global_batch']}"
        if key in first:
            lines.append(f"#{i} is #{first[key]} in the other placement"
                         + (" (torus map)" if "ici" in row and isinstance(row["ici"], str) else ""))
        else:
            first[key] = i
    return lines
