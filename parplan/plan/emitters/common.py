"""What every emitter shares: whether a framework runs a plan (the layout rules), and a read-back config.

``problem`` asks the one rule set (:func:`parplan.layouts.rules.first_violation` with the framework
profile), so an emitter refuses exactly what the search would refuse for that framework.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from ...errors import ParplanError
from ...layouts.layout import RECOMPUTE, TP_MODES, Layout
from ...layouts.rules import check_recompute_layers, fields, first_violation, shards_hidden
from ...specs.framework_loader import load_framework
from ...specs.model import ModelSpec


@dataclass(frozen=True)
class LaunchConfig:
    """What a launch config says: Layout fields, the framework profile that runs it, its software choices."""

    target: str
    framework: str
    layout: Mapping = field(default_factory=dict)   # Layout keyword arguments
    compiled: bool | None = None
    fp8_recipe: str | None = None
    moe_overlap: str | None = None
    optimizer_states: str | None = None
    moe_dispatcher: str | None = None
    tp_overlap: str | None = None
    fp8_params: bool | None = None
    offload_layers: int | None = None


def launch(target: str, framework: str, layout: dict, compiled=None, fp8_recipe=None, moe_overlap=None,
           optimizer_states=None, moe_dispatcher=None, tp_overlap=None, fp8_params=None,
           offload_layers=None) -> LaunchConfig:
    return LaunchConfig(target, framework, MappingProxyType(dict(layout)), compiled, fp8_recipe, moe_overlap,
                        optimizer_states, moe_dispatcher, tp_overlap, fp8_params, offload_layers)


def profile_for(target: str, software, default: str):
    """The framework whose rules judge the plan: the run's own when it emits ``target``, else ``default``."""
    if software is not None and software.framework.emit == target:
        return software.framework
    return load_framework(default)


def rule_problem(layout: Layout, model: ModelSpec, framework) -> str | None:
    """The first layout rule the framework's code breaks for this plan, or None."""
    a = fields(tp=layout.tp, cp=layout.cp, pp=layout.pp, dp=layout.dp, micro_batch=layout.micro_batch,
               vpp=layout.vpp, sp=layout.sp, tp_mode=TP_MODES.index(layout.tp_mode), zero=layout.zero,
               shard_group=layout.shard_group or 1, hsdp=layout.shard_group is not None, global_batch=layout.batch,
               seq=layout.seq_len or model.seq_len, interleaved=layout.schedule == "interleaved",
               recompute=RECOMPUTE.index(layout.recompute), cp_ring=layout.cp_mode == "ring", ep=layout.size("ep"),
               etp=layout.size("etp"), sp_hidden=shards_hidden(framework), first=layout.first_stage_layers or 0,
               last=layout.last_stage_layers or 0, zb=layout.schedule == "zb-h1", gpipe=layout.schedule == "gpipe")
    try:  # a block recompute the target framework may not run (the layout was checked against another)
        check_recompute_layers(layout.recompute_layers, layout.recompute, getattr(framework, "framework", framework),
                               model.layers)
    except ParplanError as exc:
        return str(exc)
    return first_violation(model, a, framework)


def stage_ends(layout: Layout, model: ModelSpec, framework) -> tuple[int, int] | None:
    """The first and last pipeline rank's layers as the framework runs the plan, or None where they are
    the framework's own split (nothing to write)."""
    from ...layouts.split import default_valid, with_ends

    split = framework.pipeline.split
    if layout.pp == 1 or (layout.first_stage_layers is None and layout.last_stage_layers is None):
        return None
    ran = with_ends(layout, model.layers, split)
    own = with_ends(replace(layout, first_stage_layers=None, last_stage_layers=None), model.layers, split)
    ends = (ran.first_stage_layers, ran.last_stage_layers)
    same = ends == (own.first_stage_layers, own.last_stage_layers)
    return None if same and bool(default_valid(model.layers, layout.pp, layout.vpp, split)) else ends


def software_problem(software, framework) -> str | None:
    """FP8 recipe, compile and activation offload choices the framework does not offer."""
    if software is None:
        return None
    if software.offload_layers and framework.activation_offload is None:
        return f"{framework.name} keeps every activation on the device (no activation offload); drop --offload-layers"
    if software.fp8_recipe and software.fp8_recipe not in framework.fp8.recipes:
        return f"{framework.name} offers the FP8 recipes {', '.join(framework.fp8.recipes) or 'none'}, " \
               f"not {software.fp8_recipe}"
    if software.compiled and not framework.compile.available:
        return f"{framework.name} has no compile mode"
    return None


def whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise ParplanError(f"{what} needs a whole number, got {value!r}") from None
    if value < 1:
        raise ParplanError(f"{what} must be positive, got {value}")
    return value


def unknown(keys, allowed, what: str) -> None:
    """One line naming the first key a launch config has that its framework does not."""
    from ...specs.yamlio import suggest

    for k in keys:
        if k not in allowed:
            raise ParplanError(f"{what}: unknown key '{k}'{suggest(str(k), list(allowed))}")


def agree(what: str, given, expected, source: str) -> None:
    """One line when a config contradicts itself or the model."""
    if given is not None and given != expected:
        raise ParplanError(f"{what} = {given} in the config contradicts {expected} ({source})")


def split_dp(world_size: int, inner: int) -> int:
    if world_size % inner:
        raise ParplanError(f"the config's model-parallel size {inner} does not divide the {world_size} devices")
    return world_size // inner
