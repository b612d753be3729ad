"""Collective communication cost: alpha-beta per algorithm on a topology-aware group.

Conventions follow nccl-tests ``doc/PERFORMANCE.md``: a collective of ``size_bytes``
``S`` over ``n`` ranks takes time ``t``; its algorithm bandwidth is ``S / t`` and its
bus bandwidth ``algbw * factor`` with factor ``2(n-1)/n`` for all-reduce, ``(n-1)/n``
for all-gather, reduce-scatter and all-to-all, 1 for broadcast, reduce and send/recv. A
``dispatch`` is an MoE token all-to-all as DeepEP runs it (:func:`dispatch_time_s`).
``S`` is the whole buffer: the all-gather *output*, the reduce-scatter *input*.

The bus bandwidth a ring can sustain is the slowest link class it crosses:
inside a node the scale-up link (NVLink), across nodes the network. A group with
``local`` members in each of ``nodes`` nodes drives ``local`` NICs per node in
parallel (NCCL builds one ring per NIC), so its cross-node bus bandwidth is
``local * network-per-device`` (NVIDIA/nccl issue 812: 8 x 24 GB/s = 192 GB/s
on DGX A100). This is also the fair share when several groups of one mesh axis
communicate at once: each group owns ``local`` of the node's NICs.

A cluster file may group the nodes into pods of full bisection (``pod_devices``) under a layer
``oversubscription`` times thinner than the pods' NICs (a leaf-spine fabric tapered above the pods:
Meta's RoCE AI zones, Gangidi et al., SIGCOMM 2024, Sec. 3). Traffic that leaves a pod shares the
pod's uplinks, a ``1 / oversubscription`` share of each device's NIC rate when every rank of an axis
sends at once, as a mesh axis's groups do: a ring or all-to-all spanning pods is bounded by that.

Latency follows NCCL's tuner model (``src/graph/tuning.cc``): a base latency plus
a per-step latency for each ring step, intra- or inter-node; the double binary
tree replaces the ``2(N-1)`` inter-node ring steps of an all-reduce by ``2 log2 N``.

These are GPU (and other node-based) clusters; a TPU slice prices a collective by the torus axes
its group lies on, in :mod:`parplan.cost.torus`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParplanError
from ..specs.cluster import Cluster
from .moe import hit_probability

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce", "send_recv")
PRICED_OPS = OPS + ("dispatch",)   # a DeepEP dispatch is priced (dispatch_time_s), not benchmarked

# In-switch (NVLS / SHARP) all-reduce: algbw ~275 GB/s of 450 GB/s line rate on 8 H100
# (NVIDIA/nccl-tests issue 212, sjeaugey).
IN_SWITCH_ALGBW_FRACTION = 0.61


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw/algbw factor: the bytes each rank moves per byte of buffer."""
    if n <= 1 and op != "send_recv":
        return 0.0
    return float(_bus_factor_array(op, n))


@dataclass(frozen=True)
class Placement:
    """Where a group's ranks sit: ``local`` members in each of ``nodes`` nodes (arrays allowed)."""

    size: Any
    local: Any
    nodes: Any
    per_pod: Any = None   # members in each pod the group spans (None: one pod holds the group)

    @property
    def spans_nodes(self):
        return np.asarray(self.nodes) > 1


def place(size, stride, cluster: Cluster) -> Placement:
    """Placement of a group of ``size`` ranks ``stride`` apart in device order.

    Devices are numbered node by node; a mesh axis whose inner axes multiply to
    ``stride`` has its ranks ``stride`` apart (contiguous when stride is 1).
    """
    size, stride = np.asarray(size), np.asarray(stride)
    if np.any(size < 1) or np.any(stride < 1):
        raise ParplanError("group size and stride must be positive")
    domain = cluster.scale_up_domain if cluster.hardware.torus is None else cluster.devices_per_node
    local = _members_within(size, stride, domain)
    pod = cluster.pod_devices
    per_pod = _members_within(size, stride, pod) if pod is not None and cluster.hardware.torus is None else None
    return Placement(size=size, local=local, nodes=size // local, per_pod=per_pod)


def _members_within(size, stride, block):
    """Members of a group of ``size`` ranks ``stride`` apart that share one aligned block of ``block`` devices."""
    within = np.where(stride >= block, 1, np.maximum(1, np.minimum(size, block // np.maximum(stride, 1))))
    return np.gcd(within, size)


def _uplink_share(placement: Placement, cluster: Cluster):
    """1 where the group stays in one pod, else the pods' uplink share of a NIC (1 / oversubscription)."""
    if placement.per_pod is None:
        return 1.0
    spans_pods = np.asarray(placement.size) > np.asarray(placement.per_pod)
    return np.where(spans_pods, 1.0 / cluster.oversubscription, 1.0)


def bus_bandwidth(placement: Placement, cluster: Cluster):
    """Sustained bus bandwidth (bytes/s per rank) of a ring over this placement."""
    intra = cluster.intra_node.effective_bandwidth
    size = np.asarray(placement.size, float)
    within = intra + 0 * size
    cross = np.asarray(placement.local) * cluster.inter_node.effective_bandwidth * _uplink_share(placement, cluster)
    return np.where(placement.spans_nodes, np.minimum(within, cross), within)


def latency_s(op: str, placement: Placement, cluster: Cluster):
    """Alpha: base latency plus per-step latencies; the cheaper of ring and tree for all-reduce."""
    n = np.asarray(placement.size, float)
    nodes = np.asarray(placement.nodes, float)
    local = np.asarray(placement.local, float)
    base = cluster.hardware.collective_overhead_s
    intra, inter = cluster.intra_node.latency_s, cluster.inter_node.latency_s
    if op == "send_recv":
        return base + np.where(nodes > 1, inter, intra)
    k = 2.0 if op == "all_reduce" else 1.0
    ring = base + k * ((n - 1) - (nodes - 1)) * intra + k * (nodes - 1) * inter
    if op == "all_reduce":
        tree = base + 2 * ((local - 1) * intra + np.ceil(np.log2(np.maximum(nodes, 1))) * inter)
        ring = np.where(nodes > 1, np.minimum(ring, tree), ring)
    return np.where(n > 1, ring, 0.0)


def _measured_fit(op: str, placement: Placement, cluster: Cluster):
    """Calibrated (alpha, busbw) for this op with the nearest measured group size, or None."""
    fits = [f for f in cluster.hardware.collective_fits if f.op == op]
    if not fits:
        return None
    size = np.asarray(placement.size, float)
    spans = placement.spans_nodes
    alpha = np.full(np.broadcast(size, spans).shape, np.nan)
    bw = np.full_like(alpha, np.nan)
    best = np.full_like(alpha, np.inf)
    for f in fits:
        match = spans if f.group == "inter" else ~spans
        dist = np.abs(np.log(f.ranks / np.maximum(size, 1)))
        take = match & (dist < best)
        alpha, bw, best = np.where(take, f.alpha_s, alpha), np.where(take, f.busbw, bw), np.where(take, dist, best)
    return alpha, bw


def collective_time_s(op: str, size_bytes, placement: Placement, cluster: Cluster, fanout=None):
    """Time of one collective of ``size_bytes`` (nccl-tests buffer size) over ``placement``; ``fanout``: a
    ``dispatch``'s (top_k, experts, etp) (:func:`dispatch_time_s`)."""
    if op == "dispatch" and fanout is None:
        raise ParplanError("an MoE token dispatch is priced from its (top_k, experts, etp); none was given")
    size_bytes = np.asarray(size_bytes, float)
    if np.any(size_bytes < 0):
        raise ParplanError("collective size must be non-negative")
    if cluster.is_torus:
        raise ParplanError(f"{cluster.hardware.name} is a TPU torus: its collectives are priced by the torus axes "
                           f"each group lies on (parplan.cost.torus), not by nodes")
    n = np.asarray(placement.size)
    factor = _bus_factor_array(op, n)
    alpha = latency_s(op, placement, cluster)
    spans = placement.spans_nodes
    if op == "send_recv":
        inter = cluster.inter_node.effective_bandwidth * _uplink_share(placement, cluster)
        bw = np.where(spans, inter, cluster.intra_node.effective_bandwidth)
        t = alpha + size_bytes / bw
    elif op == "dispatch":
        t = alpha + dispatch_time_s(size_bytes, placement, cluster, *fanout)
    elif op == "all_to_all":
        local = np.asarray(placement.local, float)
        # Each rank keeps 1/n, sends (local-1)/n over the scale-up link and (n-local)/n over its NIC, of which
        # the (n-per_pod)/n bound for other pods also crosses the pods' uplinks.
        off_node = size_bytes * (n - local) / n / cluster.inter_node.effective_bandwidth
        on_node = size_bytes * (local - 1) / n / cluster.intra_node.effective_bandwidth
        if placement.per_pod is not None:
            off_pod = size_bytes * (n - np.asarray(placement.per_pod, float)) / n * cluster.oversubscription / \
                cluster.inter_node.effective_bandwidth
            off_node = np.maximum(off_node, off_pod)
        t = alpha + np.where(spans, np.maximum(off_node, on_node), size_bytes * factor / bus_bandwidth(placement, cluster))
    else:
        t = alpha + size_bytes * factor / bus_bandwidth(placement, cluster)
        if op == "all_reduce" and cluster.intra_node.in_switch_reduction:
            nvls = alpha + size_bytes / (cluster.intra_node.bandwidth * IN_SWITCH_ALGBW_FRACTION)
            t = np.where(spans, t, np.minimum(t, nvls))
    fit = _measured_fit(op, placement, cluster)
    if fit is not None:
        f_alpha, f_bw = fit
        measured = f_alpha + size_bytes * factor / (f_bw * np.where(spans, _uplink_share(placement, cluster), 1.0))
        t = np.where(np.isnan(f_alpha), t, measured)
    return np.where((n > 1) | (op == "send_recv"), t, 0.0)


def dispatch_time_s(size_bytes, placement: Placement, cluster: Cluster, top_k, experts, etp=1):
    """Bandwidth time of DeepEP's dispatch (or combine) of ``size_bytes`` of token copies, ``top_k`` per token,
    over ``placement`` (deepseek-ai/DeepEP README; DeepSeek-V3, arXiv 2412.19437, Sec. 3.2.2).

    A token goes once to each node holding one of its experts, over the NIC to the rank of the same
    local index, which forwards it over NVLink to each rank there that holds one; inside a node, once to
    each such rank. Of ``n`` ranks, ``g`` per node and ``N = n / g`` nodes, with ``E / n`` experts each
    and :func:`parplan.cost.moe.hit_probability` ``p_r`` (a rank's) and ``p_N`` (a node's), a rank's
    ``T = size / k`` bytes of tokens cost ``T (N - 1) p_N`` over its NIC (those bound for other pods also
    over the pods' uplinks, as the all-to-all's) and ``T N (g - 1) p_r`` over NVLink (its own tokens and
    those it forwards); the two stream concurrently, so the longer one is the time. With expert tensor
    parallelism (``n = ep etp``) a rank holds a shard of ``E / ep`` experts and every shard of an expert gets
    its tokens; a node of ``g >= etp`` ranks holds ``g / etp`` ranks' worth of whole experts. The all-to-all
    instead sends every copy: ``size (n - g) / n`` over the NIC and ``size (g - 1) / n`` over NVLink."""
    n, g = np.asarray(placement.size, float), np.asarray(placement.local, float)
    nodes = n / g
    tokens = np.asarray(size_bytes, float) / top_k
    per_rank = experts * etp / n
    p_rank = hit_probability(experts, top_k, per_rank)
    p_node = hit_probability(experts, top_k, per_rank * np.maximum(g / etp, 1.0))
    nic = cluster.inter_node.effective_bandwidth
    off = tokens * (nodes - 1) * p_node / nic
    if placement.per_pod is not None:
        off_pod = tokens * (n - np.asarray(placement.per_pod, float)) / g * p_node * cluster.oversubscription / nic
        off = np.maximum(off, off_pod)
    on = tokens * nodes * (g - 1) * p_rank / cluster.intra_node.effective_bandwidth
    return np.maximum(off, on)


def _bus_factor_array(op: str, n):
    if op not in PRICED_OPS:
        raise ParplanError(f"unknown collective '{op}'; choose one of {', '.join(OPS)}")
    n = np.maximum(np.asarray(n, float), 1)
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all", "dispatch"):
        return (n - 1) / n
    return np.ones_like(n)


def algbw(size_bytes: float, time_s: float) -> float:
    """nccl-tests algorithm bandwidth: bytes/s of buffer."""
    return size_bytes / time_s if time_s > 0 else float("inf")


def busbw(op: str, n: int, size_bytes: float, time_s: float) -> float:
    """nccl-tests bus bandwidth: algbw times the op's bus factor."""
    return algbw(size_bytes, time_s) * bus_factor(op, n)
