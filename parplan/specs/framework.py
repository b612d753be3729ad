"""Software stacks as data: what a training framework actually runs (``frameworks/*.yaml``).

The same layout runs at different speeds on Megatron-Core, torchtitan or plain PyTorch
because they run different kernels and schedule their communication differently. A
framework profile says, each value with its source:

* ``kernels``: the attention kernel; for each element-wise op of a block whether it runs as one
  fused kernel or as the separate aten kernels of eager PyTorch; the loss kernel; whether
  autocast re-casts fp32 weights every forward;
* ``compile``: whether ``torch.compile`` (or XLA) is offered and on by default, and what it fuses;
* ``fp8``: the recipes offered, which GEMMs they cover, how the casts run, whether ZeRO-3
  weights are gathered in FP8;
* ``data_parallel``: the ZeRO stages it runs, how ZeRO-3 shards (flat buffers or per-parameter
  FSDP2 with copy-in/copy-out), when gradients are reduced, bucket sizes, prefetch;
* ``pipeline``: schedules, how activations are sent between stages, which ZeRO stages combine;
* ``parallelism``: the tensor/context-parallel modes its code has, and its sequence parallelism;
* ``recompute``: the activation-checkpointing modes it offers;
* the vocabulary padding rule, the optimizer kernel, how master weights are kept, and a
  per-layer host overhead.

A :class:`Software` is one run's resolved choice: a framework plus the user's overrides
(``--compile``, ``--fp8-recipe``, ``--flash-attention``, ``--fused-kernels``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .registry import shipped, shipped_names
from .yamlio import check_keys, names, number, read_yaml, require_mapping, suggest, text, text_mapping

ELEMENTWISE_OPS = ("norm", "rope", "activation", "residual", "bias", "softmax", "transposes")
IMPLEMENTATIONS = ("fused", "eager")
ATTENTION_KERNELS = ("flash2", "flash3", "cudnn", "splash", "xla")
LOSSES = ("vocab-parallel", "eager-fp32", "fused")
FP8_RECIPES = ("delayed", "current", "tensorwise", "rowwise", "blockwise", "mxfp8")
FP8_CASTS = ("fused", "separate")
WEIGHT_CASTS = ("per-step", "per-microbatch")
ZERO3_IMPLS = ("flat", "per-parameter", "none")
GRAD_REDUCE = ("overlapped", "after-backward")
PREFETCH = ("before", "after")
PP_SENDS = ("scatter-gather", "full", "partitioned")
MASTER_WEIGHTS = ("fp32-copy", "fp32-params")
OPTIMIZERS = ("fused", "foreach")
SEQUENCE_PARALLEL = ("optional", "always", "never")
RECOMPUTE_MODES = ("none", "selective", "full", "selective-op", "selective-layer")
TP_MODES = ("1d", "2d", "3d")
CP_MODES = ("ring", "allgather")
SCHEDULES = ("1f1b", "interleaved", "gpipe")
DEVICE_KINDS = ("gpu", "tpu")
DEFAULT_FRAMEWORK = {"gpu": "megatron-core", "tpu": "jax"}

FRAMEWORK_KEYS = ("name", "aliases", "description", "devices", "emit", "kernels", "compile", "fp8", "data_parallel",
                  "pipeline", "parallelism", "recompute", "vocab", "optimizer", "master_weights",
                  "host_overhead_per_layer_s", "elementwise_efficiency", "sources")
KERNEL_KEYS = ("attention", "flash_attention", "elementwise", "loss", "weight_casts")
COMPILE_KEYS = ("available", "default", "elementwise", "loss")
FP8_KEYS = ("recipes", "default", "casts", "compiled_casts", "weight_cast", "all_gather", "wgrad")
DP_KEYS = ("zero", "zero3", "grad_reduce", "reduce_every_microbatch", "backward_prefetch", "gather_bucket_params",
           "reduce_bucket_params", "grad_dtype", "overlap_param_gather")
PP_KEYS = ("schedules", "send", "zero", "reduce_every_microbatch")
PARALLEL_KEYS = ("tp_modes", "cp_modes", "sequence_parallel")
VOCAB_KEYS = ("multiple", "times_tp")


@dataclass(frozen=True)
class Kernels:
    attention: tuple[str, ...]          # fused attention kernels in the order the framework prefers them
    flash_attention: bool               # whether it runs one by default (else two GEMMs and a softmax)
    elementwise: Mapping[str, str]      # op -> fused | eager
    loss: str
    weight_casts: bool                  # autocast casts fp32 weights to 16 bits every forward


@dataclass(frozen=True)
class Compile:
    available: bool
    default: bool
    elementwise: Mapping[str, str]      # what compiling turns each op into
    loss: str | None                    # the loss kernel once compiled (None: unchanged)


@dataclass(frozen=True)
class FP8:
    recipes: tuple[str, ...]
    default: str | None
    casts: str                          # fused into the producing kernel | separate passes
    compiled_casts: str                 # the same once compiled
    weight_cast: str                    # per-step (cached across micro-batches) | per-microbatch
    all_gather: bool                    # ZeRO-3 weights are gathered in FP8
    wgrad: bool                         # the weight-gradient GEMM runs in FP8 too


@dataclass(frozen=True)
class DataParallelSoftware:
    zero: tuple[int, ...]               # the ZeRO stages it runs
    zero3: str                          # flat | per-parameter (FSDP2) | none
    grad_reduce: Mapping[int, str]      # per ZeRO stage: overlapped (under the backward) | after-backward
    reduce_every_microbatch: bool       # ZeRO-3/FSDP reduce-scatter after every micro-batch's backward
    backward_prefetch: str              # ZeRO-3 backward gathers issued before | after the current layer's grads
    gather_bucket_params: int | None
    reduce_bucket_params: int | None
    grad_dtype: str                     # fp32 | param | fp32-with-bf16 (the dtype gradients are accumulated in)
    overlap_param_gather: bool


@dataclass(frozen=True)
class PipelineSoftware:
    schedules: tuple[str, ...]
    send: str                           # scatter-gather | full | partitioned
    zero: tuple[int, ...]               # ZeRO stages that combine with pipeline parallelism
    reduce_every_microbatch: bool       # under pipelining, ZeRO-3 gradients reduced per micro-batch (else per step)


@dataclass(frozen=True)
class Parallelism:
    tp_modes: tuple[str, ...]
    cp_modes: tuple[str, ...]
    sequence_parallel: str              # optional | always (with tp > 1) | never


@dataclass(frozen=True)
class Framework:
    name: str
    description: str
    devices: tuple[str, ...]
    emit: str | None
    kernels: Kernels
    compile: Compile
    fp8: FP8
    data_parallel: DataParallelSoftware
    pipeline: PipelineSoftware
    parallelism: Parallelism
    recompute: tuple[str, ...]
    vocab_multiple: int
    vocab_times_tp: bool
    optimizer: str
    master_weights: str
    host_overhead_per_layer_s: float = 0.0
    elementwise_efficiency: float | None = None  # fitted by calibrate; None: the hardware profile's
    aliases: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    def padded_vocab(self, vocab: int, tp) -> Any:
        """Vocabulary rows after the framework's padding (Megatron: a multiple of 128 x tp)."""
        import numpy as np

        multiple = self.vocab_multiple * (np.asarray(tp) if self.vocab_times_tp else 1)
        return np.ceil(vocab / multiple) * multiple


@dataclass(frozen=True)
class Software:
    """One run's software: a framework and the choices the user made within it."""

    framework: Framework
    compiled: bool
    fp8_recipe: str | None              # None: not an FP8 run
    flash_attention: bool
    elementwise: Mapping[str, str]      # op -> fused | eager, after compile and overrides
    loss: str
    notes: tuple[str, ...] = ()         # what came from the framework's defaults

    @property
    def name(self) -> str:
        return self.framework.name

    @property
    def attention_kernels(self) -> tuple[str, ...]:
        """The fused attention kernels in the framework's order of preference; () when attention is unfused."""
        return self.framework.kernels.attention if self.flash_attention else ()

    @property
    def fp8_casts(self) -> str:
        return self.framework.fp8.compiled_casts if self.compiled else self.framework.fp8.casts

    def describe(self) -> str:
        parts = [self.name, "compiled" if self.compiled else "eager" if self.framework.compile.available else ""]
        if self.fp8_recipe:
            parts.append(f"fp8 {self.fp8_recipe}")
        parts.append(f"attention {'/'.join(self.attention_kernels) or 'unfused'}")
        return ", ".join(p for p in parts if p)


def resolve_software(framework: Framework, *, dtype: str = "bf16", compiled: bool | None = None,
                     fp8_recipe: str | None = None, flash_attention: bool | None = None,
                     fused_kernels: bool | None = None, device_kind: str | None = None) -> Software:
    """A framework with the user's overrides applied; each default taken from the profile is noted."""
    fw = framework
    notes = []
    if device_kind is not None and device_kind not in fw.devices:
        raise ParplanError(f"framework '{fw.name}' runs on {', '.join(fw.devices)}, not on {device_kind}s")
    if compiled is None:
        compiled = fw.compile.default
    elif compiled and not fw.compile.available:
        raise ParplanError(f"framework '{fw.name}' has no compile mode; drop --compile")
    if dtype == "fp8":
        if not fw.fp8.recipes:
            raise ParplanError(f"framework '{fw.name}' has no FP8 training recipe")
        if fp8_recipe is None:
            fp8_recipe = fw.fp8.default
            notes.append(f"fp8 recipe {fp8_recipe} (the framework's default)")
        elif fp8_recipe not in fw.fp8.recipes:
            raise ParplanError(f"framework '{fw.name}' offers the FP8 recipes {', '.join(fw.fp8.recipes)}; "
                               f"not '{fp8_recipe}'{suggest(fp8_recipe, fw.fp8.recipes)}")
    elif fp8_recipe is not None:
        raise ParplanError(f"--fp8-recipe {fp8_recipe} needs --dtype fp8")
    if flash_attention is None:
        flash_attention = fw.kernels.flash_attention
    elif flash_attention and not fw.kernels.attention:
        raise ParplanError(f"framework '{fw.name}' has no fused attention kernel")
    elementwise = dict(fw.kernels.elementwise)
    loss = fw.kernels.loss
    if compiled:
        elementwise.update(fw.compile.elementwise)
        loss = fw.compile.loss or loss
    if fused_kernels is not None:
        elementwise = {op: ("fused" if fused_kernels else "eager") for op in ELEMENTWISE_OPS}
    return Software(framework=fw, compiled=bool(compiled), fp8_recipe=fp8_recipe if dtype == "fp8" else None,
                    flash_attention=bool(flash_attention), elementwise=MappingProxyType(elementwise), loss=loss,
                    notes=tuple(notes))


# --------------------------------------------------------------------------- loading


def framework_names() -> list[str]:
    return shipped_names("frameworks")


def _choices(data, key, what, allowed, default=()) -> tuple[str, ...]:
    values = names(data, key, what) if key in data else tuple(default)
    for v in values:
        if v not in allowed:
            raise ParplanError(f"{what}: '{key}' takes {', '.join(allowed)}; got '{v}'{suggest(v, allowed)}")
    return values


def _flag(data, key, what, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParplanError(f"{what}: field '{key}' must be true or false, got {value!r}")
    return value


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


def framework_from_dict(data: Any, what: str, path: str = "") -> Framework:
    data = require_mapping(data, what)
    check_keys(data, FRAMEWORK_KEYS, what)
    name = text(data, "name", what)
    k = require_mapping(data.get("kernels") or {}, f"{what}: kernels")
    check_keys(k, KERNEL_KEYS, f"{what}: kernels")
    attention = _choices(k, "attention", f"{what}: kernels", ATTENTION_KERNELS)
    kernels = Kernels(attention=attention,
                      flash_attention=_flag(k, "flash_attention", f"{what}: kernels", bool(attention)),
                      elementwise=MappingProxyType(_impls(k, "elementwise", f"{what}: kernels", True)),
                      loss=text(k, "loss", f"{what}: kernels", choices=LOSSES),
                      weight_casts=_flag(k, "weight_casts", f"{what}: kernels", False))
    c = require_mapping(data.get("compile") or {}, f"{what}: compile")
    check_keys(c, COMPILE_KEYS, f"{what}: compile")
    compile_ = Compile(available=_flag(c, "available", f"{what}: compile", False),
                       default=_flag(c, "default", f"{what}: compile", False),
                       elementwise=MappingProxyType(_impls(c, "elementwise", f"{what}: compile", False)),
                       loss=text(c, "loss", f"{what}: compile", required=False, choices=LOSSES))
    if compile_.default and not compile_.available:
        raise ParplanError(f"{what}: compile.default is true but compile.available is false")
    f = require_mapping(data.get("fp8") or {}, f"{what}: fp8")
    check_keys(f, FP8_KEYS, f"{what}: fp8")
    recipes = _choices(f, "recipes", f"{what}: fp8", FP8_RECIPES)
    default = text(f, "default", f"{what}: fp8", required=False, choices=recipes or None)
    if recipes and default is None:
        raise ParplanError(f"{what}: fp8.default must name one of its recipes ({', '.join(recipes)})")
    casts = text(f, "casts", f"{what}: fp8", required=False, choices=FP8_CASTS, default="separate")
    fp8 = FP8(recipes=recipes, default=default, casts=casts,
              compiled_casts=text(f, "compiled_casts", f"{what}: fp8", required=False, choices=FP8_CASTS,
                                  default=casts),
              weight_cast=text(f, "weight_cast", f"{what}: fp8", required=False, choices=WEIGHT_CASTS,
                               default="per-microbatch"),
              all_gather=_flag(f, "all_gather", f"{what}: fp8", False), wgrad=_flag(f, "wgrad", f"{what}: fp8", True))
    d = require_mapping(data.get("data_parallel") or {}, f"{what}: data_parallel")
    w = f"{what}: data_parallel"
    check_keys(d, DP_KEYS, w)
    dp = DataParallelSoftware(
        zero=_zero_stages(d, "zero", w, [0, 1, 2, 3]),
        zero3=text(d, "zero3", w, choices=ZERO3_IMPLS),
        grad_reduce=_per_stage(d, "grad_reduce", w, GRAD_REDUCE),
        reduce_every_microbatch=_flag(d, "reduce_every_microbatch", w, True),
        backward_prefetch=text(d, "backward_prefetch", w, required=False, choices=PREFETCH, default="before"),
        gather_bucket_params=number(d, "gather_bucket_params", w, required=False, integer=True, maximum=1e13),
        reduce_bucket_params=number(d, "reduce_bucket_params", w, required=False, integer=True, maximum=1e13),
        grad_dtype=text(d, "grad_dtype", w, choices=("fp32", "param", "fp32-with-bf16")),
        overlap_param_gather=_flag(d, "overlap_param_gather", w, True))
    if 3 in dp.zero and dp.zero3 == "none":
        raise ParplanError(f"{w}: runs ZeRO-3 but zero3 is 'none'")
    p = require_mapping(data.get("pipeline") or {}, f"{what}: pipeline")
    check_keys(p, PP_KEYS, f"{what}: pipeline")
    pipeline = PipelineSoftware(schedules=_choices(p, "schedules", f"{what}: pipeline", SCHEDULES, ("1f1b",)),
                                send=text(p, "send", f"{what}: pipeline", choices=PP_SENDS),
                                zero=_zero_stages(p, "zero", f"{what}: pipeline", list(dp.zero)),
                                reduce_every_microbatch=_flag(p, "reduce_every_microbatch", f"{what}: pipeline",
                                                              dp.reduce_every_microbatch))
    q = require_mapping(data.get("parallelism") or {}, f"{what}: parallelism")
    check_keys(q, PARALLEL_KEYS, f"{what}: parallelism")
    parallel = Parallelism(tp_modes=_choices(q, "tp_modes", f"{what}: parallelism", TP_MODES, ("1d",)),
                           cp_modes=_choices(q, "cp_modes", f"{what}: parallelism", CP_MODES, ()),
                           sequence_parallel=text(q, "sequence_parallel", f"{what}: parallelism",
                                                  choices=SEQUENCE_PARALLEL))
    v = require_mapping(data.get("vocab") or {}, f"{what}: vocab")
    check_keys(v, VOCAB_KEYS, f"{what}: vocab")
    devices = _choices(data, "devices", what, DEVICE_KINDS, ("gpu",))
    eff = number(data, "elementwise_efficiency", what, required=False, maximum=1.0)
    return Framework(
        name=name, description=str(data.get("description", "")), devices=devices,
        emit=text(data, "emit", what, required=False), kernels=kernels, compile=compile_, fp8=fp8,
        data_parallel=dp, pipeline=pipeline, parallelism=parallel,
        recompute=_choices(data, "recompute", what, RECOMPUTE_MODES, ("none", "full")),
        vocab_multiple=number(v, "multiple", f"{what}: vocab", required=False, integer=True, default=1,
                              maximum=1_000_000),
        vocab_times_tp=_flag(v, "times_tp", f"{what}: vocab", False),
        optimizer=text(data, "optimizer", what, choices=OPTIMIZERS),
        master_weights=text(data, "master_weights", what, choices=MASTER_WEIGHTS),
        host_overhead_per_layer_s=number(data, "host_overhead_per_layer_s", what, required=False, positive=False,
                                         default=0.0, maximum=1.0),
        elementwise_efficiency=eff,
        aliases=names(data, "aliases", what), sources=MappingProxyType(text_mapping(data, "sources", what)),
        path=path)


@lru_cache(maxsize=64)
def _load_path(path: Path) -> Framework:
    return framework_from_dict(read_yaml(path), str(path), str(path))


def load_framework(name_or_path: str) -> Framework:
    """A shipped framework by name or alias, or a framework YAML file."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ParplanError("framework name must be a non-empty string")
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ParplanError(f"framework file not found: {name_or_path}")
        return _load_path(path.resolve())
    table = shipped("frameworks")
    key = name_or_path.lower()
    if key not in table:
        raise ParplanError(f"unknown framework '{name_or_path}'{suggest(key, table)}; "
                           f"choose from {', '.join(framework_names())} or a YAML file")
    return _load_path(table[key])


def default_framework(device_kind: str) -> str:
    """The framework a plan assumes when none is named: Megatron-Core on GPUs, JAX/XLA on TPUs."""
    return DEFAULT_FRAMEWORK.get(device_kind, "megatron-core")


def with_elementwise_efficiency(framework: Framework, efficiency: float, host_overhead_s: float,
                                source: str) -> Framework:
    """The profile with fitted element-wise efficiency and per-layer host overhead (``calibrate``)."""
    sources = dict(framework.sources)
    sources["elementwise_efficiency"] = source
    sources["host_overhead_per_layer_s"] = source
    return replace(framework, elementwise_efficiency=efficiency, host_overhead_per_layer_s=host_overhead_s,
                   sources=MappingProxyType(sources))
