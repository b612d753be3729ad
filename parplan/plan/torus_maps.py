"""The search over TPU torus maps: each mesh shape once per way to lay it over the slices.

On GPUs the search tries two mesh orders, which decide the axes that share a node's NVLink; on a
TPU slice every axis lies over torus axes, so the search tries every map of every shape
(:func:`parplan.layouts.torus_map.enumerate_maps`), as candidate rows carrying the map as numeric
columns (``map_<axis>_<k>``: the axis's factor on torus axis ``k``, the last ``dcn``: the slices);
the search's results name it by its ``--ici`` text (:func:`texts`), which :func:`row_map` reads back.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParplanError
from ..layouts.torus_map import enumerate_maps, format_map, no_map_reason, parse_map


def column(axis: str, k: int) -> str:
    return f"map_{axis}_{k}"


def dcn_column(axis: str) -> str:
    """The column of ``axis``'s share of the slices (its factor over DCN)."""
    return f"map_{axis}_dcn"


def expand(axes: dict, cluster, order: tuple, fixed_ici: str | None = None) -> dict:
    """The candidate mesh shapes in ``axes`` (arrays tp, cp, pp, dp, ...), one row per torus map in the
    mesh ``order``; with ``fixed_ici`` (``--ici``), that map only."""
    dims = len(cluster.slice_shape)
    rows, maps, refused = [], [], None
    for i in range(len(axes["tp"])):
        sizes = {a: int(axes[a][i]) for a in order}
        if fixed_ici:
            try:  # the shapes the given map fits
                found = [parse_map(fixed_ici, sizes, cluster)]
            except ParplanError as exc:
                refused, found = exc, []
        else:
            found = enumerate_maps(sizes, cluster)
        for m in found:
            rows.append(i)
            maps.append(dict(m))
    if not rows:
        if refused is not None:
            raise refused
        first = {a: int(axes[a][0]) for a in order} if len(axes["tp"]) else {}
        raise ParplanError("no mesh shape lies over the slices' torus axes; " + no_map_reason(first, cluster))
    idx = np.asarray(rows)
    out = {k: v[idx] for k, v in axes.items()}
    out["_shape"] = idx
    out["map_id"] = np.arange(len(rows))  # one id per (shape, map): the search names each map once
    for a in order:
        for k in range(dims + 1):
            name = dcn_column(a) if k == dims else column(a, k)
            out[name] = np.asarray([m[a][k] for m in maps])
    return out


def texts(part: dict, order, cluster) -> np.ndarray:
    """The ``--ici`` text of each candidate's map (formatted once per distinct map)."""
    _, first, inverse = np.unique(np.asarray(part["map_id"]), return_index=True, return_inverse=True)
    tmap = layout_map(part, order, cluster)
    names = [format_map(tuple((a, tuple(int(f[i]) for f in factors)) for a, factors in tmap), cluster)
             for i in first]
    return np.asarray(names, dtype=object)[np.ravel(inverse)]


KEEP = 2  # maps of each mesh shape the full search keeps


def prune(rows: dict, model, cluster, space, software, order: tuple, cp_schemes: tuple, keep: int = KEEP) -> dict:
    """The ``keep`` fastest maps of each mesh shape, timed at one setting of the knobs: one sequence per
    micro-batch, the framework's deepest ZeRO stage, no recompute, no interleaving. A map changes only
    how long each axis's collectives take, so the maps that win there win at the other knob settings
    unless their collectives trade places; the full search then tries each kept map with every knob."""
    from ..layouts.layout import TP_MODES, Layout
    from ..step.train import estimate

    n = len(rows["tp"])
    shapes = rows.pop("_shape")
    if n <= 1:
        return rows
    zero = np.where(rows["dp"] * rows["cp"] > 1, max(software.framework.data_parallel.zero), 0)
    times = np.full(n, np.inf)
    for tp_code, cp_code in sorted(set(zip(rows["tp_mode"].tolist(), rows["cp_mode"].tolist()))):
        sel = (rows["tp_mode"] == tp_code) & (rows["cp_mode"] == cp_code)
        part = {k: v[sel] for k, v in rows.items()}
        layout = Layout(tp=part["tp"], pp=part["pp"], dp=part["dp"], cp=part["cp"], micro_batch=1,
                        global_batch=space.global_batch, seq_len=space.seq_len, zero=zero[sel], dtype=space.dtype,
                        tp_mode=TP_MODES[tp_code], cp_mode=cp_schemes[cp_code], order=order,
                        torus_map=layout_map(part, order, cluster))
        est = estimate(model, cluster, layout, check=False, headroom=space.headroom, software=software)
        times[sel] = np.broadcast_to(est.step_time_s, int(sel.sum()))
    rank = np.lexsort((times, shapes))
    position = np.empty(n, int)
    starts = np.r_[0, np.flatnonzero(np.diff(shapes[rank])) + 1]
    for a, b in zip(starts, np.r_[starts[1:], n]):
        position[rank[a:b]] = np.arange(b - a)
    kept = position < keep
    return {k: v[kept] for k, v in rows.items()}


def map_columns(order, cluster) -> list[str]:
    """The candidate columns of a map (left out of the search's results, which carry its text)."""
    dims = len(cluster.slice_shape)
    return [dcn_column(a) if k == dims else column(a, k) for a in order for k in range(dims + 1)] + ["map_id"]


def layout_map(part: dict, order, cluster) -> tuple:
    """The ``torus_map`` of a candidate array (``part``: the search's columns) for a Layout."""
    dims = len(cluster.slice_shape)
    return tuple((a, tuple(part[dcn_column(a) if k == dims else column(a, k)] for k in range(dims + 1)))
                 for a in order)


def row_map(row, order, cluster) -> tuple | None:
    """The map of one search row (read back from its ``ici`` text), or None off a torus."""
    if not cluster.is_torus or "ici" not in row:
        return None
    sizes = {a: int(row[a]) if a in row else 1 for a in order}
    return parse_map(str(row["ici"]), sizes, cluster)
