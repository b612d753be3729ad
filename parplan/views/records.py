"""Plain-data views of an Estimate: the stable JSON names users script against, and text tables."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..cost.torus import DCN_LINK
from ..layouts.torus_map import describe_map, format_map
from ..specs.slices import AXIS_NAMES
from ..step.train import Estimate
from .op_table import op_table
from ..layouts.strategies import axis_names, breakdown_keys
from ..errors import ParplanError
from ..units import GIB

MFU_CAUSAL_DEFINITION = ("MFU with only the causal half of the attention products counted: the FLOPs causal "
                         "attention kernels execute")
MFU_DEFINITION = ("model FLOPs (forward + backward matmuls, full attention, no recompute; "
                  "Korthikanti et al. 2022 / PaLM) per second over dense peak of all devices")
HFU_DEFINITION = ("hardware FLOPs (model FLOPs plus recomputed forward; Narayanan et al. 2021 eq. 3) "
                  "per second over dense peak of all devices")


def layout_dict(layout, cluster=None) -> dict[str, Any]:
    """The layout's fields; plug-in axes appear under their own names, after the order; on a TPU, ``ici``
    is the torus map in ``--ici`` syntax."""
    tmap = layout.torus_map
    d = dataclasses.asdict(dataclasses.replace(layout, torus_map=None))
    d.pop("torus_map")
    d["order"] = list(layout.order)
    d.pop("axes")
    d.update(dict(layout.axes))
    if tmap is not None and cluster is not None and cluster.is_torus:
        d["ici"] = format_map(tmap, cluster)
    return d


def torus_line(est: Estimate) -> list[str]:
    """The TPU map as a person reads it (nothing on GPUs)."""
    if not est.cluster.is_torus or est.layout.torus_map is None:
        return []
    return [f"ici     {describe_map(est.layout.torus_map, est.cluster)}",
            f"        (--ici {format_map(est.layout.torus_map, est.cluster)})"]


def estimate_dict(est: Estimate) -> dict[str, Any]:
    """The JSON object of ``parplan estimate --format json`` (names are a stable interface)."""
    hbm = est.cluster.hardware.hbm_bytes
    return {
        "model": est.model.name,
        "hardware": est.cluster.hardware.name,
        "cluster": est.cluster.name,
        "devices": est.cluster.devices,
        "layout": layout_dict(est.layout, est.cluster),
        "software": software_dict(est.software),
        "step_time_s": float(est.step_time_s),
        "tokens_per_s": float(est.tokens_per_s),
        "tokens_per_s_per_device": float(est.tokens_per_s) / est.cluster.devices,
        "tflops_per_device": float(est.tflops_per_device),
        "mfu": float(est.mfu),
        "hfu": float(est.hfu),
        "mfu_definition": MFU_DEFINITION,
        "mfu_causal": float(est.mfu_causal),
        "mfu_causal_definition": MFU_CAUSAL_DEFINITION,
        "hfu_definition": HFU_DEFINITION,
        "matmul_ceiling": float(est.cluster.hardware.matmul_efficiency),  # the best-shape matmul rate over peak
        "mfu_above_ceiling": mfu_above_ceiling(est),  # null, "full" (the convention) or "causal" (a wrong estimate)
        "model_flops_per_step": float(est.model_flops_per_step),
        "hardware_flops_per_step": float(est.hardware_flops_per_step),
        "memory_bytes": {k: float(v) for k, v in est.memory_bytes.items()},
        "hbm_bytes": float(hbm),
        "host_memory_bytes": float(est.host_memory_bytes),  # offloaded activations, per device
        "headroom": est.headroom,
        "fits": bool(est.fits),
        "breakdown_s": {k: float(est.breakdown_s[k]) for k in breakdown_keys()},
        "layer": {"forward_s": float(est.layer_forward_s), "backward_s": float(est.layer_backward_s)},
        **({"notes": list(est.notes)} if est.notes else {}),
        "pipeline_ranks": pipeline_ranks(est),
    }


def pipeline_ranks(est: Estimate) -> dict[str, Any]:
    """Per kind of pipeline rank (first, middle, last): its transformer layers and its memory (empty
    without a pipeline; no middle with two stages)."""
    if est.layout.pp == 1:
        return {}
    return {k: {"layers": int(r["layers"]), "memory_bytes": float(r["memory_bytes"])}
            for k, r in est.pipeline_ranks.items() if k != "middle" or est.layout.pp > 2}


def software_dict(sw) -> dict[str, Any]:
    """What ran the step: the framework and the choices made within it (``null`` fields: not applicable)."""
    if sw is None:
        return {}
    return {"framework": sw.name, "compiled": sw.compiled, "fp8_recipe": sw.fp8_recipe, "fp8_params": sw.fp8_params,
            "flash_attention": sw.flash_attention, "attention_kernels": list(sw.attention_kernels),
            "elementwise": dict(sw.elementwise), "loss": sw.loss, "moe_overlap": sw.moe_overlap,
            "optimizer_states": sw.optimizer_states, "moe_dispatcher": sw.moe_dispatcher, "tp_overlap": sw.tp_overlap,
            "offload_layers": sw.offload_layers, "defaults": list(sw.notes),
            "profile": sw.framework.path}


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
            "compute_slowdown_s": float(c.slowdown_s),
            "overlaps_with": col.hidden_by,
            **({"links": link_names(int(c.links))} if c.links is not None else {}),
        })
    return rows


def link_names(mask: int) -> str:
    """The torus axes (x, y, z) and DCN a TPU collective runs over, from its link mask."""
    names = [n for d, n in enumerate(AXIS_NAMES) if mask & (1 << d)] + (["dcn"] if mask & DCN_LINK else [])
    return "+".join(names) or "-"


def axis_rows(est: Estimate) -> list[dict[str, Any]]:
    """Per mesh axis: time on the link, hidden and exposed, the part of the exposed time that is the
    overlapped compute's slowdown (the SMs the collectives' kernels hold), and the bus bandwidth that
    would hide the rest.

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
        slowed = sum(float(c.slowdown_s) for c in costs)
        hideable = [c for c in costs if float(c.hide_window_s) > 0]
        needed = None
        if hideable:
            wire = sum(float(c.collective.size_bytes) * bus_factor(c.collective.op, int(c.collective.group))
                       * float(c.calls_per_step) for c in hideable)
            needed = wire / max(float(c.hide_window_s) for c in hideable)
        rows.append({"axis": axis, "link_s": link, "hidden_s": max(link - (exposed - slowed), 0.0),
                     "exposed_s": exposed, "compute_slowdown_s": slowed, "bandwidth_to_hide": needed,
                     "note": "overlapped with compute" if hideable else "critical path"})
    return rows


def explain_dict(est: Estimate) -> dict[str, Any]:
    out = estimate_dict(est)
    out["ops"] = op_table(est)
    out["collectives"] = collective_rows(est)
    out["axes"] = axis_rows(est)
    out["contention"] = contention_note(est.cluster.hardware)
    return out


def contention_note(hw) -> str:
    """One line on what overlap costs the compute on ``hw`` (empty when the profile measured nothing)."""
    c = hw.contention
    if c is None:
        return ""
    source = hw.sources.get("overlap.slowdown", "").removeprefix("[derived] ").split(" (")[0].strip()
    return (f"overlapped collectives hold {c.collective_sms['scale_up']} of {hw.compute_units} SMs on the scale-up "
            f"link, {c.collective_sms['network']} across nodes; the compute beside them slows as the profile's "
            f"overlap.slowdown says ({source or 'see the profile'})")


def mfu_above_ceiling(est: Estimate) -> str | None:
    """``causal`` when even the causal MFU exceeds what the device's matmuls reach at all (its measured
    best-shape rate, ``efficiency.matmul``): the estimate is wrong; ``full`` when only the full-attention MFU does."""
    ceiling = est.cluster.hardware.matmul_efficiency
    return "causal" if float(est.mfu_causal) > ceiling else "full" if float(est.mfu) > ceiling else None


def mfu_notes(est: Estimate, who: str = "") -> list[str]:
    """A flag when an MFU exceeds the matmul ceiling; ``who`` names the plans it is about (``#1-#3's``)."""
    ceiling, flag = est.cluster.hardware.matmul_efficiency, mfu_above_ceiling(est)
    if flag == "causal":
        return [f"note: {who}causal MFU {float(est.mfu_causal):.1%} is above the {ceiling:.0%} of peak the "
                f"{est.cluster.hardware.name}'s matmuls reach (efficiency.matmul): the estimate is wrong"]
    if flag == "full":
        return [f"note: {who}MFU {float(est.mfu):.1%} is above the {ceiling:.0%} of peak the matmuls reach because "
                f"the full-attention convention counts attention FLOPs that causal kernels skip"]
    return []


def format_estimate(est: Estimate, batch_note: str | None = None, interval=None) -> str:
    """The human table of ``parplan estimate``; ``batch_note`` says where the global batch came from, ``interval``
    (a :class:`parplan.plan.interval.Interval`) where the step time likely lies."""
    d = estimate_dict(est)
    lay = est.layout
    lines = [
        f"{est.model.name} on {est.cluster.label} ({est.cluster.nodes} node{'s' if est.cluster.nodes > 1 else ''} "
        f"of {est.cluster.devices_per_node})",
        f"layout  {lay.describe()}  global batch {lay.global_batch} x seq {lay.seq_len}  "
        f"({est.layout.micro_batches} micro-batches)  {lay.dtype}",
        *([f"software {est.software.describe()}"] if est.software is not None else []),
        *torus_line(est),
        *([f"        global batch: {batch_note}"] if batch_note and batch_note != "given" else []),
        *([f"        sequence length: {est.model.seq_note}"] if est.model.seq_note else []),
        "",
        f"step time          {d['step_time_s']:10.3f} s",
        *([f"  interval         {interval.low_s:.3g} - {interval.high_s:.3g} s   "
           f"({interval.describe().removeprefix('interval: ')})"] if interval is not None else []),
        f"tokens/s           {d['tokens_per_s']:10.4g}   ({d['tokens_per_s_per_device']:.4g} per device)",
        f"TFLOP/s per device {d['tflops_per_device']:10.1f}   (model FLOPs)",
        f"MFU                {d['mfu'] * 100:9.1f} %   full attention (PaLM App. B); {d['mfu_causal'] * 100:.1f} % "
        f"causal; HFU {d['hfu'] * 100:.1f} % (with recompute)",
        *mfu_notes(est),
        *(f"        {note}" for note in est.notes),
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
    if d["host_memory_bytes"] > 0:
        host = est.cluster.hardware.host_memory_bytes
        lines.append(f"  in host memory    {d['host_memory_bytes'] / GIB:8.2f} GiB   offloaded activations (of "
                     + (f"{host / GIB:.0f} GiB a device's share of the host)" if host else "a host size the "
                        "hardware profile does not state: not checked)"))
    lines.append(f"  fits: {'yes' if d['fits'] else 'NO'}")
    if d["pipeline_ranks"]:
        lines.append("  per pipeline rank: " + ", ".join(
            f"{k} {r['layers']} layers {r['memory_bytes'] / GIB:.2f} GiB" for k, r in d["pipeline_ranks"].items()))
    return "\n".join(lines)


def plan_budget(est: Estimate, tokens: float | None, price: float | None):
    """The time and money of training ``tokens`` at ``est``'s throughput (None without ``tokens``); the price
    is the one given, else the cluster file's."""
    from ..plan.budget import budget, check_budget_inputs

    check_budget_inputs(tokens, price)
    if tokens is None:
        if price is not None:
            raise ParplanError("--price-per-device-hour needs --tokens (the tokens to train on)")
        return None
    return budget(tokens, float(est.tokens_per_s), est.cluster.devices,
                  price if price is not None else est.cluster.price_per_device_hour)


def format_budget(b) -> str:
    cost = f", cost {b.cost:,.0f} at {b.price_per_device_hour:g} per device-hour" if b.cost is not None else \
        " (no price: --price-per-device-hour or price_per_device_hour in a cluster file)"
    days = b.time_to_train_s / 86400
    return (f"training {b.tokens:.3g} tokens: {f'{days:,.0f}' if days >= 1000 else f'{days:.3g}'} days, "
            f"{b.device_hours:,.0f} device-hours{cost}")
