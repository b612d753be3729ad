"""A serving layout (tp x pp devices per replica, replicas, sequences in flight, lengths, dtypes) and the
rules it must meet before any pass is priced."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParplanError
from ..layouts.rules import check_tp_1d
from ..specs.cluster import Cluster
from ..specs.dtypes import DTYPES
from ..specs.model import ModelSpec
from .serve_memory import activation_dtype


KV_DTYPES = ("bf16", "fp16", "fp8", "fp32")


MAX_LEN = 100_000_000


@dataclass(frozen=True)
class ServeLayout:
    """How a model is served: tp x pp devices per replica, replicas, sequences in flight, lengths, dtypes."""

    tp: int = 1
    pp: int = 1
    replicas: int = 1
    batch: Any = 1               # sequences in flight per replica (continuous batching)
    input_len: int = 2048        # prompt tokens per request
    output_len: int = 256        # generated tokens per request
    dtype: str = "bf16"          # weights and GEMMs
    kv_dtype: str | None = None  # KV cache; default: the activation dtype
    ep: int = 1                  # MoE models: experts over ep of each stage's tp devices (1: tensor-parallel experts)

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.replicas

    @property
    def kv(self) -> str:
        return self.kv_dtype or activation_dtype(self.dtype)


def check_serve_layout(layout: ServeLayout, model: ModelSpec, cluster: Cluster) -> ServeLayout:
    """Refuse an impossible serving layout with one clear sentence."""
    for name in ("tp", "pp", "replicas", "batch", "input_len", "output_len"):
        v = getattr(layout, name)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ParplanError(f"{name.replace('_', '-')} must be a positive whole number, got {v!r}")
        if v > MAX_LEN:
            raise ParplanError(f"{name.replace('_', '-')} = {v} is absurdly large")
    if layout.dtype not in DTYPES:
        raise ParplanError(f"dtype must be one of {', '.join(DTYPES)}, got '{layout.dtype}'")
    if layout.kv_dtype is not None and layout.kv_dtype not in KV_DTYPES:
        raise ParplanError(f"kv-dtype must be one of {', '.join(KV_DTYPES)}, got '{layout.kv_dtype}'")
    cluster.hardware.peak(layout.dtype)
    check_tp_1d(model, layout.tp)
    _check_ep(layout, model)
    context = layout.input_len + layout.output_len
    if model.context_limit is not None and context > model.context_limit:
        what = "context window" if model.max_seq_len is not None else "learned position table"
        raise ParplanError(f"{model.name} holds at most {model.context_limit} tokens of context (its {what}); "
                           f"input-len + output-len = {layout.input_len} + {layout.output_len} = {context}")
    if layout.pp > model.layers:
        raise ParplanError(f"pp={layout.pp} exceeds the {model.layers} layers of {model.name}")
    if layout.devices != cluster.devices:
        raise ParplanError(f"tp*pp*replicas = {layout.tp}*{layout.pp}*{layout.replicas} = {layout.devices} "
                           f"does not match the {cluster.devices} devices of {cluster.name}")
    return layout


def _check_ep(layout: ServeLayout, model: ModelSpec) -> None:
    ep = layout.ep
    if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)) or ep < 1:
        raise ParplanError(f"ep must be a positive whole number, got {ep!r}")
    if ep == 1:
        return
    if not model.is_moe:
        raise ParplanError(f"ep={ep} shards experts, but {model.name} is a dense model (no mixture-of-experts layers)")
    if layout.tp % ep:
        raise ParplanError(f"ep={ep} must divide tp={layout.tp}: serving lays the experts over each stage's "
                           f"tensor-parallel devices")
    if model.experts % ep:
        raise ParplanError(f"ep={ep} does not divide the {model.experts} routed experts of {model.name}")


def context_notes(model: ModelSpec, context: int) -> tuple[str, ...]:
    """What a reader of a serving estimate should know about its context length."""
    if model.context_limit is None and context > model.seq_len:
        return (f"{context} tokens of context exceed the {model.seq_len} {model.name} trains at and no context "
                f"window is known for it (max_seq_len); the cost is modelled, output quality is not",)
    return ()
