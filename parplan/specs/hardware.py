"""Hardware profiles and clusters: the three numbers of a device, and how devices connect.

A *profile* (``hardware/*.yaml``) describes one accelerator in its standard server:
peak dense FLOP/s per dtype, HBM capacity and bandwidth, the scale-up link
(NVLink/xGMI/PCIe, or a TPU's ICI torus) and the scale-out network per device.
A *cluster* is a profile times a device count, optionally with a different
server (devices per node, network bandwidth) as a cluster file describes.

Units are SI everywhere: bytes, bytes/s (per device, per direction), seconds, FLOP/s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .clocks import Clocks, clocks_from_dict
from .contention import Contention, contention_from_dict
from .dtypes import DTYPES
from .kernel_tables import (AttentionCurve, MatmulCurve, attention_kernels_from_dict, curve_from_list,
                            eager_from_dict, fp8_from_dict, grouped_from_dict, misaligned_from_dict)
from .registry import shipped, shipped_names
from .yamlio import check_keys, flag, names, number, read_yaml, require_mapping, suggest, text, text_mapping

MAX_DEVICES = 1_000_000
LINK_KINDS = ("nvlink", "xgmi", "pcie", "ici", "net")
PROFILE_KEYS = ("name", "aliases", "description", "vendor", "kind", "compute_units", "peak_flops", "hbm_bytes",
                "hbm_bandwidth", "devices_per_node", "scale_up_domain", "intra_node", "inter_node", "ici", "efficiency",
                "kernel_overhead_s", "collective_overhead_s", "matmul_curve", "attention_kernels", "collective_fits",
                "overlap", "grouped_gemm", "clocks", "host_link", "host_memory_bytes", "mx_block_scaling", "sources")
LINK_KEYS = ("name", "kind", "bandwidth", "latency_s", "efficiency", "in_switch_reduction")
EFFICIENCY_KEYS = ("matmul", "hbm", "elementwise", "optimizer", "eager", "matmul_misaligned", "matmul_fp8")
ICI_KEYS = ("dims", "link_bandwidth", "pod_devices", "max_slice", "wrap_rule", "wrap_side")
WRAP_RULES = ("cubes", "full-axis")
FIT_KEYS = ("op", "group", "ranks", "alpha_s", "busbw", "points", "rms_rel_err")


@dataclass(frozen=True)
class Link:
    """One class of link a collective can run over.

    ``bandwidth`` is the line rate per device per direction (bytes/s);
    ``efficiency`` the fraction of it that a large NCCL/ICI collective reaches
    (nccl-tests bus bandwidth over line rate); ``latency_s`` the per-step latency
    of a ring or tree step over this link.
    """

    name: str
    bandwidth: float
    latency_s: float
    efficiency: float = 1.0
    in_switch_reduction: bool = False
    kind: str = "net"  # nvlink | xgmi | pcie | ici | net

    @property
    def effective_bandwidth(self) -> float:
        return self.bandwidth * self.efficiency


@dataclass(frozen=True)
class Torus:
    """A TPU inter-chip-interconnect torus: ``dims`` axes, each link ``link_bandwidth`` one way.

    ``max_slice`` is the largest slice one job gets (its sides, ascending); beyond it, slices
    join over the data-centre network. Which slice axes close into rings (``wrap_rule``):
    ``cubes``, every axis when each side is a multiple of ``wrap_side`` (v4, v5p: whole 4x4x4
    cubes get their wraparound from the optical switches), or ``full-axis``, an axis whose
    side is a multiple of ``wrap_side`` (v5e, v6e: 16); ``None``: no axis wraps below the pod.
    """

    dims: int
    link_bandwidth: float
    pod_devices: int
    max_slice: tuple[int, ...] = ()
    wrap_rule: str | None = None
    wrap_side: int = 0

    @property
    def max_slice_devices(self) -> int:
        n = 1
        for side in self.max_slice:
            n *= side
        return n or self.pod_devices


@dataclass(frozen=True)
class CollectiveFit:
    """A measured alpha-beta fit for one collective on one group class (from ``parplan calibrate``).

    ``group`` is ``intra`` (all ranks in one node) or ``inter`` (spanning nodes);
    ``ranks`` the group size measured; time = ``alpha_s + size * bus_factor / busbw``.
    """

    op: str
    group: str
    ranks: int
    alpha_s: float
    busbw: float
    points: int = 0               # sizes the fit was made from (0: not recorded)
    rms_rel_err: float | None = None  # its root-mean-square relative error over them


@dataclass(frozen=True)
class Hardware:
    """One accelerator as its standard server houses it."""

    name: str
    vendor: str
    kind: str  # gpu | tpu
    peak_flops: Mapping[str, float]
    hbm_bytes: float
    hbm_bandwidth: float
    devices_per_node: int
    intra_node: Link
    inter_node: Link
    compute_units: int
    matmul_efficiency: float
    hbm_efficiency: float
    elementwise_efficiency: float
    kernel_overhead_s: float
    collective_overhead_s: float
    scale_up_domain: int
    # HBM efficiency of the fused optimizer step (None: the element-wise kernels' efficiency).
    optimizer_efficiency: float | None = None
    torus: Torus | None = None
    matmul_curve: MatmulCurve | None = None
    # Fraction of the aligned GEMM rate when a GEMM's feature sizes are multiples of only
    # this many bytes (2, 4 or 8; 16 and up run at full rate). Empty: not measured.
    matmul_misaligned: Mapping[int, float] = field(default_factory=dict)
    # FP8 GEMMs' efficiency at the FP8 peak as a fraction of the 16-bit GEMMs' at theirs, per scaling
    # (one scale per tensor, or per row); empty: FP8 GEMMs reach the 16-bit efficiency.
    matmul_fp8: Mapping[str, float] = field(default_factory=dict)
    attention_kernels: Mapping[str, AttentionCurve] = field(default_factory=dict)
    # Measured HBM efficiency of eager PyTorch element-wise ops per family (efficiency.eager); a family
    # not measured runs at the copy rate.
    eager_kernels: Mapping[str, float] = field(default_factory=dict)
    # Expert GEMMs: (tokens per expert, {curve: fraction of the GEMM roofline's rate}) per launch and dtype
    # (kernel_tables.GROUPED_CURVES), measured; None: 1.
    grouped_gemm: tuple[tuple[float, ...], Mapping[str, tuple[float, ...]]] | None = None
    collective_fits: tuple[CollectiveFit, ...] = ()
    # Compute slowdown beside communication kernels (measured); None: overlap costs no compute.
    contention: Contention | None = None
    clocks: Clocks | None = None  # the SM clock behind peak_flops (specs/clocks.py); None: not listed
    # The device's link to its host's memory (PCIe, NVLink-C2C), per direction; None: not stated.
    host_link: Link | None = None
    host_memory_bytes: float | None = None  # the host memory the standard server gives each device
    # Tensor cores that apply OCP microscaling block scales (one shared exponent per 32 elements), which
    # the MXFP8 recipe needs: NVIDIA compute capability 10.x (Blackwell), AMD gfx950. False: not stated.
    mx_block_scaling: bool = False
    description: str = ""
    aliases: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; a clear error when the device has no such rate."""
        if dtype not in DTYPES:
            raise ParplanError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
        value = self.peak_flops.get(dtype)
        if not value:
            have = ", ".join(d for d in DTYPES if self.peak_flops.get(d))
            raise ParplanError(f"{self.name} has no dense {dtype} rate (it has {have})")
        return value

    def check_fp8_recipe(self, recipe: str | None, offered: tuple[str, ...] = ()) -> None:
        """Refuse an FP8 recipe this device's tensor cores cannot run; ``offered``: the framework's recipes."""
        if recipe == "mxfp8" and not self.mx_block_scaling:
            others = ", ".join(r for r in offered if r != "mxfp8") or "a per-tensor recipe"
            raise ParplanError(f"the mxfp8 recipe needs tensor cores that apply MX block scales (NVIDIA Blackwell, "
                               f"compute capability 10.x); {self.name} has none (its profile's mx_block_scaling): "
                               f"choose --fp8-recipe {others}")

    def ratios(self, dtype: str = "bf16") -> dict[str, float]:
        """Derived ratios: FLOP per byte of HBM, of the scale-up link, of the network.

        The last two are the per-device batch (tokens) above which FSDP hides its
        all-gathers behind compute on that link (scaling book, "Training": B/X > C/W).
        """
        c = self.peak(dtype)
        return {
            "flops_per_hbm_byte": c / self.hbm_bandwidth,
            "flops_per_intra_node_byte": c / self.intra_node.bandwidth,
            "flops_per_inter_node_byte": c / self.inter_node.bandwidth,
        }


# --------------------------------------------------------------------------- loading


def _link(data: Any, what: str, default_eff: float = 1.0) -> Link:
    data = require_mapping(data, what)
    check_keys(data, LINK_KEYS, what)
    return Link(
        name=text(data, "name", what, required=False, default="") or "",
        bandwidth=number(data, "bandwidth", what, maximum=1e15),
        latency_s=number(data, "latency_s", what, maximum=1.0),
        efficiency=number(data, "efficiency", what, required=False, default=default_eff, maximum=1.0),
        in_switch_reduction=bool(data.get("in_switch_reduction", False)),
        kind=text(data, "kind", what, required=False, choices=LINK_KINDS, default="net") or "net",
    )


def _fits(data: Any, what: str) -> tuple[CollectiveFit, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ParplanError(f"{what}: expected a list of fits")
    fits = []
    for i, row in enumerate(data):
        w = f"{what}[{i}]"
        row = require_mapping(row, w)
        check_keys(row, FIT_KEYS, w)
        fits.append(CollectiveFit(
            op=text(row, "op", w),
            group=text(row, "group", w, choices=("intra", "inter")),
            ranks=number(row, "ranks", w, integer=True, maximum=MAX_DEVICES),
            alpha_s=float(number(row, "alpha_s", w, positive=False, maximum=10.0)),
            busbw=float(number(row, "busbw", w, maximum=1e15)),
        ))
    return tuple(fits)


def _torus(ici: Mapping[str, Any], what: str) -> Torus:
    dims = number(ici, "dims", what, integer=True, maximum=3)
    pod = number(ici, "pod_devices", what, integer=True, maximum=MAX_DEVICES)
    sides = ici.get("max_slice")
    if sides is None:
        sides = ()
    elif (not isinstance(sides, list) or len(sides) != dims
          or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in sides)):
        raise ParplanError(f"{what}: max_slice must list {dims} positive whole sides, got {sides!r}")
    rule = text(ici, "wrap_rule", what, required=False, choices=WRAP_RULES, default=None)
    side = number(ici, "wrap_side", what, required=rule is not None, integer=True, maximum=MAX_DEVICES,
                  default=0) or 0
    torus = Torus(dims=dims, link_bandwidth=number(ici, "link_bandwidth", what, maximum=1e14), pod_devices=pod,
                  max_slice=tuple(sorted(sides)), wrap_rule=rule, wrap_side=side)
    if torus.max_slice_devices > pod:
        raise ParplanError(f"{what}: max_slice {'x'.join(map(str, sides))} holds more than the {pod} chips of a pod")
    return torus


def hardware_from_dict(data: Any, what: str, path: str = "") -> Hardware:
    """Build a Hardware from a parsed profile, checking every field."""
    data = require_mapping(data, what)
    check_keys(data, PROFILE_KEYS, what)
    name = text(data, "name", what)
    peaks_raw = require_mapping(data.get("peak_flops"), f"{what}: peak_flops")
    peaks = {}
    for dtype, value in peaks_raw.items():
        if dtype not in DTYPES:
            raise ParplanError(f"{what}: peak_flops has unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
        v = number(peaks_raw, dtype, f"{what}: peak_flops", required=False, maximum=1e18)
        if v:
            peaks[dtype] = float(v)
    if not peaks:
        raise ParplanError(f"{what}: peak_flops lists no dtype with a rate")
    eff = require_mapping(data.get("efficiency", {}), f"{what}: efficiency")
    check_keys(eff, EFFICIENCY_KEYS, f"{what}: efficiency")
    kind = text(data, "kind", what, required=False, choices=("gpu", "tpu"), default="gpu")
    dpn = number(data, "devices_per_node", what, integer=True, maximum=MAX_DEVICES)
    torus = None
    if data.get("ici") is not None:
        ici = require_mapping(data["ici"], f"{what}: ici")
        check_keys(ici, ICI_KEYS, f"{what}: ici")
        torus = _torus(ici, f"{what}: ici")
    hw = Hardware(
        name=name,
        vendor=text(data, "vendor", what, required=False, default="") or "",
        kind=kind,
        peak_flops=MappingProxyType(peaks),
        hbm_bytes=float(number(data, "hbm_bytes", what, maximum=1e14)),
        hbm_bandwidth=float(number(data, "hbm_bandwidth", what, maximum=1e15)),
        devices_per_node=dpn,
        intra_node=_link(data.get("intra_node"), f"{what}: intra_node"),
        inter_node=_link(data.get("inter_node"), f"{what}: inter_node"),
        compute_units=number(data, "compute_units", what, integer=True, maximum=100_000),
        matmul_efficiency=float(number(eff, "matmul", f"{what}: efficiency", maximum=1.0)),
        hbm_efficiency=float(number(eff, "hbm", f"{what}: efficiency", maximum=1.0)),
        elementwise_efficiency=float(number(eff, "elementwise", f"{what}: efficiency", required=False,
                                            default=eff.get("hbm"), maximum=1.0)),
        optimizer_efficiency=(float(number(eff, "optimizer", f"{what}: efficiency", maximum=1.0))
                              if eff.get("optimizer") is not None else None),
        kernel_overhead_s=float(number(data, "kernel_overhead_s", what, maximum=1.0)),
        collective_overhead_s=float(number(data, "collective_overhead_s", what, maximum=1.0)),
        scale_up_domain=number(data, "scale_up_domain", what, required=False, integer=True,
                               default=dpn, maximum=MAX_DEVICES),
        torus=torus,
        matmul_curve=curve_from_list(data.get("matmul_curve"), f"{what}: matmul_curve"),
        matmul_misaligned=misaligned_from_dict(eff.get("matmul_misaligned"), f"{what}: efficiency.matmul_misaligned"),
        matmul_fp8=fp8_from_dict(eff.get("matmul_fp8"), f"{what}: efficiency.matmul_fp8"),
        attention_kernels=attention_kernels_from_dict(data.get("attention_kernels"), f"{what}: attention_kernels"),
        eager_kernels=eager_from_dict(eff.get("eager"), f"{what}: efficiency.eager"),
        grouped_gemm=grouped_from_dict(data.get("grouped_gemm"), f"{what}: grouped_gemm"),
        collective_fits=_fits(data.get("collective_fits"), f"{what}: collective_fits"),
        contention=contention_from_dict(data.get("overlap"), f"{what}: overlap"),
        clocks=clocks_from_dict(data.get("clocks"), f"{what}: clocks"),
        host_link=_link(data["host_link"], f"{what}: host_link") if data.get("host_link") is not None else None,
        host_memory_bytes=number(data, "host_memory_bytes", what, required=False, maximum=1e15),
        mx_block_scaling=flag(data, "mx_block_scaling", what, False),
        description=str(data.get("description", "")),
        aliases=names(data, "aliases", what),
        sources=MappingProxyType(text_mapping(data, "sources", what)),
        path=path,
    )
    for kernel, curve in hw.attention_kernels.items():
        for part, table in (("forward", curve.forward), ("backward", curve.backward)):
            top = max(max(v) for v in table.values())
            if top * hw.matmul_efficiency > 1.0:
                raise ParplanError(f"{what}: attention_kernels.{kernel}.{part}: {top:g} of the GEMM rate (efficiency "
                                   f"{hw.matmul_efficiency:g}) runs faster than the peak")
    return hw


def hardware_names() -> list[str]:
    """Canonical names of the shipped profiles."""
    return shipped_names("hardware")


def _load_path(path: Path) -> Hardware:
    stat = path.stat()
    return _load_path_version(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _load_path_version(path: Path, mtime_ns: int, size: int) -> Hardware:
    """Cached by path and file version, so a profile rewritten by ``parplan calibrate`` is read again."""
    data = read_yaml(path)
    return hardware_from_dict(data, str(path), str(path))


def load_hardware(name_or_path: str) -> Hardware:
    """A profile by name, alias (``a100``) or YAML path."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ParplanError("hardware name must be a non-empty string")
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ParplanError(f"hardware file not found: {name_or_path}")
        data = read_yaml(path)
        if isinstance(data, Mapping) and "hardware" in data and "peak_flops" not in data:
            raise ParplanError(f"{name_or_path} is a cluster file; pass it as --hw, not as a profile")
        return _load_path(path.resolve())
    table = shipped("hardware")
    key = name_or_path.lower()
    if key not in table:
        raise ParplanError(f"unknown hardware '{name_or_path}'{suggest(key, table)}; "
                           f"see 'parplan list hardware'")
    return _load_path(table[key])
