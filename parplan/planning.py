"""``parplan plan``: run the search and render the ranked plans (table, JSON or CSV)."""
from __future__ import annotations

import json

from .errors import ParplanError
from .estimate import BREAKDOWN_KEYS, estimate
from .results import estimate_dict
from .search import (SearchSpace, bottleneck, default_global_batch, describe_row, fewest_devices, layout_of, rank,
                     search, why)

GIB = 2 ** 30


def plan_report(model, cluster, *, global_batch=None, dtype="bf16", objective="throughput", top=10,
                headroom=0.10, allow_cross_node_tp=False, flash_attention=True, fixed=None, fmt="table") -> str:
    seq = model.seq_len
    gb_note = "given"
    if global_batch is None:
        global_batch = default_global_batch(model, cluster, seq)
        gb_note = f"default: about {global_batch * seq / 1e6:.1f}M tokens, a multiple of the device count"
    cluster.hardware.peak(dtype)
    space = SearchSpace(global_batch=global_batch, seq_len=seq, dtype=dtype, allow_cross_node_tp=allow_cross_node_tp,
                        fixed=fixed or {}, flash_attention=flash_attention, headroom=headroom)
    df, evaluated = search(model, cluster, space)
    ranked = rank(df, objective)
    if ranked.empty:
        need = fewest_devices(model, cluster, space)
        more = f"; the fewest {cluster.hardware.name} devices on which some layout fits: {need}" if need else ""
        raise ParplanError(f"{model.name} does not fit on {cluster.name} at any layout "
                           f"(global batch {global_batch}, {100 * headroom:.0f}% HBM headroom){more}")
    best = ranked.head(top)
    plans = []
    for _, row in best.iterrows():
        lay = layout_of(row, space)
        d = estimate_dict(estimate(model, cluster, lay, headroom=headroom))
        d.update({k: d["layout"][k] for k in ("tp", "pp", "dp", "cp", "zero", "micro_batch", "sp", "vpp",
                                              "recompute", "order")})
        d["bottleneck"] = bottleneck(row)
        plans.append(d)
    if fmt == "json":
        return json.dumps(plans, indent=2)
    if fmt == "csv":
        cols = ["tp", "pp", "dp", "cp", "zero", "micro_batch", "sp", "vpp", "recompute", "step_time_s",
                "tokens_per_s", "mfu", "tflops_per_device", "fits", "bottleneck"]
        lines = [",".join(cols + ["memory_total_bytes"])]
        for p in plans:
            vals = [str(p[c]) if c != "order" else "|".join(p[c]) for c in cols]
            lines.append(",".join(vals + [str(p["memory_bytes"]["total"])]))
        return "\n".join(lines)
    hbm = cluster.hardware.hbm_bytes
    out = [f"{model.name} on {cluster.name}: {evaluated} candidates evaluated, {len(ranked)} fit; "
           f"global batch {global_batch} x {seq} tokens ({gb_note}); objective {objective}",
           "",
           f"{'#':>3}  {'layout':<53}{'placement':<13}{'step s':>9}{'tokens/s':>11}{'MFU':>7}"
           f"{'memory GiB':>16}  bottleneck"]
    for i, (_, row) in enumerate(best.iterrows(), 1):
        out.append(f"{i:>3}  {describe_row(row):<53}{row['order'].replace('tp,cp,', ''):<13}"
                   f"{row['step_time_s']:9.3f}{row['tokens_per_s']:11.4g}{100 * row['mfu']:6.1f}%"
                   f"{row['memory_bytes'] / GIB:8.1f} / {hbm / GIB:4.0f}  {bottleneck(row)}")
    if len(ranked) > 1:
        out += ["", why(ranked.iloc[0], ranked.iloc[1])]
    b = plans[0]["breakdown_s"]
    out += ["", "best plan's step: " + ", ".join(f"{k} {b[k]:.3g} s" for k in BREAKDOWN_KEYS if b[k] > 0)]
    return "\n".join(out)
