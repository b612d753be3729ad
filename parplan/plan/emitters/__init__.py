"""Launch configs for a plan, one module per framework, and the plan back from a user's launch config.

Each training target (``megatron``, ``torchtitan``, ``deepspeed``, ``llm-foundry``, ``maxtext``) exposes
``text(layout, model, software)``, the config that runs the plan, and ``problem(layout, model, software)``,
the one-line reason its framework cannot run it (the layout rules with the target's framework profile),
and ``read``, the inverse. ``serving`` writes vLLM and SGLang flags for a serving plan.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import ParplanError
from ...layouts.layout import Layout
from ...specs.model import ModelSpec
from . import deepspeed, llmfoundry, maxtext, megatron, serving, torchtitan
from .common import LaunchConfig

MODULES = {"megatron": megatron, "torchtitan": torchtitan, "deepspeed": deepspeed, "llm-foundry": llmfoundry,
           "maxtext": maxtext}
TRAIN_TARGETS = tuple(MODULES)
TARGETS = TRAIN_TARGETS + serving.TARGETS
PROFILES = {t: m.PROFILE for t, m in MODULES.items()}  # the framework an --emit target implies


def _module(target: str):
    if target not in MODULES:
        raise ParplanError(f"unknown --emit target '{target}'; choose one of {', '.join(TARGETS)}"
                           + (" (serving targets need --mode inference)" if target in serving.TARGETS else ""))
    return MODULES[target]


def problem(target: str, layout: Layout, model: ModelSpec, software=None) -> str | None:
    """Why ``target``'s framework cannot run this plan, in one line (None: it can)."""
    return _module(target).problem(layout, model, software)


def emit(target: str, layout: Layout, model: ModelSpec, software=None) -> str:
    """The launch config of ``target`` that runs this plan; a ParplanError when that framework cannot."""
    said = problem(target, layout, model, software)
    if said:
        raise ParplanError(f"--emit {target}: {said}")
    return _module(target).text(layout, model, software)


def detect(path: str, source: str) -> str:
    """The format of a launch config, by extension, then by content."""
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        return "torchtitan"
    if suffix == ".json":
        return "deepspeed"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    head = source.lstrip()
    if head.startswith("{"):
        return "deepspeed"
    if head.startswith("[") and "=" in head:
        return "torchtitan"
    if "--" in head:
        return "megatron"
    raise ParplanError(f"{path}: not a torchtitan TOML, DeepSpeed JSON, Megatron flags or YAML config")


def read_config(path: str, world_size: int, model: ModelSpec) -> LaunchConfig:
    """A user's launch config (torchtitan TOML, DeepSpeed JSON, Megatron / NeMo flags or YAML, llm-foundry YAML,
    MaxText YAML)."""
    from ...specs.yamlio import read_yaml

    p = Path(path)
    if not p.is_file():
        raise ParplanError(f"--from-config: no file '{path}'")
    source = p.read_text()
    kind = detect(path, source)
    if kind == "yaml":
        data = read_yaml(p)
        if not isinstance(data, dict):
            raise ParplanError(f"{path}: the YAML must be a mapping")
        if any(k in data for k in llmfoundry.FOUNDRY_MARKS):
            return llmfoundry.read(data, world_size, model)
        if any(str(k).startswith(("ici_", "dcn_")) or k in ("base_config", "per_device_batch_size") for k in data):
            return maxtext.read(data, world_size, model)
        return megatron.read("", world_size, model, yaml_data=data)
    return MODULES[kind].read(source, world_size, model)


__all__ = ["LaunchConfig", "PROFILES", "TARGETS", "TRAIN_TARGETS", "detect", "emit", "problem", "read_config",
           "serving"]
