"""Clusters: a hardware profile times a device count, in the profile's servers or in those a cluster
file describes (devices per node, the network, the scale-up link). TPU clusters are one or more
slices of a torus (:mod:`parplan.specs.slices`), joined by the data-centre network (multi-slice).

Units are SI everywhere: bytes, bytes/s (per device, per direction), seconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from ..errors import ParplanError
from .clocks import MAX_MHZ, at_clock
from .hardware import MAX_DEVICES, Hardware, Link, load_hardware
from .registry import shipped
from . import slices as slices_mod
from .yamlio import check_keys, number, read_yaml, require_mapping, suggest, text


@dataclass(frozen=True)
class Cluster:
    """A set of identical devices in nodes of ``devices_per_node``."""

    hardware: Hardware
    devices: int
    devices_per_node: int
    intra_node: Link
    inter_node: Link
    name: str
    price_per_device_hour: float | None = None  # what one device costs for an hour (a cluster file's, or given)
    # TPU: the torus shape of each slice, how many slices the data-centre network joins, which axes wrap.
    slice_shape: tuple[int, ...] = ()
    slices: int = 1
    wraps: tuple[bool, ...] = ()
    # GPU networks: devices per pod of full bisection (None: the whole cluster), and the oversubscription of
    # the layer above the pods (2.0: the pods' uplinks carry half of what their NICs can send).
    pod_devices: int | None = None
    oversubscription: float = 1.0

    @property
    def label(self) -> str:
        """The cluster as a person reads it: ``512 x a100-80gb`` (or the name a cluster file gives), with the
        sustained SM clock a cluster file set."""
        if self.slice_shape and self.name == _torus_name(self.hardware, self.slices, self.slice_devices):
            shape = slices_mod.format_shape(self.slice_shape)
            return (f"{self.devices} x {self.hardware.name} ({shape})" if self.slices == 1 else
                    f"{self.slices} x {self.slice_devices} {self.hardware.name} ({self.slices} slices of {shape})")
        label = f"{self.devices} x {self.hardware.name}" if self.name == f"{self.hardware.name}x{self.devices}" \
            else self.name
        clocks = self.hardware.clocks
        return label if clocks is None or clocks.sustained_mhz is None else f"{label} at {clocks.sustained_mhz:g} MHz"

    @property
    def is_torus(self) -> bool:
        return bool(self.slice_shape)

    @property
    def slice_devices(self) -> int:
        """Chips in one slice (TPU); the whole cluster otherwise."""
        return self.devices // self.slices

    @property
    def nodes(self) -> int:
        return -(-self.devices // self.devices_per_node)

    @property
    def scale_up_domain(self) -> int:
        """Devices per scale-up domain, in device order: the node, or the profile's larger domain where its
        scale-up link reaches past the node (a GB200 NVL72 rack of 18 four-GPU trays, a TPU pod)."""
        hw = self.hardware
        return hw.scale_up_domain if hw.scale_up_domain > hw.devices_per_node else self.devices_per_node

    @property
    def fast_domain(self) -> int:
        """Devices that reach each other over the scale-up link (NVLink node or rack, TPU pod slice)."""
        if self.hardware.torus is not None:
            return self.slice_devices if self.slice_shape else min(self.devices, self.hardware.scale_up_domain)
        return min(self.devices, self.scale_up_domain)


def _torus_name(hw: Hardware, slices: int, per_slice: int) -> str:
    return f"{hw.name}x{per_slice}" if slices == 1 else f"{hw.name}x{slices}x{per_slice}"


_COUNT = re.compile(r"^(?P<name>.+?)(?P<count>\d+)$")
_SLICES = re.compile(r"^(?P<name>.+?)x(?P<slices>\d+)x(?P<count>\d+)$")


def _split_count(spec: str, table) -> tuple[str, str] | None:
    """``(profile, count)`` of ``NAMExCOUNT``: ``a100x512``, ``mi300xx64``, and ``mi300x64`` for a profile whose
    name ends in ``x`` (its own ``x`` read as the separator); None without a trailing ``x<digits>``."""
    m = _COUNT.match(spec)
    if not m or not m.group("name").endswith("x"):
        return None
    name, count = m.group("name"), m.group("count")
    if name[:-1] not in table and name in table:
        return name, count
    return name[:-1], count


def load_cluster(spec: str) -> Cluster:
    """A cluster from ``a100x512`` (the trailing ``x<digits>`` is the count), a profile name, or a YAML cluster file.

    Cluster file fields: ``hardware`` (profile name or path), ``devices``, and optional
    ``devices_per_node``, ``scale_up_domain`` (devices one NVLink domain joins, a multiple of the node),
    ``inter_node_bandwidth`` (bytes/s per device per direction), ``inter_node_latency_s``,
    ``intra_node_bandwidth``, ``intra_node_latency_s``, ``sustained_clock_mhz`` (the SM clock the
    devices hold under load; scales every peak, see ``specs/clocks.py``), ``in_switch_reduction``
    (``false``: the switch's all-reduce is off), ``pod_devices`` (devices per pod of full bisection, a whole
    number of nodes dividing the cluster) and ``oversubscription`` (of the layer above the pods, >= 1),
    ``name``.
    """
    if not isinstance(spec, str) or not spec:
        raise ParplanError("--hw must name a profile, a cluster like a100x512, or a cluster YAML file")
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ParplanError(f"cluster file not found: {spec}")
        data = require_mapping(read_yaml(path), spec)
        if "peak_flops" in data:  # a bare profile file: one device
            hw = load_hardware(spec)
            return make_cluster(hw, 1)
        return cluster_from_dict(data, spec, base_dir=path.parent)
    table = shipped("hardware")
    if spec.lower() in table:
        return make_cluster(load_hardware(spec), 1)
    multi = _SLICES.match(spec.lower())
    if multi and multi.group("name") in table:
        hw = load_hardware(multi.group("name"))
        if hw.torus is None:
            raise ParplanError(f"--hw '{spec}': {hw.name} is not a TPU; slices (NAMExSLICESxCOUNT) join TPU "
                               f"slices, GPUs come in nodes (use {hw.name}xCOUNT)")
        slices, per = int(multi.group("slices")), int(multi.group("count"))
        if slices < 1 or per < 1 or slices * per > MAX_DEVICES:
            raise ParplanError(f"--hw '{spec}': slices and chips per slice must be positive, at most "
                               f"{MAX_DEVICES} chips in all")
        return make_cluster(hw, slices * per, slices=slices)
    split = _split_count(spec.lower(), table)
    if split and split[0] in table:
        count = int(split[1])
        if count < 1 or count > MAX_DEVICES:
            raise ParplanError(f"device count in '{spec}' must be between 1 and {MAX_DEVICES}")
        return make_cluster(load_hardware(split[0]), count)
    name = split[0] if split else spec.lower()
    raise ParplanError(f"unknown hardware '{name}'{suggest(name, table)} in --hw '{spec}'; "
                       f"use NAMExCOUNT such as a100x512, or a cluster YAML file")


def make_cluster(hw: Hardware, devices: int, *, devices_per_node: int | None = None,
                 inter_node: Link | None = None, intra_node: Link | None = None,
                 name: str | None = None, price_per_device_hour: float | None = None,
                 slices: int | None = None, slice_shape=None, wraps=None, pod_devices: int | None = None,
                 oversubscription: float = 1.0) -> Cluster:
    """``devices`` in nodes of ``devices_per_node``; on a TPU, ``slices`` slices of ``slice_shape`` (default:
    one slice, of the shape :func:`parplan.specs.slices.default_slice_shape` gives), with ``wraps``
    overriding which of its axes close into rings."""
    dpn = devices_per_node or hw.devices_per_node
    if devices < 1:
        raise ParplanError(f"a cluster needs at least one device, got {devices}")
    torus = _torus_fields(hw, devices, slices, slice_shape, wraps)
    if devices > dpn and devices % dpn:
        below, above = devices // dpn * dpn, -(-devices // dpn) * dpn
        raise ParplanError(f"{devices} {hw.name} devices do not fill whole nodes of {dpn}; use a multiple of "
                           f"{dpn} (such as {below} or {above}), or at most {dpn}")
    if pod_devices is not None:
        if torus:
            raise ParplanError("pod_devices describes a GPU network's pods; a TPU cluster is slices of a torus")
        if pod_devices % dpn or devices % pod_devices:
            pods = [p for p in range(dpn, devices + 1, dpn) if devices % p == 0]
            raise ParplanError(f"pod_devices {pod_devices} must be a whole number of nodes of {dpn} that divides the "
                               f"{devices} devices (such as {', '.join(map(str, pods[-4:]))})")
    if oversubscription != 1.0 and pod_devices is None:
        raise ParplanError("oversubscription applies above pods: give pod_devices too")
    if not 1.0 <= oversubscription <= 64.0:
        raise ParplanError(f"oversubscription {oversubscription:g} must lie between 1 (full bisection) and 64")
    return Cluster(
        hardware=hw,
        devices=devices,
        devices_per_node=dpn,
        intra_node=intra_node or hw.intra_node,
        inter_node=inter_node or hw.inter_node,
        name=name or (_torus_name(hw, torus["slices"], devices // torus["slices"]) if torus else f"{hw.name}x{devices}"),
        price_per_device_hour=price_per_device_hour,
        pod_devices=pod_devices if pod_devices is not None and pod_devices < devices else None,
        oversubscription=float(oversubscription),
        **torus,
    )


def _torus_fields(hw: Hardware, devices: int, slices, shape, wraps) -> dict:
    """The slice fields of a TPU cluster (empty for a GPU one), each checked with a one-line error."""
    torus = hw.torus
    if torus is None:
        if slices not in (None, 1) or shape is not None or wraps is not None:
            raise ParplanError(f"{hw.name} is not a TPU: slices, slice shapes and wraparound describe TPU tori; "
                               f"GPU clusters come in nodes (devices_per_node)")
        return {}
    slices = 1 if slices is None else slices
    if slices < 1 or devices % slices:
        raise ParplanError(f"{devices} {hw.name} chips do not split into {slices} equal slices")
    per = devices // slices
    if shape is None:
        if per > torus.max_slice_devices:
            raise ParplanError(f"{per} {hw.name} chips exceed its largest slice of {torus.max_slice_devices} "
                               f"({slices_mod.format_shape(torus.max_slice)}); ask for several slices joined over "
                               f"the data-centre network, such as {slices_mod.multislice_hint(torus, hw.name, per)}")
        shape = slices_mod.default_slice_shape(torus, per)
    shape = slices_mod.check_slice(torus, shape, per, what=f"{hw.name} slice")
    if wraps is None:
        wraps = slices_mod.wraps(torus, shape)
    elif len(wraps) != len(shape) or any(not isinstance(w, bool) for w in wraps):
        raise ParplanError(f"wrap: give one true/false per axis of the {slices_mod.format_shape(shape)} slice, "
                           f"got {list(wraps)!r}")
    return {"slice_shape": tuple(shape), "slices": slices, "wraps": tuple(bool(w) for w in wraps)}


CLUSTER_KEYS = ("name", "hardware", "devices", "devices_per_node", "inter_node_bandwidth", "inter_node_latency_s",
                "inter_node_name", "intra_node_bandwidth", "intra_node_latency_s", "intra_node_name",
                "intra_node_efficiency", "in_switch_reduction", "price_per_device_hour", "scale_up_domain",
                "sustained_clock_mhz", "slices", "slice", "wrap", "pod_devices", "oversubscription")


def _link_override(data: Mapping[str, Any], side: str, link: Link, what: str) -> Link:
    """The profile's ``intra_node`` or ``inter_node`` link with what a cluster file changes of it."""
    fields = {"bandwidth": 1e15, "latency_s": 1.0, "efficiency": 1.0}
    given = {f: data[f"{side}_{f}"] for f in fields if data.get(f"{side}_{f}") is not None}
    if not given and data.get(f"{side}_name") is None:
        return link
    return replace(link, name=str(data.get(f"{side}_name", link.name)),
                   **{f: float(number(data, f"{side}_{f}", what, maximum=fields[f])) for f in given})


def _in_switch(data: Mapping[str, Any], link: Link, hw: Hardware, what: str) -> Link:
    """The scale-up link with in-switch reduction (NVLink SHARP) turned off where the file says
    ``in_switch_reduction: false``; it can only turn off what the profile's switches have."""
    value = data.get("in_switch_reduction")
    if value is None:
        return link
    if not isinstance(value, bool):
        raise ParplanError(f"{what}: in_switch_reduction must be true or false, got {value!r}")
    if value and not hw.intra_node.in_switch_reduction:
        raise ParplanError(f"{what}: in_switch_reduction: true, but {hw.name}'s scale-up link has no "
                           f"in-switch reduction to turn on; only false is allowed")
    return replace(link, in_switch_reduction=value)


def cluster_from_dict(data: Mapping[str, Any], what: str, base_dir: Path | None = None) -> Cluster:
    check_keys(data, CLUSTER_KEYS, what)
    hw_ref = text(data, "hardware", what)
    ref_path = Path(hw_ref)
    if base_dir is not None and not ref_path.is_absolute() and (base_dir / ref_path).is_file():
        hw_ref = str(base_dir / ref_path)
    hw = load_hardware(hw_ref)
    slices = number(data, "slices", what, required=False, integer=True, maximum=MAX_DEVICES)
    shape = data.get("slice")
    if shape is not None:
        if hw.torus is None:
            raise ParplanError(f"{what}: 'slice' gives a TPU torus shape; {hw.name} is not a TPU")
        shape = slices_mod.parse_shape(shape, hw.torus.dims, f"{what}: slice")
    per = None
    if shape is not None:
        per = 1
        for side in shape:
            per *= side
    devices = number(data, "devices", what, required=per is None, integer=True, maximum=MAX_DEVICES)
    if devices is None:
        devices = per * (slices or 1)
    wraps = data.get("wrap")
    if wraps is not None and not isinstance(wraps, list):
        raise ParplanError(f"{what}: 'wrap' lists true/false per slice axis, such as [true, true, false]")
    dpn = number(data, "devices_per_node", what, required=False, integer=True, maximum=MAX_DEVICES)
    if data.get("sustained_clock_mhz") is not None:
        hw = at_clock(hw, number(data, "sustained_clock_mhz", what, maximum=MAX_MHZ), f"{what}: sustained_clock_mhz")
    domain = number(data, "scale_up_domain", what, required=False, integer=True, maximum=MAX_DEVICES)
    if domain is not None or (dpn and hw.scale_up_domain > hw.devices_per_node):  # a domain wider than a node
        node, domain = dpn or hw.devices_per_node, domain or hw.scale_up_domain
        if domain < node or domain % node:
            raise ParplanError(f"{what}: the scale-up domain of {domain} devices must be a whole number of nodes "
                               f"of {node} (set scale_up_domain or devices_per_node)")
        hw = replace(hw, scale_up_domain=domain, devices_per_node=node)  # the profile as this cluster houses it
    intra = _in_switch(data, _link_override(data, "intra_node", hw.intra_node, what), hw, what)
    return make_cluster(hw, devices, devices_per_node=dpn, slices=slices, slice_shape=shape, wraps=wraps,
                        inter_node=_link_override(data, "inter_node", hw.inter_node, what),
                        intra_node=intra,
                        name=str(data.get("name") or f"{hw.name}x{devices}"),
                        price_per_device_hour=number(data, "price_per_device_hour", what, required=False,
                                                     maximum=1e6),
                        pod_devices=number(data, "pod_devices", what, required=False, integer=True,
                                           maximum=MAX_DEVICES),
                        oversubscription=number(data, "oversubscription", what, required=False, default=1.0,
                                                maximum=1e6))
