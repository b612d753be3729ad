"""How sure is a predicted step time: an interval from the validation error of the framework that runs it and
from the profile values marked ``[assumed]``.

*Validation.* ``parplan validate`` predicts published runs; each run's signed error e = predicted / published - 1
is stored per framework in ``validation/error-bands.yaml`` (written by ``scripts/error_bands.py``, checked against
``validate`` by the tests, never typed by hand). A step predicted at t by a model that erred by e took t / (1 + e);
the 10th and 90th percentiles of the framework's errors (``QUANTILES``, linear interpolation) bound the middle 80%
of its runs: [t / (1 + e90), t / (1 + e10)]. A framework with no validated run takes every run's errors and says so.

*Assumed values.* Each number of the hardware or framework profile whose source says ``[assumed]`` is moved by the
rank check's +-15% (``trust.SWING``), and each such flag set the other way, one at a time, and the step
re-estimated; the largest fall and rise of each combine as a root sum of squares, the first-order propagation of
independent uncertainties (JCGM 100:2008, the GUM, eq. 10). A value a cluster file sets is the user's, not
assumed; an assumed count or choice (devices per node, a kernel set) is named and not varied.

The interval multiplies the two: [t / (1 + e90) x (1 - a_down), t / (1 + e10) x (1 + a_up)].
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import ParplanError
from ..specs.cluster import Cluster
from ..specs.registry import spec_dir
from ..specs.yamlio import check_keys, read_yaml, require_mapping
from ..step.train import estimate
from .trust import SWING, scaled_cluster, stack_layouts

BANDS_FILE = "error-bands.yaml"
QUANTILES = (0.10, 0.90)
ASSUMED = "[assumed]"


@dataclass(frozen=True)
class Interval:
    """Where a predicted step time likely lies, and what the bounds come from."""

    step_time_s: float
    low_s: float
    high_s: float
    framework: str            # the validation group whose errors set the band
    moe: bool                 # of mixture-of-experts runs (else of dense ones)
    runs: int                 # its validated runs (0: none shipped)
    error_low: float          # its 10th-percentile signed error
    error_high: float         # its 90th percentile
    group_note: str           # where the errors came from, when not the framework's own runs
    assumed: tuple            # (profile key, fall, rise) of each assumed value varied, as fractions of the step
    not_varied: tuple         # assumed values named but not varied

    def overlaps(self, other: "Interval") -> bool:
        return self.low_s <= other.high_s and other.low_s <= self.high_s

    def as_dict(self) -> dict[str, Any]:
        return {"step_time_interval_s": [self.low_s, self.high_s],
                "validation": {"framework": self.framework, "models": KINDS[self.moe], "runs": self.runs,
                               "quantiles": list(QUANTILES),
                               "errors": [self.error_low, self.error_high], "note": self.group_note},
                "assumed": [{"value": k, "fall": lo, "rise": hi} for k, lo, hi in self.assumed],
                "assumed_swing": SWING,
                "assumed_not_varied": list(self.not_varied)}

    def describe(self) -> str:
        """Where the bounds come from, in one sentence."""
        middle = f"the middle {QUANTILES[1] - QUANTILES[0]:.0%} of the errors"
        spread = f"({self.error_low:+.1%} to {self.error_high:+.1%})"
        kind = "MoE " if self.moe else ""
        runs = ("no validation errors (validation/error-bands.yaml is missing)" if not self.runs else
                f"{middle} of all {self.runs} validated {kind}runs {spread}, as {self.group_note}" if self.group_note
                else f"{middle} of the {self.runs} validated {kind}{self.framework} runs {spread}")
        varied = ", ".join(f"{k} {max(lo, hi):.1%}" for k, lo, hi in self.assumed)
        assumed = (f"; the [assumed] profile values (numbers +-{SWING:.0%}, flags flipped) move it by: {varied}"
                   if self.assumed else "; no [assumed] profile value to vary")
        fixed = f" (assumed, not varied: {', '.join(self.not_varied)})" if self.not_varied else ""
        return f"interval: {runs}{assumed}{fixed}"


KINDS = ("dense", "moe")


@lru_cache(maxsize=1)
def validation_errors() -> dict[tuple[str, str], tuple[float, ...]]:
    """Per (framework, kind of model: dense or moe), the signed errors of its validated runs
    (``validation/error-bands.yaml``; {} if absent)."""
    path = spec_dir("validation") / BANDS_FILE
    if not path.is_file():
        return {}
    data = require_mapping(read_yaml(path), str(path))
    check_keys(data, ("files", "frameworks"), str(path))
    out = {}
    for name, kinds in require_mapping(data.get("frameworks"), f"{path}: frameworks").items():
        kinds = require_mapping(kinds, f"{path}: {name}")
        check_keys(kinds, KINDS, f"{path}: {name}")
        for kind, runs in kinds.items():
            errors = list(require_mapping(runs, f"{path}: {name}.{kind}").values())
            if not errors or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and e > -1
                                     for e in errors):
                raise ParplanError(f"{path}: {name}.{kind}: expected run ids with signed errors above -1")
            out[(str(name), str(kind))] = tuple(float(e) for e in errors)
    return out


def error_band(framework: str, moe: bool = False) -> tuple[float, float, int, str]:
    """(10th, 90th percentile of the signed errors, runs, note) of the validated runs of ``framework`` on models of
    the same kind (dense or MoE); without any, every framework's runs of that kind; without those, every run."""
    errors = validation_errors()
    if not errors:
        return 0.0, 0.0, 0, ""
    kind = KINDS[bool(moe)]
    what = "MoE " if moe else ""
    values, note = errors.get((framework, kind)), ""
    if not values:
        values = tuple(e for (_, k), v in errors.items() if k == kind for e in v)
        note = f"no {what}{framework} run is validated"
    if not values:
        values = tuple(e for v in errors.values() for e in v)
    lo, hi = np.quantile(np.asarray(values), QUANTILES)
    return float(lo), float(hi), len(values), note


# --------------------------------------------------------------------------- the [assumed] profile values

# Profile keys (as their ``sources`` name them) that live under other names in the loaded profile.
HARDWARE_PATHS = {"efficiency.hbm": ("hbm_efficiency",), "efficiency.elementwise": ("elementwise_efficiency",),
                  "efficiency.matmul_fp8": ("matmul_fp8",), "efficiency.matmul_misaligned": ("matmul_misaligned",),
                  "ici.link_bandwidth": ("torus", "link_bandwidth")}
LINKS = ("intra_node", "inter_node")


def _get(obj, parts):
    for p in parts:
        obj = obj[p] if isinstance(obj, (dict, MappingProxyType)) else getattr(obj, p)
    return obj


def _set(obj, parts, value):
    """``obj`` (frozen dataclasses and mappings) with the value at ``parts`` replaced."""
    head, rest = parts[0], parts[1:]
    if isinstance(obj, (dict, MappingProxyType)):
        return MappingProxyType({**obj, head: _set(obj[head], rest, value) if rest else value})
    return replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})


def _moves(value, capped: bool) -> list | None:
    """The values one assumed value is moved to: a number (or a mapping of numbers) -+``SWING``, capped at 1
    for an efficiency; a flag, the other way; None for a count or a choice (not varied)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, float):
        return [min(value * f, 1.0) if capped else value * f for f in (1 - SWING, 1 + SWING)]
    if isinstance(value, (dict, MappingProxyType)) and value and all(
            isinstance(v, float) for v in value.values()):
        return [MappingProxyType({k: min(v * f, 1.0) if capped else v * f for k, v in value.items()})
                for f in (1 - SWING, 1 + SWING)]
    return None


def _hardware_cases(cluster: Cluster, key: str) -> list[Cluster] | None:
    """The clusters with one assumed hardware value moved; None if it cannot be varied or a cluster file sets it."""
    hw = cluster.hardware
    if key == "efficiency.matmul":  # with its measured curve, as the rank check moves it
        return [scaled_cluster(cluster, "matmul efficiency", f) for f in (1 - SWING, 1 + SWING)]
    parts = key.split(".")
    if parts[0] in LINKS:
        link = getattr(cluster, parts[0])
        try:
            if _get(link, parts[1:]) != _get(getattr(hw, parts[0]), parts[1:]):
                return None  # the cluster file's value, not the profile's assumption
            moves = _moves(_get(link, parts[1:]), "efficiency" in key)
        except (AttributeError, KeyError, TypeError):
            return None
        return None if moves is None else [replace(cluster, **{parts[0]: _set(link, parts[1:], v)}) for v in moves]
    path = HARDWARE_PATHS.get(key, tuple(parts))
    try:
        moves = _moves(_get(hw, path), "efficiency" in key)
    except (AttributeError, KeyError, TypeError):
        return None
    return None if moves is None else [replace(cluster, hardware=_set(hw, path, v)) for v in moves]


def _software_cases(software, key: str) -> list | None:
    """The Software with one assumed framework value moved; None if it cannot be varied."""
    parts = key.split(".")
    try:
        moves = _moves(_get(software.framework, parts), "efficiency" in key)
    except (AttributeError, KeyError, TypeError):
        return None
    return None if moves is None else [replace(software, framework=_set(software.framework, parts, v))
                                       for v in moves]


def assumed_values(cluster: Cluster, software) -> tuple[list, list]:
    """([(key, [(cluster, software) per move])] of each assumed value varied, [keys named but not varied])."""
    varied, named = [], []
    for key, source in sorted(cluster.hardware.sources.items()):
        if ASSUMED in str(source):
            cases = _hardware_cases(cluster, key)
            if cases is None:
                named.append(key)
            else:
                varied.append((key, [(c, software) for c in cases]))
    for key, source in sorted(software.framework.sources.items()):
        if ASSUMED in str(source):
            cases = _software_cases(software, key)
            if cases is None:
                named.append(f"{software.name}: {key}")
            else:
                varied.append((f"{software.name}: {key}", [(cluster, sw) for sw in cases]))
    return varied, named


def _step_times(model, cluster, layouts, software, headroom) -> np.ndarray:
    times = np.zeros(len(layouts))
    for idx, stacked in stack_layouts(layouts):
        t = estimate(model, cluster, stacked, headroom=headroom, check=False, software=software).step_time_s
        times[idx] = np.broadcast_to(np.asarray(t, float), len(idx))
    return times


def intervals(model, cluster: Cluster, layouts: list, step_times_s, software, headroom: float) -> list[Interval]:
    """The :class:`Interval` of each layout's predicted step time (``step_times_s``, as estimated)."""
    if software is None:
        raise ParplanError("an interval needs the software the step was predicted for")
    base = np.asarray(step_times_s, float)
    e_lo, e_hi, runs, note = error_band(software.name, model.experts > 0)
    varied, named = assumed_values(cluster, software)
    swings = []  # per value: (fall, rise) of each layout, as fractions of its step time
    for key, cases in varied:
        rel = np.array([_step_times(model, c, layouts, sw, headroom) / base - 1 for c, sw in cases])
        swings.append((key, np.maximum(0.0, -rel.min(axis=0)), np.maximum(0.0, rel.max(axis=0))))
    down = np.sqrt(sum((s[1] ** 2 for s in swings), np.zeros(len(layouts))))
    up = np.sqrt(sum((s[2] ** 2 for s in swings), np.zeros(len(layouts))))
    out = []
    for i, t in enumerate(base):
        out.append(Interval(
            step_time_s=float(t), low_s=float(t / (1 + e_hi) * (1 - min(down[i], 1.0))),
            high_s=float(t / (1 + e_lo) * (1 + up[i])), framework=software.name, moe=model.experts > 0, runs=runs,
            error_low=e_lo, error_high=e_hi, group_note=note,
            assumed=tuple((k, float(lo[i]) + 0.0, float(hi[i]) + 0.0) for k, lo, hi in swings),
            not_varied=tuple(named)))
    return out


def estimate_interval(est) -> Interval:
    """The interval of one :class:`Estimate`."""
    return intervals(est.model, est.cluster, [est.layout], [float(est.step_time_s)], est.software,
                     est.headroom)[0]


def overlapping(items: list[Interval]) -> list[int]:
    """The plans (1-based, after the first) whose interval overlaps the first plan's."""
    return [i for i, iv in enumerate(items[1:], 2) if iv.overlaps(items[0])] if items else []


__all__ = ["ASSUMED", "BANDS_FILE", "Interval", "QUANTILES", "assumed_values", "error_band", "estimate_interval",
           "intervals", "overlapping", "validation_errors"]
