"""Decode-step time against batch: where the tensor-parallel all-reduces overtake the GEMMs."""
from __future__ import annotations

import numpy as np

from ..errors import ParplanError
from ..specs.cluster import Cluster
from ..specs.model import ModelSpec
from .serve import pass_cost


def decode_breakdown(model: ModelSpec, cluster: Cluster, tp: int, batches=None, input_len: int = 2048,
                     output_len: int = 256, dtype: str = "bf16", kv_dtype: str | None = None, software=None):
    """A pandas DataFrame of one decode step (pp=1) against batch: matmul, attention, all-reduce, other.

    Columns: ``batch, matmul_s, attention_s, allreduce_s, other_s, sampling_s, host_s, step_s,
    allreduce_fraction, allreduce_bytes_per_layer``. The all-reduce column is every TP collective of
    the step (2 per layer, the embedding's, and the logits' all-gather); ``software`` the serving
    stack (None: the bare kernels), whose sampler and host launches are ``sampling_s`` and ``host_s``
    (the scheduler's per-step time is not in this table).
    """
    import pandas as pd

    if batches is None:
        batches = 2 ** np.arange(0, 11)
    batches = np.asarray(batches, float)
    if np.any(batches < 1):
        raise ParplanError("batch sizes must be positive whole numbers")
    dec = pass_cost(model, cluster, tp, 1, "decode", batches, 1, input_len + output_len / 2.0, dtype, kv_dtype,
                    software=software)
    parts = dec.parts(model, 1)
    step = sum(parts.values())
    df = pd.DataFrame({
        "batch": batches.astype(int),
        "matmul_s": np.broadcast_to(parts["matmul"], batches.shape),
        "attention_s": np.broadcast_to(parts["attention"], batches.shape),
        "allreduce_s": np.broadcast_to(parts["tp_comm"], batches.shape),
        "other_s": np.broadcast_to(parts["other"], batches.shape),
        "sampling_s": np.broadcast_to(parts["sampling"], batches.shape),
        "host_s": np.broadcast_to(parts["host"], batches.shape),
        "step_s": np.broadcast_to(step, batches.shape),
        "allreduce_bytes_per_layer": np.broadcast_to(dec.tp_bytes_per_layer, batches.shape),
    })
    df["allreduce_fraction"] = df["allreduce_s"] / df["step_s"]
    return df


def comm_crossover_batch(model: ModelSpec, cluster: Cluster, tp: int, input_len: int = 2048, output_len: int = 256,
                         dtype: str = "bf16", kv_dtype: str | None = None, max_batch_size: int = 4096,
                         software=None) -> int | None:
    """The smallest decode batch at which the TP collectives take at least as long as the GEMMs (None: never)."""
    if tp < 2:
        return None
    df = decode_breakdown(model, cluster, tp, np.arange(1, max_batch_size + 1), input_len, output_len, dtype,
                          kv_dtype, software)
    over = df[df["allreduce_s"] >= df["matmul_s"]]
    return int(over["batch"].iloc[0]) if len(over) else None
