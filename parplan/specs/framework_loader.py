"""Reading a framework profile: a shipped name or alias, or a YAML file (``frameworks/*.yaml``).

A profile describes training (its ``kernels``, ``data_parallel`` ... sections), serving (its
``serving:`` section, :mod:`parplan.specs.serving_stack`), or both; ``load_framework`` reads the
training part and ``load_serving`` the serving part of the same file.

A profile may ``extends:`` another (a shipped name, or a YAML path relative to its own file): it is the
other's data with its own laid over it, mapping by mapping, so a release or a user's calibration of a
stack states only what differs. Its name, aliases and description are its own; sources merge by key, a value
it sets dropping the citation it inherited for it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .framework import (ACTIVATION_SHARDS, ATTENTION_KERNELS, COMPILE_KEYS, CP_MODES, DEVICE_KINDS, DP_KEYS,
    ELEMENTWISE_OPS, FP8, FP8_CASTS, FP8_KEYS, FP8_RECIPES, FRAMEWORK_KEYS, GRAD_REDUCE, IMPLEMENTATIONS, KERNEL_KEYS,
    LOSSES, GRADIENTS, MASTER_WEIGHTS, OPTIMIZER_STATES, OPTIMIZERS, PARALLEL_KEYS, PP_KEYS, PP_SENDS, PREFETCH,
    PROJECTIONS, RECOMPUTE_MODES, SCHEDULES,
    SEQUENCE_PARALLEL, SPLIT_CHUNKS, SPLIT_DEFAULTS, SPLIT_ENDS, SPLIT_KEYS, TP_MODES, VOCAB_KEYS, WEIGHT_CASTS,
    ZERO3_IMPLS, Compile, DataParallelSoftware, Framework, Kernels, Parallelism, PipelineSoftware, PipelineSplit,
    EXPERT_GEMMS, EXPERT_TP, HOST_KEYS, MOE_DISPATCHERS, MOE_KEYS, MOE_OVERLAPS, HostTimes, MoeSoftware)
from .registry import shipped, shipped_names
from .serving_stack import ServingStack, serving_from_dict
from .offload import offload_from_dict
from .tp_overlap import tp_overlap_from_dict
from .yamlio import check_keys, choices, flag, names, number, read_yaml, require_mapping, suggest, text, text_mapping

TRAINING_MARK = "kernels"  # a profile with this section describes training


MAX_EXTENDS = 8  # a chain of profiles extending profiles longer than this is refused


@lru_cache(maxsize=1)
def _shipped_data() -> dict[str, Any]:
    return {name: profile_data(shipped("frameworks")[name]) for name in shipped_names("frameworks")}


def profile_data(path: Path, _chain: tuple[Path, ...] = ()) -> Any:
    """A profile file's data with the profile it ``extends`` laid under it (``_chain``: the files above it)."""
    data = read_yaml(path)
    if not isinstance(data, dict) or "extends" not in data:
        return data
    base_name = data["extends"]
    if not isinstance(base_name, str) or not base_name:
        raise ParplanError(f"{path}: extends must name a framework profile or a YAML file, got {base_name!r}")
    if len(_chain) >= MAX_EXTENDS:
        raise ParplanError(f"{path}: more than {MAX_EXTENDS} profiles extend one another")
    if base_name.endswith((".yaml", ".yml")):  # a file beside this one
        base = (Path(path).parent / base_name).resolve()
        if not base.is_file():
            raise ParplanError(f"{path}: extends '{base_name}', but {base} is not a file")
    else:
        base = _profile_path(base_name, lambda: shipped_names("frameworks"))
    if base in _chain + (Path(path).resolve(),):
        raise ParplanError(f"{path}: extends '{base_name}', which extends it back")
    under = dict(require_mapping(profile_data(base, _chain + (Path(path).resolve(),)), str(base)))
    own = {k: v for k, v in data.items() if k not in ("extends", "sources")}
    # A value the profile sets drops the citation it inherited for that value and anything under it.
    inherited = {k: v for k, v in (under.get("sources") or {}).items()
                 if not any(k == p or k.startswith(p + ".") for p in _leaf_paths(own))}
    merged = _laid_over({k: v for k, v in under.items() if k not in NOT_INHERITED}, own)
    merged["sources"] = {**inherited, **(data.get("sources") or {})}
    return merged


NOT_INHERITED = ("name", "aliases", "description", "sources")  # a profile's own (an alias names one file)


def _laid_over(base: dict, top: dict) -> dict:
    """``base`` with ``top`` over it: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _laid_over(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _leaf_paths(data: dict, prefix: str = "") -> list[str]:
    """The dotted paths of a mapping's values that are not mappings (``kernels.loss``)."""
    out = []
    for k, v in data.items():
        path = f"{prefix}{k}"
        out += _leaf_paths(v, path + ".") if isinstance(v, dict) and v else [path]
    return out


def framework_names() -> list[str]:
    """The shipped training frameworks."""
    return [n for n, d in _shipped_data().items() if isinstance(d, dict) and TRAINING_MARK in d]


def serving_names() -> list[str]:
    """The shipped serving stacks (profiles with a ``serving:`` section)."""
    return [n for n, d in _shipped_data().items() if isinstance(d, dict) and "serving" in d]


def _expert_gemms(m, what) -> str:
    """``expert_gemms`` (one of EXPERT_GEMMS), or the older ``grouped_gemm: true|false`` (grouped | loop)."""
    if "expert_gemms" in m and "grouped_gemm" in m:
        raise ParplanError(f"{what}: give expert_gemms or grouped_gemm, not both")
    if "grouped_gemm" in m:
        return "grouped" if flag(m, "grouped_gemm", what, False) else "loop"
    return text(m, "expert_gemms", what, required=False, choices=EXPERT_GEMMS, default="loop")


MAX_HOST_S = 1.0  # a second of host time per layer or read is no host's: a typo in the unit


def _seconds(data, key, what) -> float:
    """A host time that may be 0 (absent: 0), never negative."""
    value = float(number(data, key, what, required=False, positive=False, default=0.0, maximum=MAX_HOST_S))
    if value < 0:
        raise ParplanError(f"{what}: field '{key}' must be 0 or more seconds, got {value!r}")
    return value


def _host(data, what) -> HostTimes:
    """The ``host`` block: each key a [forward, backward] pair of seconds, 0 or more (a key left out: 0, 0)."""
    h = require_mapping(data["host"], f"{what}: host")
    check_keys(h, HOST_KEYS, f"{what}: host")
    pairs = {}
    for key in HOST_KEYS:
        v = h.get(key, [0.0, 0.0])
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ParplanError(f"{what}: host: {key} must be [forward, backward] seconds, got {v!r}")
        for direction, x in zip(("forward", "backward"), v):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= MAX_HOST_S:
                raise ParplanError(f"{what}: host: {key} {direction} must be 0 to {MAX_HOST_S:g} seconds, "
                                   f"got {x!r}")
        pairs[key] = (float(v[0]), float(v[1]))
    return HostTimes(**pairs)


def _recipe_casts(f, recipes, what) -> Mapping[str, str]:
    """``{recipe: casts}`` for recipes whose casts differ from the profile's ``casts``."""
    table = require_mapping({} if f.get("recipe_casts") is None else f["recipe_casts"], what)
    check_keys(table, recipes, what)
    return MappingProxyType({r: text(table, r, what, choices=FP8_CASTS) for r in table})


def _impls(data, key, what, complete: bool) -> dict[str, str]:
    table = data.get(key) or {}
    table = require_mapping(table, f"{what}.{key}")
    check_keys(table, ELEMENTWISE_OPS, f"{what}.{key}")
    out = {}
    for op in ELEMENTWISE_OPS:
        if op in table:
            out[op] = text(table, op, f"{what}.{key}", choices=IMPLEMENTATIONS)
        elif complete:
            raise ParplanError(f"{what}.{key}: missing op '{op}' (fused or eager)")
    return out


def _per_stage(data, key, what, allowed) -> Mapping[int, str]:
    """One value for every ZeRO stage, or a mapping of stage -> value."""
    value = data.get(key)
    if isinstance(value, str):
        value = {z: value for z in range(4)}
    if not isinstance(value, Mapping):
        raise ParplanError(f"{what}: '{key}' must be one of {', '.join(allowed)} or a mapping of ZeRO stage to one")
    out = {}
    for z in range(4):
        v = value.get(z, value.get(str(z)))
        if v is None:
            raise ParplanError(f"{what}: '{key}' gives no value for ZeRO stage {z}")
        if v not in allowed:
            raise ParplanError(f"{what}: '{key}' takes {', '.join(allowed)}; got '{v}'{suggest(str(v), allowed)}")
        out[z] = v
    return MappingProxyType(out)


def _zero_stages(data, key, what, default) -> tuple[int, ...]:
    value = data.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(z, int) and not isinstance(z, bool)
                                                          and 0 <= z <= 3 for z in value):
        raise ParplanError(f"{what}: '{key}' must be a list of ZeRO stages 0-3, got {value!r}")
    return tuple(sorted(set(value)))


def _split(data, what) -> PipelineSplit:
    """``pipeline.split``: the framework's default layer split, how it sets the ends' layers, its chunks."""
    data = require_mapping(data or {}, what)
    check_keys(data, SPLIT_KEYS, what)
    split = PipelineSplit(default=text(data, "default", what, required=False, choices=SPLIT_DEFAULTS, default="even"),
                          ends=choices(data, "ends", what, SPLIT_ENDS, ()),
                          chunks=text(data, "chunks", what, required=False, choices=SPLIT_CHUNKS, default="equal"),
                          ends_weight=number(data, "ends_weight", what, required=False, integer=True, positive=False,
                                             default=0, maximum=1000))
    if split.ends_weight and split.default != "spread":
        raise ParplanError(f"{what}: ends_weight applies to the 'spread' default split only")
    return split


def framework_from_dict(data: Any, what: str, path: str = "") -> Framework:
    data = require_mapping(data, what)
    check_keys(data, FRAMEWORK_KEYS, what)
    name = text(data, "name", what)
    k = require_mapping(data.get("kernels") or {}, f"{what}: kernels")
    check_keys(k, KERNEL_KEYS, f"{what}: kernels")
    attention = choices(k, "attention", f"{what}: kernels", ATTENTION_KERNELS)
    kernels = Kernels(attention=attention,
                      flash_attention=flag(k, "flash_attention", f"{what}: kernels", bool(attention)),
                      elementwise=MappingProxyType(_impls(k, "elementwise", f"{what}: kernels", True)),
                      loss=text(k, "loss", f"{what}: kernels", choices=LOSSES),
                      weight_casts=flag(k, "weight_casts", f"{what}: kernels", False),
                      projections=text(k, "projections", f"{what}: kernels", required=False, choices=PROJECTIONS,
                                       default="fused"))
    c = require_mapping(data.get("compile") or {}, f"{what}: compile")
    check_keys(c, COMPILE_KEYS, f"{what}: compile")
    compile_ = Compile(available=flag(c, "available", f"{what}: compile", False),
                       default=flag(c, "default", f"{what}: compile", False),
                       elementwise=MappingProxyType(_impls(c, "elementwise", f"{what}: compile", False)),
                       loss=text(c, "loss", f"{what}: compile", required=False, choices=LOSSES),
                       host=_host(c, f"{what}: compile") if c.get("host") is not None else None)
    if compile_.default and not compile_.available:
        raise ParplanError(f"{what}: compile.default is true but compile.available is false")
    f = require_mapping(data.get("fp8") or {}, f"{what}: fp8")
    check_keys(f, FP8_KEYS, f"{what}: fp8")
    recipes = choices(f, "recipes", f"{what}: fp8", FP8_RECIPES)
    default = text(f, "default", f"{what}: fp8", required=False, choices=recipes or None)
    if recipes and default is None:
        raise ParplanError(f"{what}: fp8.default must name one of its recipes ({', '.join(recipes)})")
    casts = text(f, "casts", f"{what}: fp8", required=False, choices=FP8_CASTS, default="separate")
    saves = flag(f, "saves_fp8_inputs", f"{what}: fp8", False)
    fp8 = FP8(recipes=recipes, default=default, casts=casts,
              compiled_casts=text(f, "compiled_casts", f"{what}: fp8", required=False, choices=FP8_CASTS,
                                  default=casts),
              weight_cast=text(f, "weight_cast", f"{what}: fp8", required=False, choices=WEIGHT_CASTS,
                               default="per-microbatch"),
              all_gather=flag(f, "all_gather", f"{what}: fp8", False), wgrad=flag(f, "wgrad", f"{what}: fp8", True),
              params=flag(f, "params", f"{what}: fp8", False),
              saves_fp8_inputs=saves,
              compiled_saves_fp8_inputs=flag(f, "compiled_saves_fp8_inputs", f"{what}: fp8", saves),
              experts_save_fp8_inputs=flag(f, "experts_save_fp8_inputs", f"{what}: fp8", False),
              experts=flag(f, "experts", f"{what}: fp8", True),
              weights_from_master=flag(f, "weights_from_master", f"{what}: fp8", False),
              recipe_casts=_recipe_casts(f, recipes, f"{what}: fp8.recipe_casts"))
    d = require_mapping(data.get("data_parallel") or {}, f"{what}: data_parallel")
    w = f"{what}: data_parallel"
    check_keys(d, DP_KEYS, w)
    dp = DataParallelSoftware(
        zero=_zero_stages(d, "zero", w, [0, 1, 2, 3]),
        zero3=text(d, "zero3", w, choices=ZERO3_IMPLS),
        grad_reduce=_per_stage(d, "grad_reduce", w, GRAD_REDUCE),
        reduce_every_microbatch=flag(d, "reduce_every_microbatch", w, True),
        backward_prefetch=text(d, "backward_prefetch", w, required=False, choices=PREFETCH, default="before"),
        gather_bucket_params=number(d, "gather_bucket_params", w, required=False, integer=True, maximum=1e13),
        reduce_bucket_params=number(d, "reduce_bucket_params", w, required=False, integer=True, maximum=1e13),
        max_live_params=number(d, "max_live_params", w, required=False, integer=True, maximum=1e13),
        grad_dtype=text(d, "grad_dtype", w, choices=("fp32", "param", "fp32-with-bf16")),
        overlap_param_gather=flag(d, "overlap_param_gather", w, True))
    if 3 in dp.zero and dp.zero3 == "none":
        raise ParplanError(f"{w}: runs ZeRO-3 but zero3 is 'none'")
    p = require_mapping(data.get("pipeline") or {}, f"{what}: pipeline")
    check_keys(p, PP_KEYS, f"{what}: pipeline")
    pipeline = PipelineSoftware(schedules=choices(p, "schedules", f"{what}: pipeline", SCHEDULES, ("1f1b",)),
                                send=text(p, "send", f"{what}: pipeline", choices=PP_SENDS),
                                zero=_zero_stages(p, "zero", f"{what}: pipeline", list(dp.zero)),
                                reduce_every_microbatch=flag(p, "reduce_every_microbatch", f"{what}: pipeline",
                                                              dp.reduce_every_microbatch),
                                split=_split(p.get("split"), f"{what}: pipeline.split"),
                                micro_batch=number(p, "micro_batch", f"{what}: pipeline", required=False,
                                                   integer=True, maximum=1_000_000),
                                micro_batches=text(p, "micro_batches", f"{what}: pipeline", required=False,
                                                   choices=("stages",)))
    if pipeline.micro_batch is not None and pipeline.micro_batches is not None:
        raise ParplanError(f"{what}: pipeline gives both micro_batch and micro_batches; a framework documents one")
    q = require_mapping(data.get("parallelism") or {}, f"{what}: parallelism")
    check_keys(q, PARALLEL_KEYS, f"{what}: parallelism")
    parallel = Parallelism(tp_modes=choices(q, "tp_modes", f"{what}: parallelism", TP_MODES, ("1d",)),
                           cp_modes=choices(q, "cp_modes", f"{what}: parallelism", CP_MODES, ()),
                           sequence_parallel=text(q, "sequence_parallel", f"{what}: parallelism",
                                                  choices=SEQUENCE_PARALLEL),
                           tp_overlap=tp_overlap_from_dict(q, f"{what}: parallelism"),
                           activation_shard=text(q, "activation_shard", f"{what}: parallelism", required=False,
                                                 choices=ACTIVATION_SHARDS, default="sequence"))
    v = require_mapping(data.get("vocab") or {}, f"{what}: vocab")
    check_keys(v, VOCAB_KEYS, f"{what}: vocab")
    m = require_mapping(data.get("moe") or {}, f"{what}: moe")
    check_keys(m, MOE_KEYS, f"{what}: moe")
    moe = MoeSoftware(expert_parallel=flag(m, "expert_parallel", f"{what}: moe", False),
                      expert_tensor_parallel=text(m, "expert_tensor_parallel", f"{what}: moe", required=False,
                                                  choices=EXPERT_TP, default="one"),
                      expert_gemms=_expert_gemms(m, f"{what}: moe"),
                      permute=text(m, "permute", f"{what}: moe", required=False, choices=IMPLEMENTATIONS,
                                   default="fused"),
                      bias=text(m, "bias", f"{what}: moe", required=False, choices=IMPLEMENTATIONS, default="fused"),
                      overlaps=choices(m, "overlaps", f"{what}: moe", MOE_OVERLAPS, ("none",)),
                      overlap=text(m, "overlap", f"{what}: moe", required=False, choices=MOE_OVERLAPS,
                                   default="none"),
                      dispatchers=choices(m, "dispatchers", f"{what}: moe", MOE_DISPATCHERS, ("alltoall",)),
                      sync_s=_seconds(m, "sync_s", f"{what}: moe"))
    if moe.overlap not in moe.overlaps:
        raise ParplanError(f"{what}: moe: overlap '{moe.overlap}' is not one of its overlaps "
                           f"({', '.join(moe.overlaps)})")
    devices = choices(data, "devices", what, DEVICE_KINDS, ("gpu",))
    states = choices(data, "optimizer_states", what, OPTIMIZER_STATES, ("fp32",))
    if states != ("fp32",) and data.get("optimizer") == "foreach":
        raise ParplanError(f"{what}: optimizer_states: the foreach optimizer keeps fp32 state only")
    eff = number(data, "elementwise_efficiency", what, required=False, maximum=1.0)
    return Framework(
        name=name, description=str(data.get("description", "")), devices=devices,
        emit=text(data, "emit", what, required=False), kernels=kernels, compile=compile_, fp8=fp8,
        data_parallel=dp, pipeline=pipeline, parallelism=parallel,
        recompute=choices(data, "recompute", what, RECOMPUTE_MODES, ("none", "full")),
        recompute_layers=flag(data, "recompute_layers", what, False),
        vocab_multiple=number(v, "multiple", f"{what}: vocab", required=False, integer=True, default=1,
                              maximum=1_000_000),
        vocab_times_tp=flag(v, "times_tp", f"{what}: vocab", False),
        optimizer=text(data, "optimizer", what, choices=OPTIMIZERS),
        master_weights=text(data, "master_weights", what, choices=MASTER_WEIGHTS),
        gradients=text(data, "gradients", what, required=False, choices=GRADIENTS, default="persistent"),
        host_overhead_per_layer_s=_seconds(data, "host_overhead_per_layer_s", what),
        host=_host(data, what) if data.get("host") is not None else HostTimes(),
        elementwise_efficiency=eff,
        aliases=names(data, "aliases", what), sources=MappingProxyType(text_mapping(data, "sources", what)),
        path=path, moe=moe, mtp=flag(data, "mtp", what, False), optimizer_states=states,
        activation_offload=offload_from_dict(data.get("activation_offload"), f"{what}: activation_offload",
                                             RECOMPUTE_MODES))


@lru_cache(maxsize=64)
def _load_path(path: Path) -> Framework:
    data = profile_data(path)
    if isinstance(data, dict) and TRAINING_MARK not in data and "serving" in data:
        raise ParplanError(f"framework '{data.get('name', path.stem)}' is a serving stack (use it with --mode "
                           f"inference); training frameworks: {', '.join(framework_names())}")
    return framework_from_dict(data, str(path), str(path))


@lru_cache(maxsize=64)
def _load_serving_path(path: Path) -> ServingStack:
    data = require_mapping(profile_data(path), str(path))
    name = text(data, "name", str(path))
    if "serving" not in data:
        raise ParplanError(f"framework '{name}' has no serving section; serving stacks: {', '.join(serving_names())}")
    devices = choices(data, "devices", str(path), DEVICE_KINDS, ("gpu",))
    return serving_from_dict(data["serving"], name, str(path), text_mapping(data, "sources", str(path)), str(path),
                             devices)


def _profile_path(name_or_path: str, choices) -> Path:
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ParplanError("framework name must be a non-empty string")
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ParplanError(f"framework file not found: {name_or_path}")
        return path.resolve()
    table = shipped("frameworks")
    key = name_or_path.lower()
    if key not in table:
        raise ParplanError(f"unknown framework '{name_or_path}'{suggest(key, table)}; "
                           f"choose from {', '.join(choices())} or a YAML file")
    return table[key]


def profile_kinds(name_or_path: str) -> tuple[bool, bool]:
    """(describes training, describes serving) of a shipped framework or a framework YAML file."""
    data = profile_data(_profile_path(name_or_path, lambda: shipped_names("frameworks")))
    return isinstance(data, dict) and TRAINING_MARK in data, isinstance(data, dict) and "serving" in data


def load_framework(name_or_path: str) -> Framework:
    """A shipped framework by name or alias, or a framework YAML file."""
    return _load_path(_profile_path(name_or_path, framework_names))


def load_serving(name_or_path: str) -> ServingStack:
    """The serving stack of a shipped framework (by name or alias) or of a framework YAML file."""
    return _load_serving_path(_profile_path(name_or_path, serving_names))


