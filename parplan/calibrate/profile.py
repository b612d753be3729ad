"""A calibrated hardware profile: the base profile's fields with the measured ones replaced, each value
sourced to the measurement it came from, rendered as YAML that ``--hw PATH`` loads."""
from __future__ import annotations

import copy
import datetime as _dt
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import ParplanError
from ..specs.hardware import Hardware, hardware_from_dict, hardware_names, load_hardware
from ..specs.yamlio import read_yaml
from .fit import Calibration, calibrate, in_layer_scale
from .rows import Row


def _date(rows: Sequence[Row]) -> str:
    stamps = sorted(r.timestamp[:10] for r in rows if r.timestamp)
    return stamps[0] if stamps else _dt.date.today().isoformat()


def provenance(rows: Sequence[Row]) -> str:
    """``measured by parplan bench on HOST DATE`` (and the nccl-tests logs, if any)."""
    parts = []
    bench = [r for r in rows if not r.source.startswith("nccl-tests")]
    if bench:
        hosts = ", ".join(sorted({r.host for r in bench if r.host})) or "unknown host"
        parts.append(f"measured by parplan bench on {hosts} {_date(bench)}")
    nccl = [r for r in rows if r.source.startswith("nccl-tests")]
    if nccl:
        hosts = ", ".join(sorted({r.host for r in nccl if r.host})) or "unknown host"
        files = ", ".join(sorted({r.source.split(":", 1)[1] for r in nccl}))
        parts.append(f"measured by nccl-tests on {hosts} ({files}), fitted by parplan calibrate "
                     f"{_dt.date.today().isoformat()}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the profile


class _Flow(list):
    """A YAML list written on one line: ``[flops, efficiency]``."""


class _Dumper(yaml.SafeDumper):
    pass


def _float(dumper: yaml.SafeDumper, value: float) -> yaml.Node:
    """Floats as ``2.039e+12`` or ``0.96``: always with a dot, so YAML 1.1 reads them back as floats."""
    if not math.isfinite(value):
        return dumper.represent_float(value)
    text = f"{value:.6g}"
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e")
    elif "e" not in text and "." not in text:
        text += ".0"
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(float, _float)


def guess_base(rows: Sequence[Row]) -> str:
    """The shipped profile whose name or alias appears in the measured device name."""
    devices = sorted({re.sub(r"[\s_]+", "-", r.device_name.lower()) for r in rows if r.device_name})
    scores: dict[str, int] = {}
    for name in hardware_names():
        hw = load_hardware(name)
        for alias in (hw.name, *hw.aliases):
            alias = alias.lower()
            if any(alias in d for d in devices):
                scores[name] = max(scores.get(name, 0), len(alias))
    if not scores:
        shown = ", ".join(devices) or "no device name"
        raise ParplanError(f"cannot tell which profile to start from ({shown}); pass --hw BASE_PROFILE")
    best = max(scores.values())
    winners = sorted(n for n, s in scores.items() if s == best)
    if len(winners) > 1:
        raise ParplanError(f"the device matches several profiles ({', '.join(winners)}); pass --hw BASE_PROFILE")
    return winners[0]


def profile_dict(base_raw: Mapping[str, Any], base: Hardware, cal: Calibration, rows: Sequence[Row],
                 name: str) -> dict[str, Any]:
    """The base profile's fields with the measured ones replaced."""
    data = copy.deepcopy(dict(base_raw))
    source = provenance(rows)
    data["name"] = name
    data.pop("aliases", None)
    data["description"] = f"{base.name} calibrated: {source}"
    sources = dict(data.get("sources") or {})
    data.setdefault("efficiency", {})
    if cal.fits:
        coll_rows = [r for r in rows if r.kind == "collective"]
        measured = {(f.op, f.group, f.ranks) for f in cal.fits}
        kept = [dict(op=f.op, group=f.group, ranks=f.ranks, alpha_s=f.alpha_s, busbw=f.busbw)
                for f in base.collective_fits if (f.op, f.group, f.ranks) not in measured]
        data["collective_fits"] = kept + [dict(op=f.op, group=f.group, ranks=int(f.ranks), alpha_s=f.alpha_s,
                                               busbw=f.busbw) for f in cal.fits]
        sources["collective_fits"] = (f"{provenance(coll_rows)} (alpha-beta per collective and group class, "
                                      f"least squares in relative error)")
    if cal.intra_efficiency is not None:
        data["intra_node"] = dict(data["intra_node"], efficiency=cal.intra_efficiency)
        sources["intra_node.efficiency"] = (f"{provenance([r for r in rows if r.kind == 'collective'])} "
                                            f"(intra-node all-gather busbw over line rate)")
    mm_rows = [r for r in rows if r.kind == "matmul"]
    if cal.matmul_efficiency is not None:
        # The shape model (wave utilization x k-loop fill) with the measured typical rate; a
        # FLOPs-only curve would lose the shape effects that dominate real layers.
        data.pop("matmul_curve", None)
        data["efficiency"]["matmul"] = cal.matmul_efficiency
        sources["efficiency.matmul"] = (f"{provenance(mm_rows)} (median {cal.matmul_dtype} achieved/(peak x wave "
                                        f"utilization x k/(k+128)) over compute-bound matmuls of 1e11+ FLOPs)")
    elif cal.matmul_curve:
        data["matmul_curve"] = [_Flow([float(f), float(e)]) for f, e in cal.matmul_curve]
        data["efficiency"]["matmul"] = max(e for _, e in cal.matmul_curve)
        note = f"({cal.matmul_dtype} matmul, achieved over peak, median shape per half-octave of FLOPs)"
        sources["matmul_curve"] = f"{provenance(mm_rows)} {note}"
        sources["efficiency.matmul"] = f"{provenance(mm_rows)} (median {cal.matmul_dtype} matmul over peak per size)"
    if (cal.matmul_efficiency is not None or cal.matmul_curve) and "loaded_mhz" in (data.get("clocks") or {}):
        # The measured rates carry whatever clock this device held; the base part's is no longer their
        # reference, so a sustained clock on top would count the clock twice (parplan/specs/clocks.py).
        data["clocks"] = {k: v for k, v in data["clocks"].items() if k != "loaded_mhz"}
        sources.pop("clocks.loaded_mhz", None)
    if cal.hbm_efficiency is not None:
        data["efficiency"]["hbm"] = cal.hbm_efficiency
        sources["efficiency.hbm"] = (f"{provenance([r for r in rows if r.kind == 'copy'])} "
                                     f"(largest device copies, bytes read + written, over hbm_bandwidth)")
    if cal.kernel_overhead_s is not None:
        data["kernel_overhead_s"] = cal.kernel_overhead_s
        sources["kernel_overhead_s"] = (f"{provenance([r for r in rows if r.kind in ('copy', 'matmul')])} "
                                        f"(fastest copy or matmul)")
    data["sources"] = sources
    return data


def render(data: Mapping[str, Any], header: str) -> str:
    body = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def _is_cluster_file(spec: str | None) -> bool:
    """Whether ``--hw`` names a cluster file (a ``hardware:`` key) rather than a profile."""
    if not spec or not spec.endswith((".yaml", ".yml")) or not Path(spec).is_file():
        return False
    data = read_yaml(Path(spec))
    return isinstance(data, Mapping) and "hardware" in data and "peak_flops" not in data


LINK_FIELDS = ("name", "bandwidth", "latency_s", "efficiency", "in_switch_reduction")


def base_profile(base_name: str | None, rows: Sequence[Row]) -> tuple[Hardware, dict[str, Any]]:
    """The profile to start from and its YAML data. A cluster file's links replace the profile's, so a
    machine measured as the file describes it (``in_switch_reduction: false``: NVLink SHARP off, as
    ``NCCL_NVLS_ENABLE=0`` runs it) stays so in the calibrated profile."""
    from ..specs.cluster import load_cluster

    cluster = load_cluster(base_name) if _is_cluster_file(base_name) else None
    base = cluster.hardware if cluster else load_hardware(base_name or guess_base(rows))
    if not base.path:
        raise ParplanError(f"base profile {base.name} has no file to start from")
    data = copy.deepcopy(dict(read_yaml(Path(base.path))))
    if cluster is not None:
        sources = dict(data.get("sources") or {})
        for side in ("intra_node", "inter_node"):
            link, given = getattr(cluster, side), getattr(base, side)
            changed = {f: getattr(link, f) for f in LINK_FIELDS if getattr(link, f) != getattr(given, f)}
            if changed:
                data[side] = dict(data[side], **changed)
                for f in changed:
                    sources[f"{side}.{f}"] = f"cluster file {base_name}"
        data["sources"] = sources
        base = replace(base, intra_node=cluster.intra_node, inter_node=cluster.inter_node)
    return base, data


def calibrated_profile(rows: Sequence[Row], name: str, base_name: str | None = None,
                       load_as: str = "") -> tuple[Calibration, str, Hardware]:
    """Calibrate ``rows`` against a base profile (or the profile and links of a cluster file): the
    calibration, the profile YAML text named ``name``, and that profile as ``--hw`` will load it
    (checked before anyone writes it)."""
    base, base_raw = base_profile(base_name, rows)
    cal = calibrate(rows, base)
    data = profile_dict(base_raw, base, cal, rows, name)
    if cal.matmul_efficiency is not None or cal.matmul_curve:
        scaled = apply_in_layer_scale(data, base, rows)
        if scaled is not None:
            cal = replace(cal, in_layer_scale=scaled[0], in_layer_passes=scaled[1])
    header = (f"Hardware profile calibrated by parplan calibrate from {base.name}.\n"
              f"{provenance(rows)}.\nLoad it with --hw {load_as or name + '.yaml'}")
    text = render(data, header)
    where = load_as or name
    return cal, text, hardware_from_dict(yaml.safe_load(text), where, load_as)


def apply_in_layer_scale(data: dict[str, Any], base: Hardware, rows: Sequence[Row]) -> tuple[float, int] | None:
    """Scale the fitted matmul rate in ``data`` (a profile being written) by :func:`in_layer_scale`."""
    eff = data.get("efficiency", {})
    if "matmul" not in eff:
        return None
    found = in_layer_scale(rows, hardware_from_dict(data, base.name))
    if found is None:
        return None
    scale, passes = found
    eff["matmul"] = min(1.0, eff["matmul"] * scale)
    if data.get("matmul_curve"):
        data["matmul_curve"] = [_Flow([float(f), min(1.0, float(e) * scale)]) for f, e in data["matmul_curve"]]
    layer_rows = [r for r in rows if r.kind == "layer"]
    sources = data.setdefault("sources", {})
    sources["efficiency.matmul"] = (f"{sources.get('efficiency.matmul', '')}; x {scale:.3f} in-layer scale: "
                                    f"{provenance(layer_rows)} (median over {passes} layer passes of predicted "
                                    f"matmul time over measured time less the other ops' predicted time)")
    return scale, passes
