"""parplan's predictions for the multi-GPU check scripts: sharded layers, FSDP traffic beside a layer's
compute, and a ring context-parallel attention rank. Pure parplan (no torch), so the tables can be
predicted again with any profile on a machine without GPUs.

``hw`` is what ``--hw`` takes: a profile name, a (calibrated) profile file, or a cluster file, whose
links (``in_switch_reduction: false``) the prediction keeps.
"""
from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.getcwd())
from parplan.cost.contention import class_seconds, exposed_s, slowdown  # noqa: E402
from parplan.layouts.layout import Layout  # noqa: E402
from parplan.specs.cluster import Cluster, load_cluster, make_cluster  # noqa: E402
from parplan.specs.framework import resolve_software  # noqa: E402
from parplan.specs.framework_loader import load_framework  # noqa: E402
from parplan.specs.model import ModelSpec, model_from_dict  # noqa: E402
from parplan.step.train import estimate  # noqa: E402

LAYOUT_NAME = re.compile(r"^(?:tp(?P<tp>\d+)(?P<sp>-sp)?|fsdp(?P<dp>\d+)(?:-tp(?P<tp2>\d+))?|one_device|tp|fsdp)$")


def cluster_for(hw: str, devices: int) -> Cluster:
    """``devices`` GPUs of one node of the profile (or cluster file) ``hw``, with its links."""
    base = load_cluster(hw)
    return make_cluster(base.hardware, devices, devices_per_node=max(devices, base.hardware.devices_per_node),
                        intra_node=base.intra_node, inter_node=base.inter_node)


def one_layer(model: ModelSpec) -> ModelSpec:
    """The model's layer alone: one layer, no positions, an 8-token vocabulary (no embedding or head to speak of)."""
    return model_from_dict(dict(name=model.name, layers=1, hidden=model.hidden, heads=model.heads,
                                kv_heads=model.kv_heads, head_dim=model.head_dim, ffn_hidden=model.ffn_hidden,
                                activation=model.activation, vocab=8, seq_len=model.seq_len, position="none",
                                bias=False), "one layer")


def layout_axes(name: str, world: int) -> tuple[int, bool, int]:
    """(tp, sequence parallel, FSDP degree) of a layer layout's name: ``one_device``, ``tp4``, ``tp4-sp``,
    ``fsdp8``, ``fsdp4-tp2``; ``tp`` and ``fsdp`` (older runs) span the world."""
    m = LAYOUT_NAME.match(name)
    if m is None:
        raise ValueError(f"unknown layer layout {name!r}")
    if name == "one_device":
        return 1, False, 1
    if name == "tp":
        return world, False, 1
    if name == "fsdp":
        return 1, False, world
    if m.group("tp"):
        return int(m.group("tp")), bool(m.group("sp")), 1
    return int(m.group("tp2") or 1), False, int(m.group("dp"))


def _software(framework: str | None, cluster: Cluster, dtype: str):
    if framework is None:
        return None
    return resolve_software(load_framework(framework), dtype=dtype, device_kind=cluster.hardware.kind)


def predict_layers(hw: str, model: ModelSpec, world: int, batch: int, dtype: str, layouts,
                   framework: str | None = None) -> dict[str, tuple[float, float]]:
    """Forward and backward seconds of one layer per layout, each rank holding ``batch`` sequences.

    One layer has nothing to overlap its collectives with: tensor-parallel all-reduces (or, with
    sequence parallel, all-gathers and reduce-scatters) sit between its GEMMs, and FSDP's all-gather
    must end before its compute starts (forward, and again backward after the forward resharded),
    its gradients' reduce-scatter after it ends. So each time is the layer's compute plus its calls.
    """
    single = one_layer(model)
    out = {}
    for name in layouts:
        tp, sp, dp = layout_axes(name, world)
        cluster = cluster_for(hw, tp * dp)
        lay = Layout(tp=tp, dp=dp, sp=sp, zero=3 if dp > 1 else 0, micro_batch=batch, global_batch=batch * dp,
                     dtype=dtype)
        est = estimate(single, cluster, lay, dropout=False, software=_software(framework, cluster, dtype))
        fwd, bwd = float(est.layer_forward_s), float(est.layer_backward_s)
        for c in est.collectives:
            col = c.collective
            calls = float(col.count) * float(c.calls_per_step > 0)
            if col.axis == "tp" and col.per == "layer" and col.phase in ("forward", "backward"):
                if col.phase == "forward":
                    fwd += float(c.time_s) * calls
                else:
                    bwd += float(c.time_s) * calls
            elif col.name == "fsdp_allgather_fwd":
                fwd += float(c.time_s) * calls
            elif col.name in ("fsdp_allgather_bwd", "fsdp_grad_reduce_scatter"):
                bwd += float(c.time_s) * calls
        out[name] = (fwd, bwd)
    return out


def fsdp_traffic(hw: str, model: ModelSpec, world: int, tokens: int, dtype: str,
                 framework: str | None = None) -> dict:
    """What FSDP over ``world`` GPUs runs beside one layer of ``tokens`` tokens, as parplan prices it.

    Forward: the next layer's all-gather beside this layer's forward; backward: the previous layer's
    all-gather and this layer's gradient reduce-scatter beside its backward. ``window_*_s`` is the
    layer's compute alone (one device), ``link_*_s`` the collectives alone, ``slowdown_*`` the compute's
    slowdown while they run (the profile's ``overlap`` table at the SMs an NVLink collective holds,
    weighted by the layer's op-class mix), ``exposed_*_s`` parplan's exposed time, with no first-layer
    floor (both start together): ``max(L - W, L s / (1 + s))``.
    """
    single = one_layer(model)
    cluster = cluster_for(hw, world)
    sw = _software(framework, cluster, dtype)
    est = estimate(single, cluster, Layout(dp=world, zero=3, micro_batch=1, global_batch=world, seq_len=tokens,
                                           dtype=dtype), dropout=False, software=sw)
    coll = {c.collective.name: c for c in est.collectives}
    ag, agb, rs = coll["fsdp_allgather_fwd"], coll["fsdp_allgather_bwd"], coll["fsdp_grad_reduce_scatter"]
    out = dict(allgather_bytes=float(ag.collective.size_bytes), reduce_scatter_bytes=float(rs.collective.size_bytes),
               allgather_s=float(ag.time_s), reduce_scatter_s=float(rs.time_s),
               window_fwd_s=float(est.layer_forward_s), window_bwd_s=float(est.layer_backward_s))
    out["link_fwd_s"] = out["allgather_s"]
    out["link_bwd_s"] = float(agb.time_s) + out["reduce_scatter_s"]
    hwp = cluster.hardware
    for side, which in (("fwd", 0), ("bwd", 1)):
        s = float(slowdown(hwp, "scale_up", class_seconds(est.ops, est.op_times, which)))
        out[f"slowdown_{side}"] = s
        out[f"exposed_{side}_s"] = float(exposed_s(out[f"link_{side}_s"], out[f"window_{side}_s"], 0.0, s))
    return out


def overlap_exposed_s(link_s: float, window_s: float, slow: float) -> float:
    """parplan's exposed seconds of ``link_s`` of collectives beside ``window_s`` of compute slowed by ``slow``."""
    return float(exposed_s(link_s, window_s, 0.0, slow))


def predict_ring(hw: str, model: ModelSpec, cp: int, seq: int, batch: int, dtype: str,
                 framework: str = "torchtitan") -> dict:
    """A ring context-parallel rank's attention, forward and backward, as parplan composes it: the
    attention kernels at the local length, the merges of the partial outputs, and what of the ring's
    KV (forward) and KV + dKV (backward) transfers outlasts the kernels they hide under."""
    single = one_layer(model)
    cluster = cluster_for(hw, cp)
    sw = _software(framework, cluster, dtype)
    est = estimate(single, cluster, Layout(cp=cp, cp_mode="ring", micro_batch=batch, global_batch=batch, seq_len=seq,
                                           dtype=dtype), dropout=False, software=sw)
    attn = [t for op, t in zip(est.ops, est.op_times) if op.attention_core]
    merges = [t for op, t in zip(est.ops, est.op_times) if op.name == "cp_ring_merges"]
    out = {}
    for side, which in (("fwd", 0), ("bwd", 1)):
        kernel = sum(float(t[which]) for t in attn)
        merge = sum(float(t[which]) for t in merges)
        name = "cp_ring_kv_fwd" if side == "fwd" else "cp_ring_kv_dkv_bwd"
        ring = sum(float(c.time_s) * float(c.collective.count) for c in est.collectives if c.collective.name == name)
        out[f"kernels_{side}_s"], out[f"merges_{side}_s"], out[f"ring_{side}_s"] = kernel, merge, ring
        out[f"{side}_s"] = kernel + merge + max(0.0, ring - kernel)
    return out
