"""Plain-data views of an Estimate: the stable JSON names users script against, and text tables."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..step.train import Estimate, op_table
from ..layouts.strategies import axis_names, breakdown_keys
from ..units import GIB

MFU_DEFINITION = ("model FLOPs (forward + backward matmuls, full attention, no recompute; "
                  "Korthikanti et al. 2022 / PaLM) per second over dense peak of all devices")
HFU_DEFINITION = ("hardware FLOPs (model FLOPs plus recomputed forward; Narayanan et al. 2021 eq. 3) "
                  "per second over dense peak of all devices")


def layout_dict(layout) -> dict[str, Any]:
    """The layout's fields; plug-in axes appear under their own names, after the order."""
    d = dataclasses.asdict(layout)
    d["order"] = list(layout.order)
    d.pop("axes")
    d.update(dict(layout.axes))
    return d


def estimate_dict(est: Estimate) -> dict[str, Any]:
    """The JSON object of ``parplan estimate --format json`` (names are a stable interface)."""
    hbm = est.cluster.hardware.hbm_bytes
    return {
        "model": est.model.name,
        "hardware": est.cluster.hardware.name,
        "cluster": est.cluster.name,
        "devices": est.cluster.devices,
        "layout": layout_dict(est.layout),
        "step_time_s": float(est.step_time_s),
        "tokens_per_s": float(est.tokens_per_s),
        "tokens_per_s_per_device": float(est.tokens_per_s) / est.cluster.devices,
        "tflops_per_device": float(est.tflops_per_device),
        "mfu": float(est.mfu),
        "hfu": float(est.hfu),
        "mfu_definition": MFU_DEFINITION,
        "hfu_definition": HFU_DEFINITION,
        "model_flops_per_step": float(est.model_flops_per_step),
        "hardware_flops_per_step": float(est.hardware_flops_per_step),
        "memory_bytes": {k: float(v) for k, v in est.memory_bytes.items()},
        "hbm_bytes": float(hbm),
        "headroom": est.headroom,
        "fits": bool(est.fits),
        "breakdown_s": {k: float(est.breakdown_s[k]) for k in breakdown_keys()},
        "layer": {"forward_s": float(est.layer_forward_s), "backward_s": float(est.layer_backward_s)},
    }


def collective_rows(est: Estimate) -> list[dict[str, Any]]:
    rows = []
    for c in est.collectives:
        col = c.collective
        if float(c.calls_per_step) == 0:
            continue
        rows.append({
            "name": col.name, "op": col.op, "axis": col.axis, "group": int(col.group),
            "bytes": float(col.size_bytes), "per": col.per, "phase": col.phase,
            "calls_per_step": float(c.calls_per_step), "time_s": float(c.time_s),
            "link_s": float(c.link_s), "exposed_s": float(c.exposed_s),
            "overlaps_with": col.hidden_by,
        })
    return rows


def axis_rows(est: Estimate) -> list[dict[str, Any]]:
    """Per mesh axis: time on the link, time exposed, and the bus bandwidth that would hide it.

    Only overlapped traffic (data parallel under the backward/forward passes) can be hidden;
    its required bandwidth is the bytes each rank moves over the compute it hides under.
    """
    from ..cost.collectives import bus_factor

    rows = []
    for axis in axis_names():
        costs = [c for c in est.collectives if c.collective.axis == axis and float(c.calls_per_step) > 0]
        if not costs:
            continue
        link = sum(float(c.link_s) for c in costs)
        exposed = sum(float(c.exposed_s) for c in costs)
        hideable = [c for c in costs if float(c.hide_window_s) > 0]
        needed = None
        if hideable:
            wire = sum(float(c.collective.size_bytes) * bus_factor(c.collective.op, int(c.collective.group))
                       * float(c.calls_per_step) for c in hideable)
            needed = wire / max(float(c.hide_window_s) for c in hideable)
        rows.append({"axis": axis, "link_s": link, "exposed_s": exposed,
                     "bandwidth_to_hide": needed,
                     "note": "overlapped with compute" if hideable else "critical path"})
    return rows


def explain_dict(est: Estimate) -> dict[str, Any]:
    out = estimate_dict(est)
    out["ops"] = op_table(est)
    out["collectives"] = collective_rows(est)
    out["axes"] = axis_rows(est)
    return out


def format_estimate(est: Estimate, batch_note: str | None = None) -> str:
    """The human table of ``parplan estimate``; ``batch_note`` says where the global batch came from."""
    d = estimate_dict(est)
    lay = est.layout
    lines = [
        f"{est.model.name} on {est.cluster.label} ({est.cluster.nodes} nodes x {est.cluster.devices_per_node})",
        f"layout  {lay.describe()}  global batch {lay.global_batch} x seq {lay.seq_len}  "
        f"({est.layout.micro_batches} micro-batches)  {lay.dtype}",
        *([f"        global batch: {batch_note}"] if batch_note and batch_note != "given" else []),
        *([f"        sequence length: {est.model.seq_note}"] if est.model.seq_note else []),
        "",
        f"step time          {d['step_time_s']:10.3f} s",
        f"tokens/s           {d['tokens_per_s']:10.4g}   ({d['tokens_per_s_per_device']:.4g} per device)",
        f"TFLOP/s per device {d['tflops_per_device']:10.1f}   (model FLOPs)",
        f"MFU                {d['mfu'] * 100:9.1f} %   HFU {d['hfu'] * 100:.1f} % (with recompute)",
        "",
        "time breakdown (critical path)",
    ]
    step = d["step_time_s"]
    for k, v in d["breakdown_s"].items():
        if v > 0:
            lines.append(f"  {k:<12} {v:10.3f} s  {100 * v / step:5.1f} %")
    lines += ["", f"memory per device (of {d['hbm_bytes'] / GIB:.1f} GiB HBM, {100 * est.headroom:.0f}% headroom)"]
    for k, v in d["memory_bytes"].items():
        if v > 0 or k == "total":
            lines.append(f"  {k:<17} {v / GIB:8.2f} GiB")
    lines.append(f"  fits: {'yes' if d['fits'] else 'NO'}")
    return "\n".join(lines)
