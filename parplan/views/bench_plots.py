"""PNG plots of bench results (matplotlib, Agg backend): bus bandwidth, matmul rate, predicted vs measured."""
from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ..calibrate.rows import Row
from .files import write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(count: int) -> tuple[int, int]:
    cols = min(3, count)
    return math.ceil(count / cols), cols


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())


def plot_busbw(rows: Sequence[Row], path: Path) -> bool:
    """Bus bandwidth against buffer size, one panel per collective, one line per group."""
    coll = [r for r in rows if r.kind == "collective"]
    if not coll:
        return False
    plt = _pyplot()
    by_op: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in coll:
        by_op[r.op][f"{r.group} ({r.group_size} ranks, {r.group_class})"].append(r)
    nrows, ncols = _grid(len(by_op))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax, (op, groups) in zip(axes.flat, by_op.items()):
        for label, rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r.size_bytes)
            ax.plot([r.size_bytes for r in rs], [r.busbw_bytes_per_s / 1e9 for r in rs], marker=".", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(op)
        ax.set_xlabel("buffer size (bytes)")
        ax.set_ylabel("bus bandwidth (GB/s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(by_op):]:
        ax.set_visible(False)
    fig.suptitle(f"busbw (nccl-tests definition), {coll[0].backend} on {coll[0].device_name}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_matmul(rows: Sequence[Row], path: Path) -> bool:
    """Achieved matmul FLOP/s against FLOPs per call, one line per dtype."""
    mm = [r for r in rows if r.kind == "matmul"]
    if not mm:
        return False
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    scale, unit = rate_unit(max(r.flops_per_s for r in mm))
    for dtype in sorted({r.dtype for r in mm}):
        rs = sorted((r for r in mm if r.dtype == dtype), key=lambda r: r.flops)
        ax.scatter([r.flops for r in rs], [r.flops_per_s / scale for r in rs], label=dtype, s=14)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("FLOPs per matmul (2 m k n)")
    ax.set_ylabel(f"achieved rate ({unit})")
    ax.set_title(f"matmul on {mm[0].device_name}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def rate_unit(fastest: float) -> tuple[float, str]:
    """TFLOP/s from 1 TFLOP/s up, GFLOP/s below (a CPU), so the axis reads 60 GFLOP/s, not 6x10^-2."""
    return (1e12, "TFLOP/s") if fastest >= 1e12 else (1e9, "GFLOP/s")


def plot_results(rows: Sequence[Row], out_dir: Path) -> list[str]:
    """Every plot that the rows support; returns a note per file written."""
    notes = []
    if plot_busbw(rows, Path(out_dir) / "busbw.png"):
        notes.append(f"plot {Path(out_dir) / 'busbw.png'}")
    if plot_matmul(rows, Path(out_dir) / "matmul.png"):
        notes.append(f"plot {Path(out_dir) / 'matmul.png'}")
    return notes


def plot_compare(measured_s: Sequence[float], predicted_s: Sequence[float], labels: Sequence[str],
                 path: Path, title: str) -> None:
    """Predicted against measured time, log-log, with the y = x line; colour by label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for label in sorted(set(labels)):
        xs = [m for m, l in zip(measured_s, labels) if l == label]
        ys = [p for p, l in zip(predicted_s, labels) if l == label]
        ax.scatter(xs, ys, s=12, label=label)
    lo = min(min(measured_s), min(predicted_s))
    hi = max(max(measured_s), max(predicted_s))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured time (s)")
    ax.set_ylabel("predicted time (s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
