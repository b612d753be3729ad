"""Collectives on a TPU torus and across slices: the per-axis cost of the JAX scaling book.

A group's chips lie along some axes of the slice torus (:class:`TorusGroup`: per torus axis, how
many chips, how far apart, whether they close a ring) and, for a multi-slice job, across slices
over the data-centre network (DCN). Times follow "How to Scale Your Model" (Austin et al., the JAX
scaling book), Part 3 "Sharded Matrices":

* Case 2, "How long does this take?": a bidirectional AllGather along one axis of ``|X|`` chips
  with a wraparound takes ``|X|/2`` hops of ``V/|X|`` bytes each way, ``T_total = V / W_ICI`` with
  ``W_ICI`` the axis's bidirectional bandwidth (two links one way). Without the wraparound (a line:
  slices of less than a full cube, v5e axes under 16) the data from one end crosses ``|X| - 1``
  links, ``T = (|X|-1) V / (|X| W)`` at one link's one-way ``W`` (Pop Quiz 2: "3 * 8.4e6 / 4.5e10 =
  560us"). Both are ``k V / (n W)`` with ``k`` the hops; :func:`axis_bandwidth` is ``n W / k``.
* Case 2, "What happens when we AllGather over multiple axes?": ``T_total = max[T_min * sum_i
  |X_i| / 2, V / (W_ICI * n_axes)]``, the bandwidths of the axes adding, the hop latency ``T_min``
  (about 1 us) over the longest path.
* Case 3 and "A Deeper Dive into TPU Communication Primitives": ``T(ReduceScatter) = T(AllGather)
  = V / W_ICI``, ``T(AllReduce) = 2 V / W_ICI``, and an AllToAll "AllGather / 4 for a bidirectional
  ring" (of the same array: each chip's buffer times the group size).
* Chips spaced ``s`` apart along a torus axis (the outer part of an axis split between two mesh
  axes) share each link with ``s - 1`` other groups of the same mesh axis: ``W / s`` each, and
  ``s`` hops per step (the hop count above, over ``s`` links per step).

Across slices the collective is hierarchical, as XLA runs multi-slice collectives: within each
slice over ICI, then across slices over DCN on the chip's share of the host NICs (Part 5
"Training": "To go larger than one pod, we need to scale over DCN"; data parallelism across pods
costs the per-pod batch over ``C_pod / W_dcn``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParplanError

DCN_LINK = 8  # bit of the data-centre network in a group's link mask (torus axes take bits 0-2)


@dataclass(frozen=True)
class TorusGroup:
    """Where a group's chips lie: per torus axis ``sizes`` chips ``strides`` apart (``rings``: they close
    a ring through the wraparound), and ``dcn`` slices. Fields may be numpy arrays (one per candidate)."""

    sizes: tuple
    strides: tuple
    rings: tuple
    dcn: Any = 1

    @property
    def size(self):
        n = np.asarray(self.dcn)
        for s in self.sizes:
            n = n * np.asarray(s)
        return n

    @property
    def ici_size(self):
        n = np.asarray(1)
        for s in self.sizes:
            n = n * np.asarray(s)
        return n

    @property
    def spans_nodes(self):
        """Whether it crosses slices (runs over the data-centre network)."""
        return np.asarray(self.dcn) > 1

    @property
    def links(self):
        """Bit mask of the link classes it uses: torus axis ``d`` is bit ``d``, the DCN :data:`DCN_LINK`."""
        mask = np.where(np.asarray(self.dcn) > 1, DCN_LINK, 0)
        for d, s in enumerate(self.sizes):
            mask = mask | np.where(np.asarray(s) > 1, 1 << d, 0)
        return mask


def hops(n, stride, ring):
    """Link hops of one ring step's data to reach every chip: ``n // 2`` around a ring, ``n - 1`` along a
    line, times the spacing of the chips (scaling book, "How is an AllGather actually performed?")."""
    n = np.asarray(n, float)
    k = np.where(np.asarray(ring, bool), np.floor(n / 2), n - 1)
    return np.where(n > 1, k * np.asarray(stride, float), 0.0)


def axis_bandwidth(n, stride, ring, link_bandwidth):
    """Bytes/s an AllGather of ``V`` bytes along one torus axis moves: ``T = V / axis_bandwidth``.

    ``n W / (s k)``: ``k`` steps of ``V / n`` bytes each way over links of ``W`` one way, shared by the
    ``s`` groups interleaved along the axis; ``2 W`` (the book's ``W_ici``) on a full ring."""
    n = np.asarray(n, float)
    s = np.asarray(stride, float)
    k = np.where(np.asarray(ring, bool), np.floor(n / 2), n - 1)
    return np.where(n > 1, n * link_bandwidth / (s * np.maximum(k, 1)), 0.0)


def _ici(group: TorusGroup, link_bandwidth: float, hop_s: float):
    """(bandwidth summed over the group's torus axes, hop latency over its longest path)."""
    bw = np.float64(0.0)
    lat = np.float64(0.0)
    for n, s, r in zip(group.sizes, group.strides, group.rings):
        bw = bw + axis_bandwidth(n, s, r, link_bandwidth)
        lat = lat + hops(n, s, r) * hop_s
    return bw, lat


def torus_collective_time_s(op: str, size_bytes, group: TorusGroup, cluster):
    """Time of one collective of ``size_bytes`` (nccl-tests' buffer: the AllGather output, the
    ReduceScatter input, each rank's AllToAll buffer) over ``group`` on a TPU ``cluster``.

    ICI: the book's per-axis cost (module docstring) at the profile's link bandwidth times its
    measured ICI efficiency, ``max(hop latency, bytes / bandwidth)`` plus the fixed cost of one
    collective. DCN: a ring over the slices on the chip's DCN bandwidth, after the slice's ICI part
    (AllGather: the chip's ``V / n_ici`` gathered across slices; AllReduce: reduce-scatter in the
    slice, all-reduce of ``V / n_ici`` across slices, all-gather in the slice)."""
    hw = cluster.hardware
    if hw.torus is None:
        raise ParplanError(f"{hw.name} has no torus")
    v = np.asarray(size_bytes, float)
    if np.any(v < 0):
        raise ParplanError("collective size must be non-negative")
    w_link = hw.torus.link_bandwidth * cluster.intra_node.efficiency
    bw, lat = _ici(group, w_link, cluster.intra_node.latency_s)
    n_ici = np.asarray(group.ici_size, float)
    n_dcn = np.asarray(group.dcn, float)
    dcn_bw = cluster.inter_node.effective_bandwidth
    dcn_lat = cluster.inter_node.latency_s
    safe_bw = np.where(bw > 0, bw, 1.0)
    on_ici = n_ici > 1
    ring_dcn = (n_dcn - 1) / np.maximum(n_dcn, 1)
    if op == "send_recv":
        first = _first_axis(group, w_link)
        t = np.where(n_dcn > 1, dcn_lat + v / dcn_bw, cluster.intra_node.latency_s + v / first)
        return hw.collective_overhead_s + t
    if op in ("all_gather", "reduce_scatter", "broadcast", "reduce"):
        ici = np.where(on_ici, np.maximum(lat, v / safe_bw), 0.0)
        dcn = np.where(n_dcn > 1, (n_dcn - 1) * dcn_lat + ring_dcn * v / n_ici / dcn_bw, 0.0)
    elif op == "all_reduce":
        ici = np.where(on_ici, np.maximum(2 * lat, 2 * v / safe_bw), 0.0)
        dcn = np.where(n_dcn > 1, 2 * (n_dcn - 1) * dcn_lat + 2 * ring_dcn * v / n_ici / dcn_bw, 0.0)
    elif op == "all_to_all":
        # A quarter of an AllGather of the group's whole array (n x each rank's buffer) on the slice's
        # share of the buffer; the part bound for other slices crosses DCN at the same time.
        ici = np.where(on_ici, np.maximum(lat, (v / n_dcn) * n_ici / (4 * safe_bw)), 0.0)
        dcn = np.where(n_dcn > 1, (n_dcn - 1) * dcn_lat + v * ring_dcn / dcn_bw, 0.0)
        t = hw.collective_overhead_s + np.maximum(ici, dcn)
        return np.where(n_ici * n_dcn > 1, t, 0.0)
    else:
        raise ParplanError(f"unknown collective '{op}'")
    return np.where(n_ici * n_dcn > 1, hw.collective_overhead_s + ici + dcn, 0.0)


def _first_axis(group: TorusGroup, w_link: float):
    """One-way bandwidth to the next chip of the group: along its first torus axis, shared by the
    groups interleaved there."""
    out = None
    for n, s in zip(reversed(group.sizes), reversed(group.strides)):
        here = w_link / np.asarray(s, float)
        out = here if out is None else np.where(np.asarray(n) > 1, here, out)
    return out if out is not None else np.float64(w_link)
