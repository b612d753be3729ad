"""Mesh axes laid over a TPU slice's torus axes and over the slices: which links each axis's collectives use.

A *torus map* gives each mesh axis (in the layout's order, innermost first) a factor per torus
axis of the slice (``x``, ``y``, ``z``) and one for the slices (``dcn``): ``tp=z:12,dp=x:16+y:16+dcn:2``
lays tensor parallelism along the 12 chips of ``z`` and data parallelism over the 16x16 ``x``-``y``
planes of two slices. Each torus axis's chips are shared out in mesh order: the inner mesh axis
takes neighbouring chips, the next one chips that far apart. A chip's index is then the mixed
radix of its mesh coordinates, each mesh axis counting its torus factors in ``x, y, z, dcn`` order,
so a group of ``size`` ranks ``stride`` apart (what the strategies issue collectives over) lies on
known torus axes, with known spacing, closing rings where it spans a wrapped axis whole
(:func:`group_on_torus`). Only data parallelism and the pipeline cross slices, as MaxText's
``dcn_*_parallelism`` settings are used (tensor and sequence parallelism over DCN: "never
recommended", its ``base.yml``).

The search tries every map of a mesh shape (:func:`enumerate_maps`), as it tries which axis goes
on NVLink on GPUs; ``--ici`` fixes one (:func:`parse_map`).
"""
from __future__ import annotations

import functools
import itertools

import numpy as np

from ..cost.torus import TorusGroup
from ..errors import ParplanError
from ..specs.slices import AXIS_NAMES, format_shape
from ..specs.yamlio import suggest

DCN = "dcn"
DCN_AXES = ("dp", "pp")


def _names(cluster) -> tuple[str, ...]:
    return tuple(AXIS_NAMES[:len(cluster.slice_shape)])


def _prod(values):
    out = 1
    for v in values:
        out = out * v
    return out


def format_map(tmap, cluster) -> str:
    """The canonical text of one map: ``tp=z:12,dp=x:16+y:16+dcn:2`` (axes of size 1 left out)."""
    names = _names(cluster) + (DCN,)
    parts = []
    for axis, factors in tmap:
        pieces = [f"{n}:{int(f)}" for n, f in zip(names, factors) if int(f) > 1]
        if pieces:
            parts.append(f"{axis}={'+'.join(pieces)}")
    return ",".join(parts) or "(one chip)"


def describe_map(tmap, cluster) -> str:
    """One line for people: each axis over its torus axes (``ring`` where its chips close one through the
    wraparound, ``line`` where they do not) and its slices."""
    shape = cluster.slice_shape
    out, inner = [], [1] * len(shape)
    for axis, factors in tmap:
        group = _group_of(factors, inner, cluster)
        pieces = [f"{AXIS_NAMES[d]}{int(f)} {'ring' if group.rings[d] else 'line'}"
                  for d, f in enumerate(factors[:-1]) if int(f) > 1]
        if int(factors[-1]) > 1:
            pieces.append(f"dcn{int(factors[-1])}")
        if pieces:
            out.append(f"{axis} over {' * '.join(pieces)}")
        inner = [i * int(f) for i, f in zip(inner, factors[:-1])]
    head = f"slice {format_shape(shape)}" + (f" x {cluster.slices} over DCN" if cluster.slices > 1 else "")
    return f"{head}: " + ("; ".join(out) if out else "one chip")


def parse_map(text: str, sizes: dict, cluster) -> tuple:
    """The map ``--ici`` gives, checked against the mesh ``sizes`` (axis -> size, in mesh order)."""
    if not cluster.is_torus:
        raise ParplanError("--ici lays mesh axes over a TPU torus; this cluster has none")
    names = _names(cluster)
    shape, slices = cluster.slice_shape, cluster.slices
    given: dict[str, list] = {}
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        axis, eq, rest = part.partition("=")
        if not eq or axis not in sizes:
            raise ParplanError(f"--ici: '{part}' must read AXIS=PARTS with AXIS one of {', '.join(sizes)}"
                               f"{suggest(axis, sizes)}")
        if axis in given:
            raise ParplanError(f"--ici: axis '{axis}' given twice")
        pieces = []
        for piece in rest.split("+"):
            name, colon, count = piece.partition(":")
            if name not in names + (DCN,):
                raise ParplanError(f"--ici: torus axis '{name}' does not exist on a {format_shape(shape)} slice "
                                   f"(its axes are {', '.join(names)}; dcn joins slices)")
            if colon and (not count.isdigit() or int(count) < 1):
                raise ParplanError(f"--ici: '{piece}' needs a positive whole count after ':'")
            pieces.append((name, int(count) if colon else None))
        given[axis] = pieces
    owners = {n: [a for a, ps in given.items() for p, _ in ps if p == n] for n in names + (DCN,)}
    rows = []
    for axis in sizes:
        factors = [1] * (len(names) + 1)
        for name, count in given.get(axis, []):
            i = len(names) if name == DCN else names.index(name)
            whole = slices if name == DCN else shape[i]
            if count is None and len(owners[name]) > 1:
                raise ParplanError(f"--ici: torus axis '{name}' is shared by {', '.join(owners[name])}; give each "
                                   f"its count, such as {name}:{_example(whole)}")
            factors[i] = whole if count is None else count
        rows.append((axis, tuple(factors)))
    tmap = tuple(rows)
    check_map(tmap, sizes, cluster, "--ici")
    return tmap


def _example(n: int) -> int:
    return next((d for d in range(2, n) if n % d == 0), n)


def check_map(tmap, sizes: dict, cluster, what: str = "torus map") -> None:
    """A one-line error unless each axis's factors multiply to its size and each torus axis is filled."""
    names = _names(cluster) + (DCN,)
    whole = tuple(cluster.slice_shape) + (cluster.slices,)
    for axis, factors in tmap:
        got = _prod(factors)
        if int(got) != sizes.get(axis, 1):
            laid = "+".join(f"{n}:{int(f)}" for n, f in zip(names, factors) if int(f) > 1) or "nothing"
            raise ParplanError(f"{what}: {axis}={sizes.get(axis, 1)} but its parts ({laid}) hold {int(got)} chips")
        if int(factors[-1]) > 1 and axis not in DCN_AXES:
            raise ParplanError(f"{what}: only {' and '.join(DCN_AXES)} cross slices over the data-centre network, "
                               f"not {axis}")
    for i, name in enumerate(names):
        used = _prod(f[i] for _, f in tmap)
        if int(used) != whole[i]:
            kind = "the slices" if name == DCN else f"torus axis {name}"
            raise ParplanError(f"{what}: {kind} holds {whole[i]} but the axes laid over it take {int(used)}; "
                               f"every {'slice' if name == DCN else 'chip'} must be used once")


@functools.lru_cache(maxsize=1024)
def _columns(side: int, k: int) -> tuple:
    """Every ordered way to split a torus axis of ``side`` chips among ``k`` mesh axes."""
    if k == 1:
        return ((side,),)
    return tuple((f, *rest) for f in range(1, side + 1) if side % f == 0 for rest in _columns(side // f, k - 1))


def enumerate_maps(sizes: dict, cluster) -> list[tuple]:
    """Every distinct map of the mesh ``sizes`` (axis -> size, in mesh order) onto ``cluster``'s slices.

    Torus axes of equal side and wraparound are interchangeable, so of maps that differ only by
    swapping them the one whose columns (each torus axis's factors) fall in order counts. Ordered
    best-first by :func:`_rank_key` (the default map first)."""
    return list(_enumerate(tuple(sizes.items()), tuple(cluster.slice_shape), cluster.slices,
                           tuple(cluster.wraps)))


@functools.lru_cache(maxsize=4096)
def _enumerate(items: tuple, shape: tuple, slices: int, wraps: tuple) -> tuple:
    sizes = dict(items)
    axes = list(sizes)
    dcn_axes = [a for a in axes if a in DCN_AXES and sizes[a] > 1]
    twin = [next((e for e in range(d - 1, -1, -1) if (shape[e], wraps[e]) == (shape[d], wraps[d])), None)
            for d in range(len(shape))]
    found = []
    for split in _dcn_splits(slices, dcn_axes, sizes):
        rest = tuple(sizes[a] // split.get(a, 1) for a in axes)
        if _prod(rest) != _prod(shape):
            continue
        for cols in _lay(rest, shape, twin, 0, ()):
            rows = list(zip(*cols)) if cols else [() for _ in axes]
            found.append(tuple((a, (*row, split.get(a, 1))) for a, row in zip(axes, rows)))
    view = _ClusterView(shape, slices, wraps)
    return tuple(sorted(found, key=lambda m: _rank_key(m, view)))


class _ClusterView:
    """The slice geometry :func:`_rank_key` reads, for the cached enumeration."""

    def __init__(self, shape, slices, wraps):
        self.slice_shape, self.slices, self.wraps = shape, slices, wraps


def _lay(rest: tuple, shape: tuple, twin: list, d: int, cols: tuple):
    """Columns for torus axes ``d`` onwards that finish laying ``rest`` (each mesh axis's chips still to
    place); a torus axis interchangeable with an earlier one takes a column no later in order than its."""
    anchors = tuple(cols[e] if e is not None and e < d else None for e in twin[d:])
    for tail in _completions(rest, shape, tuple(twin), d, anchors):
        yield cols + tail


@functools.lru_cache(maxsize=65536)
def _completions(rest: tuple, shape: tuple, twin: tuple, d: int, anchors: tuple) -> tuple:
    """The column tuples for torus axes ``d`` onwards (cached: many mesh shapes share a remainder)."""
    if d == len(shape):
        return ((),) if all(r == 1 for r in rest) else ()
    options = ((rest,) if _prod(rest) == shape[d] else ()) if d == len(shape) - 1 else _columns(shape[d], len(rest))
    out = []
    for col in options:
        if any(r % f for r, f in zip(rest, col)) or (anchors[0] is not None and col > anchors[0]):
            continue
        later = tuple(col if e == d else a for e, a in zip(twin[d + 1:], anchors[1:]))
        for tail in _completions(tuple(r // f for r, f in zip(rest, col)), shape, twin, d + 1, later):
            out.append((col, *tail))
    return tuple(out)


def _dcn_splits(slices: int, axes: list, sizes: dict):
    if slices == 1:
        yield {}
        return
    for combo in itertools.product(*[[f for f in range(1, slices + 1) if slices % f == 0 and sizes[a] % f == 0]
                                     for a in axes]):
        if _prod(combo) == slices:
            yield dict(zip(axes, combo))


def _rank_key(tmap, cluster):
    """Innermost axes first, each wanting the most ICI bandwidth and no slice crossing: JAX lays the most
    network-intensive (last-listed) logical axis over the physical axes first (jax.experimental.mesh_utils.
    create_device_mesh: mesh_shape "ordered by increasing network-intensity")."""
    key, inner = [], [1] * len(cluster.slice_shape)
    for _, factors in tmap:
        bw = 0.0
        for d, f in enumerate(factors[:-1]):
            if f > 1:  # axis_bandwidth at unit link rate, in plain floats (this runs for every map)
                ring = cluster.wraps[d] and f * inner[d] == cluster.slice_shape[d]
                bw += f / (inner[d] * (f // 2 if ring else f - 1))
            inner[d] *= f
        key += [factors[-1], -bw]
    return tuple(key)


def _group_of(factors, strides, cluster) -> TorusGroup:
    sizes = tuple(factors[:-1])
    rings = tuple(bool(w) and int(n) * int(s) == side and int(n) > 1
                  for n, s, side, w in zip(sizes, strides, cluster.slice_shape, cluster.wraps))
    return TorusGroup(sizes, tuple(strides), rings, factors[-1])


def default_map(sizes: dict, cluster) -> tuple:
    """The first map of :func:`enumerate_maps` (the innermost axis on the most bandwidth), or an error."""
    maps = enumerate_maps(sizes, cluster)
    if not maps:
        raise ParplanError(no_map_reason(sizes, cluster))
    return maps[0]


def no_map_reason(sizes: dict, cluster) -> str:
    shape = format_shape(cluster.slice_shape)
    laid = ", ".join(f"{a}={n}" for a, n in sizes.items() if n > 1) or "the mesh"
    cross = f"; across the {cluster.slices} slices only {' and '.join(DCN_AXES)}" if cluster.slices > 1 else ""
    return (f"{laid} cannot be laid over the {shape} slice{'s' if cluster.slices > 1 else ''}: each mesh axis "
            f"takes factors of the torus sides {', '.join(map(str, cluster.slice_shape))}{cross}")


def group_on_torus(size, stride, layout, cluster) -> TorusGroup:
    """Where a group of ``size`` ranks ``stride`` apart in device order lies (arrays allowed).

    Device order counts each mesh axis's torus factors (``x, y, z, dcn``) in mesh order, innermost
    first; the group covers the digits from ``stride`` to ``stride * size``, taking part of a
    digit where it starts or stops inside one (HSDP's shard and replica groups inside dp)."""
    tmap = layout.torus_map
    dims = len(cluster.slice_shape)
    size, stride = np.asarray(size, float), np.asarray(stride, float)
    lo_all, hi_all = stride, stride * size
    counts = [np.ones_like(size) for _ in range(dims + 1)]
    strides = [np.ones_like(size) for _ in range(dims)]
    started = [np.zeros(size.shape, bool) for _ in range(dims)]
    before = [np.ones_like(size) for _ in range(dims)]
    radix = np.ones_like(size)
    for _, factors in tmap:
        for d in range(dims + 1):
            f = np.asarray(factors[d], float)
            lo, hi = np.maximum(radix, lo_all), np.minimum(radix * f, hi_all)
            count = np.where(hi > lo, hi / lo, 1.0)
            counts[d] = counts[d] * count
            if d < dims:
                first = (count > 1) & ~started[d]
                strides[d] = np.where(first, before[d] * lo / radix, strides[d])
                started[d] = started[d] | (count > 1)
                before[d] = before[d] * f
            radix = radix * f
    sizes = tuple(np.rint(c) for c in counts[:dims])
    rings = tuple(np.asarray(w, bool) & (n * s == side) & (n > 1)
                  for n, s, side, w in zip(sizes, strides, cluster.slice_shape, cluster.wraps))
    return TorusGroup(sizes, tuple(strides), rings, np.rint(counts[dims]))
