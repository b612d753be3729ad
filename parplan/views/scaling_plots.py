"""Scaling figures: the best plan against the number of devices or the global batch, and a sweep grid.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot; ``parplan.views.plots.save``
writes it as a PNG.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .plots import _figure, _plain_log_ticks, si


def _log_interp(x_target_tokens: float, tokens: np.ndarray, xs: np.ndarray) -> float | None:
    ok = (tokens > 0) & (xs > 0)
    t, x = np.log(tokens[ok]), np.log(xs[ok])
    if len(t) < 2 or not (t.min() <= math.log(x_target_tokens) <= t.max()):
        return None
    order = np.argsort(t)
    return float(np.exp(np.interp(math.log(x_target_tokens), t[order], x[order])))


def scaling(frame, *, x: str | None = None, title: str | None = None, annotate: bool = True) -> Figure:
    """MFU and step-time shares of the best plan (and best FSDP plan) along devices or global batch.

    ``frame``: ``sweep.device_scaling(...)`` or ``sweep.batch_scaling(...)``. The
    vertical line marks where the tokens per device equal the device's FLOP per
    network byte (C/W): above it FSDP can hide its all-gathers behind compute.
    """
    x = x or frame.attrs.get("x", "devices")
    xs = frame[x].to_numpy(float)
    tokens = frame["tokens_per_device"].to_numpy(float)
    ok = (frame["status"] == "ok").to_numpy()
    fig, axes = _figure(12.5, 8, 2, 1, sharex=True, gridspec_kw={"height_ratios": [1.15, 1]})
    ax, bx = axes[0][0], axes[1][0]

    def col(name):
        return frame[name].to_numpy(float) if name in frame else np.full(len(frame), np.nan)

    mfu = col("mfu") * 100
    ax.plot(xs[ok], mfu[ok], marker="o", markersize=9, color="#4C72B0", lw=4, alpha=0.85, label="best plan")
    fsdp = col("fsdp_mfu") * 100
    if np.isfinite(fsdp).any():
        ax.plot(xs, fsdp, marker="s", markersize=5, color="#C44E52", lw=1.5, ls="--",
                label="best FSDP plan (ZeRO-3, no pipeline)")
    if (~ok).any():
        ax.scatter(xs[~ok], np.zeros((~ok).sum()), marker="x", s=60, color="black", zorder=5, clip_on=False,
                   label="no layout fits")
    if annotate:
        for i, (xi, yi, r) in enumerate(zip(xs[ok], mfu[ok], frame[ok].to_dict("records"))):
            v = {k: int(r[k]) for k in ("tp", "pp", "dp", "cp", "zero")}
            short = f"tp{v['tp']} pp{v['pp']} dp{v['dp']}" + (f" cp{v['cp']}" if v["cp"] > 1 else "") + \
                    (f" z{v['zero']}" if v["zero"] else "")
            ax.annotate(short, (xi, yi), xytext=(0, 9 if i % 2 == 0 else -15), textcoords="offset points",
                        ha="center", fontsize=7, color="#2F4F7F")
    top = np.nanmax(np.concatenate([mfu[ok], fsdp[np.isfinite(fsdp)], [1.0]]))
    ax.set_ylim(0, min(100, top * 1.25 + 2))
    ax.set_ylabel("MFU (%)")
    ax.grid(True, alpha=0.3)

    step = col("step_time_s")
    shares: list = []
    for name, color, label in (("dp_comm_s", "#C44E52", "exposed DP comm, best plan"),
                               ("bubble_s", "#7F7F7F", "pipeline bubble, best plan"),
                               ("tp_comm_s", "#DD8452", "exposed TP comm, best plan")):
        share = col(name) / step * 100
        if np.nanmax(np.nan_to_num(share[ok]), initial=0) > 0:
            bx.plot(xs[ok], share[ok], marker="o", markersize=8, color=color, lw=3.5, alpha=0.75, label=label)
            shares.append(share[ok])
    fshare = col("fsdp_dp_comm_s") / col("fsdp_step_time_s") * 100
    if np.isfinite(fshare).any():
        bx.plot(xs, fshare, marker="s", markersize=5, color="#8B0000", lw=1.5, ls="--",
                label="exposed DP comm, best FSDP plan")
        shares.append(fshare[np.isfinite(fshare)])
    bx.set_ylabel("share of step time (%)")
    peak_share = max([float(np.nanmax(v)) for v in shares if len(v)] + [0.0])
    bx.set_ylim(0, max(5.0, peak_share * 1.15))
    bx.grid(True, alpha=0.3)

    cw = frame.attrs.get("cw_tokens_per_device")
    if cw:
        x_cw = _log_interp(cw, tokens, xs)
        if x_cw is not None:
            below_side = (xs.max() if tokens[np.argmax(xs)] < cw else xs.min())
            for a in (ax, bx):
                a.axvline(x_cw, color="#C44E52", ls=":", lw=1.5)
                a.axvspan(min(x_cw, below_side), max(x_cw, below_side), color="#C44E52", alpha=0.06)
            ax.plot([], [], color="#C44E52", ls=":", label=f"C/W = {si(cw)} tokens per device\n(shaded: fewer)")
        else:
            ax.plot([], [], color="#C44E52", ls=":", label=f"C/W = {si(cw)} tokens per device\n(outside this range)")
    for a in (ax, bx):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    bx.set_xscale("log", base=2)
    bx.margins(x=0.07)
    bx.xaxis.set_major_locator(FixedLocator(xs))
    bx.xaxis.set_minor_locator(NullLocator())
    tok = dict(zip(xs, tokens))
    bx.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v))}\n{si(tok.get(v, 0))}"
                                               if v in tok else ""))
    bx.tick_params(axis="x", labelsize=8)
    what = {"devices": "devices", "global_batch": "global batch (sequences)"}.get(x, x)
    bx.set_xlabel(f"{what}  (second line: tokens per device per step)")
    model, hw = frame.attrs.get("model", ""), frame.attrs.get("hardware", "")
    if title is None:
        if x == "devices":
            title = f"{model} on {hw}: best plan at each device count (global batch by the default rule)"
        else:
            title = f"{model} on {frame.attrs.get('cluster', hw)}: best plan at each global batch"
    fig.suptitle(title, fontsize=11)
    return fig


_SWEEP_X = {"devices": "devices", "global-batch": "global_batch", "seq": "seq_len"}


_SWEEP_NAMES = {"devices": "devices", "global-batch": "global batch", "seq": "seq"}


def sweep(frame, keys: Sequence[str] | None = None, *, title: str | None = None) -> Figure:
    """Throughput and MFU of the best plan of each sweep point: x the devices (or the first key), one line per
    combination of the other keys."""
    keys = list(keys or frame.attrs.get("vary") or ["devices"])
    xkey = "devices" if "devices" in keys else keys[0]
    others = [k for k in keys if k != xkey]
    xcol = _SWEEP_X[xkey]
    fig, axes = _figure(12.5, 5.2, 1, 2)
    ax, bx = axes[0]
    groups: Iterable[tuple[Any, Any]]
    if others:
        groups = frame.groupby([_SWEEP_X[k] for k in others], sort=False)
    else:
        groups = [((), frame)]
    cmap = matplotlib.colormaps["viridis"]
    groups = list(groups)
    failed_x: list = []
    for i, (vals, g) in enumerate(groups):
        vals = vals if isinstance(vals, tuple) else (vals,)
        label = ", ".join(f"{_SWEEP_NAMES[k]} {v}" for k, v in zip(others, vals)) or "best plan"
        color = cmap(i / max(len(groups) - 1, 1) * 0.8) if len(groups) > 1 else "#4C72B0"
        g = g.sort_values(xcol)
        ok = (g["status"] == "ok").to_numpy()
        gx = g[xcol].to_numpy(float)
        if ok.any():
            ty = g["tokens_per_s"].to_numpy(float)[ok]
            if xkey == "devices" and i == len(groups) - 1 and ok.sum() > 1:
                lin = ty[0] * gx[ok] / gx[ok][0]
                ax.plot(gx[ok], lin, color="black", ls=":", lw=1.2, zorder=4, label=f"linear scaling ({label})")
            ax.plot(gx[ok], ty, marker="o", color=color, label=label)
            bx.plot(gx[ok], g["mfu"].to_numpy(float)[ok] * 100, marker="o", color=color, label=label)
        failed_x.extend(gx[~ok])
    if failed_x:
        bx.scatter(failed_x, np.zeros(len(failed_x)), marker="x", s=60, color="black", zorder=5,
                   label="no layout fits")
    xs = np.unique(frame[xcol].to_numpy(float))
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.xaxis.set_major_locator(FixedLocator(xs))
        a.xaxis.set_minor_locator(NullLocator())
        a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v))}"))
        a.tick_params(axis="x", labelsize=8, labelrotation=45 if len(xs) > 8 else 0)
        a.set_xlabel(_SWEEP_NAMES[xkey] + (" (sequences)" if xkey == "global-batch" else "")
                     + (" (tokens)" if xkey == "seq" else ""))
        a.grid(True, which="major", alpha=0.3)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_ylabel("throughput (tokens/s, log scale)")
    ax.set_title("throughput of the best plan", fontsize=10)
    bx.set_ylabel("MFU (%)")
    bx.set_ylim(0, 100)
    bx.set_title("model FLOPs utilization of the best plan", fontsize=10)
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    against = {"devices": "the number of devices", "global-batch": "the global batch", "seq": "the sequence length"}
    fig.suptitle(title or f"{frame.attrs.get('model', '')} on {frame.attrs.get('hardware', '')}: "
                          f"the best plan against {against[xkey]}", fontsize=11)
    return fig
