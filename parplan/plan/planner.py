"""``parplan plan``: run the search and render the ranked plans (table, JSON or CSV), with trust checks."""
from __future__ import annotations

import json
import re

from .emit import emit
from ..errors import ParplanError
from ..step.train import estimate
from ..layouts.strategies import breakdown_keys
from ..views.records import estimate_dict
from .candidates import SearchSpace, default_global_batch
from .search import bottleneck, describe_row, fewest_devices, layout_of, rank, search, why
from .trust import rank_stability, sensitivity
from ..units import GIB

MAX_BATCH_CHOICES = 16


def parse_global_batch(text: str | None) -> list[int] | None:
    """``1536``, ``512,1024,2048`` or a range ``512..4096`` (powers of two times the start)."""
    if text is None:
        return None
    text = str(text).strip()
    try:
        if ".." in text:
            lo_s, hi_s = text.split("..", 1)
            lo, hi = int(lo_s), int(hi_s)
            if lo < 1 or hi < lo:
                raise ValueError
            values, v = [], lo
            while v <= hi:
                values.append(v)
                v *= 2
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ParplanError(f"--global-batch takes a number, a list like 512,1024 or a range like 512..4096; "
                           f"got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise ParplanError(f"--global-batch values must be positive whole numbers, got '{text}'")
    if len(values) > MAX_BATCH_CHOICES:
        raise ParplanError(f"--global-batch gives {len(values)} values; at most {MAX_BATCH_CHOICES}")
    return values


def _search_all(model, cluster, batches, space_kw):
    import pandas as pd

    frames, evaluated, spaces, last_error = [], 0, [], None
    for gb in batches:
        space = SearchSpace(global_batch=gb, **space_kw)
        try:
            df, n = search(model, cluster, space)
        except ParplanError as exc:
            last_error = exc
            continue
        frames.append(df)
        evaluated += n
        spaces.append(space)
    if not frames:
        raise last_error
    return pd.concat(frames, ignore_index=True), evaluated, spaces[0]


def binding_constraint(df, ranked, headroom, hbm_bytes) -> str:
    """What keeps the plan from being faster: the fastest layout overall, if it does not fit, says memory."""
    fastest = df.sort_values("tokens_per_s", ascending=False).iloc[0]
    best = ranked.iloc[0]
    if not bool(fastest["fits"]) and fastest["tokens_per_s"] > best["tokens_per_s"] * 1.001:
        gain = fastest["tokens_per_s"] / best["tokens_per_s"] - 1
        return (f"memory: the fastest layout ({describe_row(fastest)}) would be {gain:.1%} faster but needs "
                f"{fastest['memory_bytes'] / GIB:.1f} GiB of the {hbm_bytes * (1 - headroom) / GIB:.1f} GiB usable")
    return f"none of the layout rules: the fastest layout fits; its time goes to {bottleneck(best)}"


def plan_report(model, cluster, *, global_batch=None, dtype="bf16", objective="throughput", top=10,
                headroom=0.10, allow_cross_node_tp=False, flash_attention=True, fixed=None, fmt="table",
                emit_target=None, explain=False, fused_kernels=True) -> str:
    seq = model.seq_len
    batches = parse_global_batch(global_batch) if not isinstance(global_batch, int) else [global_batch]
    gb_note = "given" if batches and len(batches) == 1 else "searched"
    if batches is None:
        batches = [default_global_batch(model, cluster, seq)]
        gb_note = f"default: about {batches[0] * seq / 1e6:.1f}M tokens, a multiple of the device count"
    cluster.hardware.peak(dtype)
    space_kw = dict(seq_len=seq, dtype=dtype, allow_cross_node_tp=allow_cross_node_tp, fixed=fixed or {},
                    flash_attention=flash_attention, fused_kernels=fused_kernels, headroom=headroom)
    df, evaluated, space = _search_all(model, cluster, batches, space_kw)
    ranked = rank(df, objective)
    if ranked.empty:
        need = fewest_devices(model, cluster, SearchSpace(global_batch=batches[0], **space_kw))
        more = f"; the fewest {cluster.hardware.name} devices on which some layout fits: {need}" if need else ""
        raise ParplanError(f"{model.name} does not fit on {cluster.name} at any layout "
                           f"(global batch {', '.join(map(str, batches))}, {100 * headroom:.0f}% HBM headroom){more}")
    best = ranked.head(top)
    layouts = [layout_of(row, space) for _, row in best.iterrows()]
    stability = rank_stability(model, cluster, layouts, headroom)
    plans = []
    for (_, row), lay, trust in zip(best.iterrows(), layouts, stability):
        d = estimate_dict(estimate(model, cluster, lay, headroom=headroom))
        d.update({k: d["layout"][k] for k in ("tp", "pp", "dp", "cp", "zero", "micro_batch", "sp", "vpp",
                                              "recompute", "order", "global_batch")})
        d["bottleneck"] = bottleneck(row)
        d["rank_holds"] = trust["holds"]
        d["rank_stability"] = trust
        plans.append(d)
    extra = {}
    if explain:
        extra["binding_constraint"] = binding_constraint(df, ranked, headroom, cluster.hardware.hbm_bytes)

        def best_time(cl):
            d2, _, _ = _search_all(model, cl, batches, space_kw)
            r2 = rank(d2, objective)
            return float(r2.iloc[0]["step_time_s"]) if not r2.empty else float("nan")
        extra["sensitivity"] = sensitivity(best_time, cluster, float(ranked.iloc[0]["step_time_s"]))
    if emit_target:
        text = emit(emit_target, layouts[0], model)
        if fmt == "json":
            plans[0]["emit"] = {emit_target: text}
        else:
            return text
    if fmt == "json":
        if extra:
            plans[0].update(extra)
        return json.dumps(plans, indent=2)
    if fmt == "csv":
        cols = ["tp", "pp", "dp", "cp", "zero", "micro_batch", "sp", "vpp", "recompute", "global_batch",
                "step_time_s", "tokens_per_s", "mfu", "tflops_per_device", "fits", "bottleneck", "rank_holds"]
        lines = [",".join(cols + ["memory_total_bytes"])]
        for p in plans:
            lines.append(",".join([str(p[c]) for c in cols] + [str(p["memory_bytes"]["total"])]))
        return "\n".join(lines)
    return _table(model, cluster, ranked, best, plans, evaluated, batches, gb_note, objective, stability, extra)


def _table(model, cluster, ranked, best, plans, evaluated, batches, gb_note, objective, stability, extra) -> str:
    hbm = cluster.hardware.hbm_bytes
    seq = model.seq_len
    gb = ", ".join(map(str, batches))
    out = [f"{model.name} on {cluster.name}: {evaluated} candidates evaluated, {len(ranked)} fit; "
           f"global batch {gb} x {seq} tokens ({gb_note}); objective {objective}",
           "",
           f"{'#':>3}  {'layout':<58}{'placement':<11}{'batch':>6}{'step s':>9}{'tokens/s':>11}{'MFU':>7}"
           f"{'memory GiB':>16}  {'bottleneck':<10} best within 1% if +-15%"]
    for i, ((_, row), trust) in enumerate(zip(best.iterrows(), stability), 1):
        holds = "yes" if trust["holds"] else f"{trust['first_in']}/{trust['cases']} (worst #{trust['worst_rank']})"
        out.append(f"{i:>3}  {describe_row(row):<58}{re.sub('^tp,cp,', '', row['order']):<11}"
                   f"{int(row['global_batch']):>6}{row['step_time_s']:9.3f}{row['tokens_per_s']:11.4g}"
                   f"{100 * row['mfu']:6.1f}%{row['memory_bytes'] / GIB:8.1f} / {hbm / GIB:4.0f}  "
                   f"{bottleneck(row):<10} {holds}")
    if len(ranked) > 1:
        out += ["", why(ranked.iloc[0], ranked.iloc[1])]
    flips = stability[0].get("loses_first_under") if stability else None
    if flips:
        out.append(f"#1 stops being fastest (by >1%) of these plans if: {', '.join(flips)}")
    elif stability:
        out.append("#1 stays fastest of these plans with any one efficiency or bandwidth 15% off")
    b = plans[0]["breakdown_s"]
    out += ["", "best plan's step: " + ", ".join(f"{k} {b[k]:.3g} s" for k in breakdown_keys() if b[k] > 0)]
    if extra:
        out += ["", f"binding constraint: {extra['binding_constraint']}",
                "what +10% of one hardware parameter buys (best plan re-searched):"]
        for r in extra["sensitivity"]:
            out.append(f"  {r['parameter']:<20} {r['step_time_s']:9.3f} s/step  {100 * r['speedup']:+6.2f}%")
    return "\n".join(out)


__all__ = ["plan_report", "parse_global_batch", "binding_constraint"]
