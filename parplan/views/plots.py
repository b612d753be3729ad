"""Figures of a plan: the device roofline, step-time and memory breakdowns, every candidate
(the scaling curves are in ``scaling_plots``).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot
(nothing is shown, no global figure state); ``save(fig, path)`` writes a PNG
atomically. Outside a Jupyter kernel, importing this module selects the Agg
backend. The planner never imports this module; the report and sweep commands
and notebooks do.
"""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

import matplotlib

if "ipykernel" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from ..step.train import Estimate  # noqa: E402
from .op_table import op_table  # noqa: E402
from ..layouts.strategies import breakdown_keys
from ..plan.search import describe_row  # noqa: E402
from ..units import GIB  # noqa: E402
from .files import write_bytes  # noqa: E402
from .plot_fit import fit_annotations, merge_identical  # noqa: E402

__all__ = ["memory_breakdown", "plan_scatter", "roofline", "save", "si", "step_breakdown"]

DPI = 120

BREAKDOWN_STYLE = {
    "compute": ("#4C72B0", "compute"),
    "recompute": ("#9DB9DE", "recompute"),
    "tp_comm": ("#DD8452", "TP comm (exposed)"),
    "cp_comm": ("#E8C15A", "CP comm (exposed)"),
    "pp_comm": ("#55A868", "PP send/recv"),
    "bubble": ("#A9A9A9", "pipeline bubble"),
    "dp_comm": ("#C44E52", "DP comm (exposed)"),
    "optimizer": ("#8172B3", "optimizer step"),
}
MEMORY_STYLE = {
    "weights": ("#4C72B0", "weights"),
    "gradients": ("#DD8452", "gradients"),
    "optimizer": ("#55A868", "optimizer state"),
    "activations": ("#C44E52", "activations"),
    "logits": ("#8172B3", "logits + loss"),
    "gathered_weights": ("#937860", "gathered weights (ZeRO-3)"),
}
RECOMPUTE_COLORS = {"none": "#4C72B0", "selective": "#55A868", "full": "#DD8452"}
_FALLBACK = ("#64B5CD", "#CCB974", "#DA8BC3", "#8C8C8C")


def _style(table: dict, key: str, i: int) -> tuple[str, str]:
    return table.get(key, (_FALLBACK[i % len(_FALLBACK)], key.replace("_", " ")))


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw):
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def si(value: float) -> str:
    """12480 -> '12.5k', 4.2e6 -> '4.19M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 x 10^k, written as plain numbers (20, 500, 1k) rather than 2x10^1."""
    from matplotlib.ticker import LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: si(v) if v >= 1 else f"{v:g}"))


def save(fig: Figure, path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` (temp file, then rename); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_bytes(Path(path), buf.getvalue())


def _records(plans) -> list[dict]:
    """Rows of a plan/estimate frame, or of a list of Estimates, as dicts."""
    if isinstance(plans, Estimate):
        plans = [plans]
    if isinstance(plans, (list, tuple)) and plans and isinstance(plans[0], Estimate):
        from .frames import estimate_frame

        plans = estimate_frame(plans)
    if hasattr(plans, "to_dict"):
        return plans.to_dict("records")
    return [dict(r) for r in plans]


def _plan_labels(rows: list[dict]) -> list[str]:
    placements = {r.get("order") for r in rows}
    labels = []
    for i, r in enumerate(rows, 1):
        label = f"#{i}  {describe_row(r)}"
        if len(placements) > 1 and r.get("order"):
            label += f"  [{r['order'].replace('tp,cp,', '')}]"
        labels.append(label)
    return labels


# --------------------------------------------------------------------------- roofline


def roofline(est: Estimate, *, title: str | None = None) -> Figure:
    """The device roofline with every op of one layer (one micro-batch) placed where it runs.

    Left: FLOP/s against arithmetic intensity (log-log), the peak and HBM-bandwidth
    roofs and the best-shape achievable roofs; each op with FLOPs at its forward
    (filled) and backward (open) intensity and achieved rate. Right: the time of
    every op, forward + backward, coloured by its bound (memory-only ops, which
    carry no FLOPs, appear only here).
    """
    hw, dtype = est.cluster.hardware, est.layout.dtype
    peak, bw = hw.peak(dtype), hw.hbm_bandwidth
    ridge = peak / bw
    rows = op_table(est)
    flop_rows = [r for r in rows if r["fwd_flops"] > 0 and r["forward_s"] > 0]
    fig, axes = _figure(13.5, 5.6, 1, 2, gridspec_kw={"width_ratios": [1.55, 1]})
    ax, bx = axes[0]

    pts = []
    for r in flop_rows:
        pts.append((r["intensity_flops_per_byte"], r["fwd_flops"] / r["forward_s"]))
        if r["bwd_flops"] > 0 and r["backward_s"] > 0 and r["bwd_bytes"] > 0:
            pts.append((r["bwd_flops"] / r["bwd_bytes"], r["bwd_flops"] / r["backward_s"]))
    xs = [p[0] for p in pts] + [ridge]
    lo = 10 ** math.floor(math.log10(max(min(xs) / 8, 1e-2)))
    hi = 10 ** math.ceil(math.log10(max(xs) * 4))
    x = np.logspace(math.log10(lo), math.log10(hi), 400)
    ax.plot(x, np.minimum(peak, bw * x) / 1e12, color="black", lw=2.2,
            label=f"roofline: {peak / 1e12:.0f} TFLOP/s {dtype} peak, {bw / 1e12:.2f} TB/s HBM")
    eff_m, eff_h = getattr(hw, "matmul_efficiency", None), getattr(hw, "hbm_efficiency", None)
    if eff_m and eff_h:
        ax.plot(x, np.minimum(peak * eff_m, bw * eff_h * x) / 1e12, color="black", lw=1, ls="--",
                label=f"best-shape achievable: {eff_m:.0%} of peak, {eff_h:.0%} of HBM bandwidth")
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.annotate(f"ridge {ridge:.0f} FLOP/B", (ridge, 0.03), xycoords=ax.get_xaxis_transform(), rotation=90,
                fontsize=8, color="dimgrey", ha="right", va="bottom", xytext=(-3, 0), textcoords="offset points")
    cmap = matplotlib.colormaps["tab10"]
    groups: list[tuple[float, float, list[dict]]] = []   # ops drawn at the same spot share a marker
    for r in flop_rows:
        xi, yi = r["intensity_flops_per_byte"], r["fwd_flops"] / r["forward_s"]
        for gx, gy, members in groups:
            if abs(math.log(xi / gx)) < 0.02 and abs(math.log(yi / gy)) < 0.02:
                members.append(r)
                break
        else:
            groups.append((xi, yi, [r]))
    handles = []
    for i, (_, _, members) in enumerate(groups):
        color = cmap(i % 10)
        for r in members:
            ax.scatter([r["intensity_flops_per_byte"]], [r["fwd_flops"] / r["forward_s"] / 1e12], s=55,
                       color=color, edgecolor="black", linewidth=0.6, zorder=5)
            if r["bwd_flops"] > 0 and r["backward_s"] > 0 and r["bwd_bytes"] > 0:
                ax.scatter([r["bwd_flops"] / r["bwd_bytes"]], [r["bwd_flops"] / r["backward_s"] / 1e12], s=110,
                           facecolor="none", edgecolor=color, linewidth=1.8, marker="s", zorder=4)
        kinds = {m["kind"].replace("_", " ") for m in members}
        names = ", ".join(m["op"] for m in members)
        kind = ", ".join(sorted(kinds))
        handles.append(Line2D([], [], marker="o", ls="", color=color, markeredgecolor="black", markersize=8,
                              label=names if kind.replace(" ", "_") in names else f"{names} ({kind})"))
    roofs = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], marker="o", ls="", color="grey", label="forward (filled)"),
                Line2D([], [], marker="s", ls="", markerfacecolor="none", markeredgecolor="grey",
                       label="backward (open)")]
    ax.legend(handles=roofs + handles, fontsize=7.5, loc="lower right", framealpha=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(max(bw * lo / 1e12 / 2, peak / 1e12 / 1e4), peak / 1e12 * 2.5)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("arithmetic intensity (FLOP per byte of HBM traffic)")
    ax.set_ylabel("achieved rate (TFLOP/s)")
    ax.set_title("ops of one layer on the roofline", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)

    names = [r["op"] for r in rows]
    times = np.array([r["forward_s"] + r["backward_s"] for r in rows]) * 1e3
    colors = ["#4C72B0" if r["bound"] == "compute" else "#DD8452" for r in rows]
    y = np.arange(len(rows))
    bx.barh(y, times, color=colors)
    total = times.sum()
    for yi, t in zip(y, times):
        bx.annotate(f"{100 * t / total:.1f}%", (t, yi), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=7.5)
    bx.set_yticks(y, names, fontsize=8)
    bx.invert_yaxis()
    bx.set_xlim(0, times.max() * 1.18 if len(times) else 1)
    bx.set_xlabel("time per layer, forward + backward (ms)")
    bx.set_title(f"time per op (layer total {total:.3g} ms)", fontsize=10)
    bx.legend(handles=[Patch(color="#4C72B0", label="compute-bound"), Patch(color="#DD8452", label="memory-bound")],
              fontsize=8, loc="lower right")
    bx.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title or f"{hw.name} roofline: one layer of {est.model.name}, one micro-batch, one device\n"
                          f"({est.layout.describe()})", fontsize=11)
    return fig


# --------------------------------------------------------------------------- breakdowns


def _stacked_barh(ax, rows: list[dict], parts: Sequence[tuple[str, str, str]], scale: float) -> np.ndarray:
    """Horizontal stacked bars, one row per plan; ``parts`` = (column, color, label). Returns the totals."""
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for col, color, label in parts:
        vals = np.array([float(r.get(col, 0.0) or 0.0) for r in rows]) / scale
        if not np.any(vals > 0):
            continue
        ax.barh(y, vals, left=left, color=color, label=label, edgecolor="white", linewidth=0.5)
        left += vals
    return left


def step_breakdown(plans, *, title: str | None = None, top: int | None = None) -> Figure:
    """Stacked step time (compute, recompute, exposed communication, bubble, optimizer) per plan.

    ``plans``: a plan frame (``frames.plan_frame(...).head(5)``), an estimate frame
    or a list of Estimates; the first is drawn at the top. Plans with identical breakdowns share
    one bar (each named in its label, and the title says so); the time and MFU beside each bar
    stay inside the axes.
    """
    rows = _records(plans)[:top]
    if not rows:
        raise ValueError("no plans to draw")
    rows, labels, numbers = merge_identical(rows, _plan_labels(rows))
    lines = sum(len(n) for n in numbers)
    fig, axes = _figure(11.5, 1.6 + 0.55 * len(rows) + 0.22 * (lines - len(rows)))
    ax = axes[0][0]
    parts = [(f"{k}_s", *_style(BREAKDOWN_STYLE, k, i)) for i, k in enumerate(breakdown_keys())]
    totals = _stacked_barh(ax, rows, parts, 1.0)
    notes = []
    for i, (r, t) in enumerate(zip(rows, totals)):
        notes.append(ax.annotate(f"{t:.3g} s   MFU {100 * float(r['mfu']):.1f}%", (t, i), xytext=(4, 0),
                                 textcoords="offset points", va="center", fontsize=8))
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=8, family="monospace")
    ax.invert_yaxis()
    ax.set_xlim(0, totals.max() * 1.22)
    ax.set_xlabel("time per optimizer step (s), busiest device, critical path")
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    same = [" and ".join(f"#{n}" for n in group) for group in numbers if len(group) > 1]
    heading = title or "Step time breakdown of the top plans"
    if same:
        heading += f"\n({'; '.join(same)}: identical breakdowns, one bar each)"
    ax.set_title(heading, fontsize=11)
    fit_annotations(ax, notes, float(totals.max()))
    return fig


def memory_breakdown(plans, *, title: str | None = None, hbm_bytes: float | None = None,
                     headroom: float | None = None) -> Figure:
    """Stacked memory per device (weights, gradients, optimizer state, activations, ...) against HBM.

    ``plans``: a list of Estimates or an estimate frame (``memory_<part>_bytes`` columns).
    """
    rows = _records(plans)
    if not rows:
        raise ValueError("no plans to draw")
    hbm = hbm_bytes or float(rows[0]["hbm_bytes"])
    headroom = rows[0].get("headroom", 0.10) if headroom is None else headroom
    from .frames import memory_part_columns

    keys = [c[len("memory_"):-len("_bytes")] for c in memory_part_columns(rows[0])]
    fig, axes = _figure(11.5, 1.8 + 0.55 * len(rows))
    ax = axes[0][0]
    parts = [(f"memory_{k}_bytes", *_style(MEMORY_STYLE, k, i)) for i, k in enumerate(keys)]
    totals = _stacked_barh(ax, rows, parts, GIB)
    for i, t in enumerate(totals):
        ax.annotate(f"{t:.1f} GiB", (t, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85), zorder=6)
    ax.axvline(hbm / GIB, color="black", lw=1.8, label=f"HBM {hbm / GIB:.1f} GiB ({hbm / 1e9:.0f} GB)")
    if headroom:
        ax.axvline(hbm * (1 - headroom) / GIB, color="black", lw=1.2, ls="--",
                   label=f"usable with {100 * headroom:.0f}% headroom")
    ax.set_yticks(np.arange(len(rows)), _plan_labels(rows), fontsize=8, family="monospace")
    ax.invert_yaxis()
    ax.set_xlim(0, max(totals.max(), hbm / GIB) * 1.15)
    ax.set_xlabel("memory per device (GiB)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    ax.set_title(title or "Memory per device of the top plans (busiest pipeline stage)", fontsize=11)
    return fig


# --------------------------------------------------------------------------- all candidates


def plan_scatter(frame, *, chosen: int | None = 0, hbm_bytes: float | None = None, headroom: float | None = None,
                 title: str | None = None) -> Figure:
    """Every candidate: throughput against memory per device; infeasible ones grey, the chosen one starred.

    Plans that fit are coloured by their model-parallel degree (tp x pp x cp);
    the step line is the Pareto frontier (the fastest plan within each memory
    budget). ``frame``: ``frames.plan_frame(...)`` (or any frame with
    ``tokens_per_s``, ``memory_bytes``, ``fits``, ``tp``, ``pp``, ``cp``);
    ``chosen``: the row position of the chosen plan (default the first, which
    ``plan_frame`` ranks best).
    """
    from matplotlib.colors import LogNorm

    hbm = hbm_bytes or frame.attrs.get("hbm_bytes")
    headroom = frame.attrs.get("headroom", 0.10) if headroom is None else headroom
    fig, axes = _figure(10.5, 6.4)
    ax = axes[0][0]
    mem = frame["memory_bytes"].to_numpy(float) / GIB
    tps = frame["tokens_per_s"].to_numpy(float)
    fits = frame["fits"].to_numpy(bool)
    ax.scatter(mem[~fits], tps[~fits], s=5, color="#C8C8C8", alpha=0.6, linewidths=0, rasterized=True,
               label=f"does not fit ({int((~fits).sum())})")
    degree = (frame["tp"] * frame["pp"] * frame["cp"]).to_numpy(float) if {"tp", "pp", "cp"} <= set(frame) \
        else np.ones(len(frame))
    if fits.any():
        order = np.argsort(-degree[fits])   # small model-parallel degrees (usually the fastest) on top
        top = max(2.0, degree[fits].max())
        sc = ax.scatter(mem[fits][order], tps[fits][order], c=degree[fits][order], cmap="viridis",
                        norm=LogNorm(vmin=1, vmax=top), s=7, alpha=0.7, linewidths=0, rasterized=True,
                        label=f"fits ({int(fits.sum())})")
        ticks = [2 ** k for k in range(int(math.log2(top)) + 1)]
        bar = fig.colorbar(sc, ax=ax, pad=0.01, ticks=ticks)
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_locator(NullLocator())
        bar.set_label("model-parallel degree tp × pp × cp (plans that fit)")
        order = np.argsort(mem[fits], kind="stable")
        fm, ft = mem[fits][order], tps[fits][order]
        best = np.maximum.accumulate(ft)
        keep = np.r_[True, best[1:] > best[:-1]]
        fx, fy = fm[keep], best[keep]
        ax.step(np.r_[fx, fx[-1] * 1.0], np.r_[fy, fy[-1]], where="post", color="black", lw=1.2, alpha=0.8,
                label="Pareto frontier: fastest within a memory budget")
    if hbm:
        ax.axvline(hbm / GIB, color="black", lw=1.5, label=f"HBM {hbm / GIB:.1f} GiB")
        if headroom:
            ax.axvline(hbm * (1 - headroom) / GIB, color="black", lw=1, ls="--",
                       label=f"usable ({100 * headroom:.0f}% headroom)")
    if chosen is not None and len(frame):
        row = frame.iloc[chosen]
        ax.scatter([row["memory_bytes"] / GIB], [row["tokens_per_s"]], marker="*", s=380, color="#E41A1C",
                   edgecolor="black", linewidth=0.8, zorder=5,
                   label=f"chosen: {describe_row(row)}\n{si(row['tokens_per_s'])} tokens/s, "
                         f"{row['memory_bytes'] / GIB:.1f} GiB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    pos = tps[tps > 0]
    if len(pos):
        ax.set_ylim(max(pos.min(), pos.max() / 1e4) / 1.3, pos.max() * 1.6)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("memory per device (GiB, log scale)")
    ax.set_ylabel("throughput (tokens/s, log scale)")
    ax.grid(True, which="major", alpha=0.3)
    leg = ax.legend(fontsize=8, loc="lower left", framealpha=0.92)
    for h, text in zip(leg.legend_handles, leg.get_texts()):
        if hasattr(h, "set_sizes") and not text.get_text().startswith("chosen"):
            h.set_sizes([30])
            if text.get_text().startswith("fits"):
                h.set_array(None)
                h.set_color(matplotlib.colormaps["viridis"](0.45))
    n, nf = len(frame), int(fits.sum())
    name = f"{frame.attrs.get('model', '')} on {frame.attrs.get('cluster', '')}: " if frame.attrs.get("model") else ""
    ax.set_title(title or f"{name}{n} candidate plans, {nf} fit", fontsize=11)
    return fig


# --------------------------------------------------------------------------- scaling


