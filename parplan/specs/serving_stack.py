"""Serving stacks as data: what a serving engine runs that changes prefill and decode time.

The ``serving:`` section of a framework profile (``frameworks/*.yaml``) says, each value with its
source in the profile's ``sources`` (keys ``serving.<field>``):

* ``prefill_attention``: the fused attention kernels of a prefill, in the engine's order of
  preference. The hardware profile's measured curve of the first one it has sets the rate
  (``attention_kernels``); with none measured, FlashAttention-2's published fractions.
* ``decode_attention``: the decode kernel over the (paged) KV cache: its name, the fraction of the
  dense kernel's HBM bandwidth its paged reads reach (``paged_bandwidth``), how it splits the keys
  over the compute units (``split``: ``heuristic`` is FlashAttention's ``num_splits_heuristic``,
  ``fill`` splits until every unit has work, ``none`` never) and the kernels one call launches
  when it splits (a split pass and a combine pass).
* ``kv_block_tokens``: tokens per KV-cache block (page); a sequence holds whole blocks.
* ``cuda_graphs``: whether decode steps can be replayed as CUDA graphs, whether they are by
  default, and the largest batch captured (larger batches run eagerly).
* ``launch_s``: host time to issue one kernel outside a graph (the framework's dispatch plus
  ``cudaLaunchKernel``); a graph replays the whole step for one ``graph_launch_s``.
* ``step_overhead_s`` and ``step_overhead_overlapped``: host work per decode step (scheduling,
  input preparation, output processing) and whether it runs while the GPU computes the next step.
* ``sampling_passes``: passes over the fp32 logits of each step's sampler.
* ``elementwise``: fused or eager for each element-wise op, as in the training ``kernels`` table.

A :class:`ServingSoftware` is one run's resolved choice: the stack plus ``--cuda-graphs`` and
``--fused-kernels``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .framework import ATTENTION_KERNELS, ELEMENTWISE_OPS, IMPLEMENTATIONS
from .yamlio import check_keys, number, require_mapping, suggest, text

SERVING_KEYS = ("engine", "prefill_attention", "decode_attention", "kv_block_tokens", "cuda_graphs", "launch_s",
                "graph_launch_s", "step_overhead_s", "step_overhead_overlapped", "sampling_passes", "elementwise")
DECODE_KEYS = ("kernel", "paged_bandwidth", "split", "split_kernels")
GRAPH_KEYS = ("available", "default", "max_batch")
SPLITS = ("heuristic", "fill", "none")
# Prefill kernels a stack may name: the training kernels plus those serving engines add.
PREFILL_KERNELS = ATTENTION_KERNELS + ("flash3", "flashinfer", "trtllm-fmha")
MAX_OVERHEAD_S = 1.0
# The stack a serving estimate assumes when none is named: vLLM on GPUs (the most deployed open engine,
# and the default of ``--emit``), JAX/XLA on TPUs.
DEFAULT_SERVING = {"gpu": "vllm", "tpu": "jax"}


def default_serving(device_kind: str) -> str:
    return DEFAULT_SERVING.get(device_kind, DEFAULT_SERVING["gpu"])


@dataclass(frozen=True)
class DecodeAttention:
    kernel: str                 # what runs (a label: fa2-splitkv, fa3-paged, flashinfer-paged, xqa ...)
    paged_bandwidth: float      # fraction of the dense kernel's HBM bandwidth its paged KV reads reach
    split: str                  # heuristic | fill | none: how the keys are split over the compute units
    split_kernels: int          # launches per call when it splits (split pass + combine pass)


@dataclass(frozen=True)
class CudaGraphs:
    available: bool
    default: bool
    max_batch: int              # the largest decode batch captured; larger ones run eagerly


@dataclass(frozen=True)
class ServingStack:
    name: str
    engine: str
    prefill_attention: tuple[str, ...]
    decode_attention: DecodeAttention
    kv_block_tokens: int
    cuda_graphs: CudaGraphs
    launch_s: float
    graph_launch_s: float
    step_overhead_s: float
    step_overhead_overlapped: bool
    sampling_passes: float
    elementwise: Mapping[str, str]
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    devices: tuple[str, ...] = ("gpu",)


@dataclass(frozen=True)
class ServingSoftware:
    """One serving run's software: a stack and the choices made within it."""

    stack: ServingStack
    cuda_graphs: bool
    elementwise: Mapping[str, str]
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.stack.name

    def graphed(self, batch) -> Any:
        """Whether a decode step of ``batch`` sequences replays a CUDA graph (array in, array out)."""
        import numpy as np

        return np.asarray(batch) <= (self.stack.cuda_graphs.max_batch if self.cuda_graphs else 0)

    def describe(self) -> str:
        s = self.stack
        graphs = f"CUDA graphs up to batch {s.cuda_graphs.max_batch}" if self.cuda_graphs else "no CUDA graphs"
        blocks = f"KV in blocks of {s.kv_block_tokens} tokens" if s.kv_block_tokens > 1 else "KV per token"
        return (f"{s.name} ({s.engine}): prefill attention {'/'.join(s.prefill_attention)}, decode "
                f"{s.decode_attention.kernel}, {blocks}, {graphs}")


def _flag(data, key, what, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ParplanError(f"{what}: field '{key}' must be true or false, got {value!r}")
    return value


def serving_from_dict(data: Any, name: str, what: str, sources: Mapping[str, str], path: str = "",
                      devices: tuple[str, ...] = ("gpu",)) -> ServingStack:
    """Parse and check a profile's ``serving:`` section; every field is required to carry a source."""
    data = require_mapping(data, f"{what}: serving")
    w = f"{what}: serving"
    check_keys(data, SERVING_KEYS, w)
    prefill = data.get("prefill_attention")
    if not isinstance(prefill, list) or not prefill or not all(isinstance(k, str) for k in prefill):
        raise ParplanError(f"{w}: 'prefill_attention' must be a list of kernels from {', '.join(PREFILL_KERNELS)}")
    for k in prefill:
        if k not in PREFILL_KERNELS:
            raise ParplanError(f"{w}: 'prefill_attention' takes {', '.join(PREFILL_KERNELS)}; got '{k}'"
                               f"{suggest(k, PREFILL_KERNELS)}")
    d = require_mapping(data.get("decode_attention"), f"{w}.decode_attention")
    check_keys(d, DECODE_KEYS, f"{w}.decode_attention")
    decode = DecodeAttention(kernel=text(d, "kernel", f"{w}.decode_attention"),
                             paged_bandwidth=float(number(d, "paged_bandwidth", f"{w}.decode_attention",
                                                          maximum=1.0)),
                             split=text(d, "split", f"{w}.decode_attention", choices=SPLITS),
                             split_kernels=number(d, "split_kernels", f"{w}.decode_attention", integer=True,
                                                  maximum=4))
    g = require_mapping(data.get("cuda_graphs"), f"{w}.cuda_graphs")
    check_keys(g, GRAPH_KEYS, f"{w}.cuda_graphs")
    graphs = CudaGraphs(available=_flag(g, "available", f"{w}.cuda_graphs", False),
                        default=_flag(g, "default", f"{w}.cuda_graphs", False),
                        max_batch=number(g, "max_batch", f"{w}.cuda_graphs", integer=True, maximum=1 << 20))
    if graphs.default and not graphs.available:
        raise ParplanError(f"{w}.cuda_graphs: default is true but available is false")
    table = require_mapping(data.get("elementwise"), f"{w}.elementwise")
    check_keys(table, ELEMENTWISE_OPS, f"{w}.elementwise")
    elementwise = {}
    for op in ELEMENTWISE_OPS:
        elementwise[op] = text(table, op, f"{w}.elementwise", choices=IMPLEMENTATIONS)
    stack = ServingStack(
        name=name, engine=text(data, "engine", w), prefill_attention=tuple(prefill), decode_attention=decode,
        kv_block_tokens=number(data, "kv_block_tokens", w, integer=True, maximum=1 << 16),
        cuda_graphs=graphs,
        launch_s=float(number(data, "launch_s", w, positive=False, maximum=MAX_OVERHEAD_S)),
        graph_launch_s=float(number(data, "graph_launch_s", w, positive=False, maximum=MAX_OVERHEAD_S)),
        step_overhead_s=float(number(data, "step_overhead_s", w, positive=False, maximum=MAX_OVERHEAD_S)),
        step_overhead_overlapped=_flag(data, "step_overhead_overlapped", w, False),
        sampling_passes=float(number(data, "sampling_passes", w, positive=False, maximum=100)),
        elementwise=MappingProxyType(elementwise), sources=MappingProxyType(dict(sources)), path=path,
        devices=tuple(devices))
    missing = [k for k in SERVING_KEYS if k != "engine" and not any(s == f"serving.{k}" or s.startswith(
        f"serving.{k}.") for s in sources)]
    if missing:
        raise ParplanError(f"{what}: serving.{missing[0]} has no source (add 'serving.{missing[0]}' to sources)")
    return stack


def resolve_serving(stack: ServingStack, *, cuda_graphs: bool | None = None, fused_kernels: bool | None = None,
                    device_kind: str | None = None) -> ServingSoftware:
    """A stack with the user's choices applied; each default taken from the stack is noted."""
    notes = []
    if device_kind is not None and device_kind not in stack.devices:
        raise ParplanError(f"framework '{stack.name}' serves on {', '.join(stack.devices)}, not on {device_kind}s")
    if cuda_graphs is None:
        cuda_graphs = stack.cuda_graphs.default
        notes.append(f"CUDA graphs {'on' if cuda_graphs else 'off'} ({stack.name}'s default)")
    elif cuda_graphs and not stack.cuda_graphs.available:
        raise ParplanError(f"framework '{stack.name}' does not capture CUDA graphs; drop --cuda-graphs")
    elementwise = dict(stack.elementwise)
    if fused_kernels is not None:
        elementwise = {op: ("fused" if fused_kernels else "eager") for op in ELEMENTWISE_OPS}
    return ServingSoftware(stack=stack, cuda_graphs=bool(cuda_graphs), elementwise=MappingProxyType(elementwise),
                           notes=tuple(notes))
