"""Fitting a bar chart to what it shows: plans with identical breakdowns drawn once, and the text beside
each bar kept inside the axes."""
from __future__ import annotations

import numpy as np

from ..layouts.strategies import breakdown_keys


def _same_breakdown(a: dict, b: dict) -> bool:
    keys = [f"{k}_s" for k in breakdown_keys()]
    va = np.array([float(a.get(k, 0.0) or 0.0) for k in keys])
    vb = np.array([float(b.get(k, 0.0) or 0.0) for k in keys])
    return bool(np.allclose(va, vb, rtol=1e-9, atol=0.0))


def merge_identical(rows: list[dict], labels: list[str]) -> tuple[list[dict], list[str], list[list[int]]]:
    """Plans whose step-time parts are all equal, as one bar: its label lists each plan on a line.

    Returns the rows drawn, their labels, and the 1-based plan numbers behind each bar.
    """
    kept: list[dict] = []
    names: list[list[str]] = []
    numbers: list[list[int]] = []
    for i, (r, label) in enumerate(zip(rows, labels), 1):
        for j, k in enumerate(kept):
            if _same_breakdown(k, r):
                names[j].append(label)
                numbers[j].append(i)
                break
        else:
            kept.append(r)
            names.append([label])
            numbers.append([i])
    return kept, ["\n".join(n) for n in names], numbers


def fit_annotations(ax, texts, right: float) -> None:
    """Widen the x axis until every text annotated beyond a bar's end lies inside the axes.

    ``right`` is the largest bar end. The figure is laid out first, so the widths are the drawn ones.
    """
    fig = ax.figure
    for _ in range(3):
        fig.draw_without_rendering()
        box = ax.get_window_extent()
        xmax = ax.get_xlim()[1]
        need = xmax
        for t in texts:
            ext = t.get_window_extent()
            if ext.x1 > box.x1 - 2:
                # the text keeps its pixel width; the bar end moves left as the axis widens
                anchor = float(t.xy[0])
                width_px = ext.x1 - (box.x0 + box.width * anchor / xmax)
                frac = min(0.8, (width_px + 6) / box.width)
                need = max(need, anchor / (1 - frac))
        if need <= xmax:
            return
        ax.set_xlim(0, max(need, right) * 1.02)
