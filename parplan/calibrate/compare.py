"""Predicted against measured time for every bench row, and the error per op and group.

Predictions: a collective by :func:`parplan.cost.collectives.collective_time_s` on a cluster of
the row's world size and ranks per host, with the group placed as the row's stride places it;
a matmul, a copy (bytes read and written over ``hbm_bandwidth x efficiency.hbm``, plus
``kernel_overhead_s``) and a layer's forward or backward (the sum of the planner's op times over
``parplan.cost.ops.layer_ops``, one device, no parallelism or dropout) through the planner's one
kernel-timing path, :mod:`parplan.cost.kernels`; a whole step (``--suite step``) by
:func:`parplan.step.train.estimate` of the row's model on the row's ranks (data parallel with FSDP
over several), run by a framework profile (default ``torchtitan``, the stack ``bench/step.py``
reproduces: fp32 parameters under autocast, fused AdamW, each block compiled), with its peak memory
against ``torch.cuda.max_memory_allocated``. Error is ``(predicted - measured) / measured``.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from statistics import mean, median
from typing import Sequence

from ..cost.collectives import collective_time_s, place
from ..cost.kernels import copy_time_s, gemm_time_s, op_times
from ..errors import ParplanError
from ..units import format_bytes
from ..specs.dtypes import BYTES_PER_ELEMENT
from ..specs.cluster import Cluster, load_cluster, make_cluster
from ..specs.model import ModelSpec
from .rows import Row, step_mode, step_sharded


@dataclass(frozen=True)
class Comparison:
    kind: str
    op: str
    group: str
    group_class: str
    group_size: int
    dtype: str
    what: str  # the size or shape
    measured_s: float
    predicted_s: float | None
    error_pct: float | None
    note: str = ""
    measured_memory_bytes: int | None = None   # whole steps: peak memory
    predicted_memory_bytes: int | None = None
    memory_error_pct: float | None = None

    @property
    def key(self) -> str:
        """The summary bucket: ``all_reduce contig4 (intra, 4)``, ``matmul bf16``, ``copy``."""
        if self.kind == "collective":
            return f"{self.op} {self.group} ({self.group_class}, {self.group_size})"
        if self.kind == "matmul":
            return f"matmul {self.dtype}"
        return self.op if self.kind == "copy" else f"{self.kind} {self.op}"


@dataclass(frozen=True)
class Summary:
    key: str
    rows: int
    median_ape_pct: float
    mean_ape_pct: float
    mean_error_pct: float


def _cluster_for(row: Row, base: Cluster) -> Cluster:
    return make_cluster(base.hardware, max(1, row.world_size),
                        devices_per_node=max(1, row.local_world_size or base.devices_per_node),
                        intra_node=base.intra_node, inter_node=base.inter_node)


def predict(row: Row, base: Cluster) -> tuple[float | None, str]:
    """Predicted seconds for one row, or ``None`` and the reason."""
    hw = base.hardware
    if row.kind == "collective":
        if row.group_size < 2:
            return None, "a one-rank group moves no data"
        cluster = _cluster_for(row, base)
        placement = place(row.group_size, max(1, row.group_stride), cluster)
        return collective_time_s(row.op, row.size_bytes, placement, cluster), ""
    if row.kind == "matmul":
        if row.dtype not in BYTES_PER_ELEMENT:
            return None, f"no matmul model for dtype {row.dtype}"
        try:
            return float(gemm_time_s(hw, row.m, row.k, row.n, dtype=row.dtype)), ""
        except ParplanError as exc:
            return None, str(exc)
    if row.kind == "copy":
        return float(copy_time_s(hw, row.bytes_moved)), ""
    if row.kind == "layer":
        return predict_layer(row, hw)
    return None, f"no prediction for {row.kind} rows"


def shape_fields(shape: str) -> dict[str, str]:
    """A row's ``shape`` text (``b=4 s=2048 h=...``) as its ``key: value`` fields."""
    return dict(part.split("=", 1) for part in shape.split() if "=" in part)


def attention_first(attention: str, order: tuple[str, ...]) -> tuple[str, ...]:
    """``order`` of attention kernels with the one a row ran (SDPA's choice) first; unchanged without one."""
    if attention in ("", "math"):
        return order
    return (attention,) + tuple(k for k in order if k != attention)


def layer_spec(shape: str, name: str) -> tuple[ModelSpec, int, int]:
    """The layer's model and (micro-batch, sequence) from a row's ``shape`` text (an MoE layer's experts too)."""
    from ..specs.moe_spec import moe_fields

    fields = shape_fields(shape)
    try:
        moe = {} if "experts" not in fields else dict(
            experts=int(fields["experts"]), top_k=int(fields["top_k"]), expert_ffn=int(fields["expert_ffn"]),
            shared_experts=int(fields.get("shared", 0)), shared_ffn=int(fields.get("shared_ffn", 0)),
            router=fields.get("router", "softmax"))
        if moe:   # the same checks a model spec's MoE fields pass: top-k within the experts, a known router, ...
            moe = {k: v for k, v in moe_fields(moe, f"layer row shape {shape!r}", heads=int(fields["heads"]),
                                               kv_heads=int(fields["kv_heads"]), head_dim=int(fields["head_dim"]),
                                               layers=1).items() if k in moe}
        spec = ModelSpec(name=name or "layer", layers=1, hidden=int(fields["h"]), heads=int(fields["heads"]),
                         kv_heads=int(fields["kv_heads"]), head_dim=int(fields["head_dim"]),
                         ffn_hidden=int(fields["ffn"]), activation=fields["act"], vocab=1, seq_len=int(fields["s"]),
                         norm=fields.get("norm", "layernorm"), bias=fields.get("bias", "true") == "true", **moe)
        return spec, int(fields["b"]), int(fields["s"])
    except (KeyError, ValueError):
        raise ParplanError(f"layer row has an unreadable shape {shape!r}") from None


def layer_row_ops(row: Row) -> list:
    """The planner's op list for a layer row: one layer on one device, no parallelism, no dropout. An MoE
    layer holds every expert (no expert parallelism) and runs as the bench's plain PyTorch block does: eager
    permutes, activation and expert biases, the experts as one grouped GEMM or a loop (``expert_gemms``)."""
    from ..cost.moe import MoeParallel
    from ..cost.ops import LocalDims, layer_ops

    spec, batch, seq = layer_spec(row.shape, row.model)
    dims = LocalDims(batch=batch, seq=seq, seq_kv=seq, hidden=spec.hidden, heads=spec.heads,
                     kv_heads=spec.kv_heads, head_dim=spec.head_dim, ffn=spec.ffn_hidden, vocab=1, norm_shard=1,
                     moe=MoeParallel() if spec.is_moe else None, moe_share=1.0 if spec.is_moe else None)
    flash = row.attention != "math"   # SDPA's unfused math path: scores, softmax and context apart
    if not spec.is_moe:
        return layer_ops(spec, dims, row.dtype, flash_attention=flash, dropout=False)
    from ..cost.ops import EXPERT_GEMMS, LOOP

    launch = shape_fields(row.shape).get("expert_gemms", LOOP)
    if launch not in EXPERT_GEMMS:
        raise ParplanError(f"layer row has an unknown expert_gemms {launch!r} (choose from {', '.join(EXPERT_GEMMS)})")
    return layer_ops(spec, dims, row.dtype, flash_attention=flash, dropout=False, elementwise={"activation": "eager"},
                     expert_gemms=launch, moe_permute="eager", moe_bias="eager")


def layer_row_env(row: Row):
    """The kernels a layer row ran: the fused attention kernel SDPA chose where the row records it (a row
    without one, FlashAttention-2, the planner's default)."""
    from ..cost.kernels import DEFAULT_ENV, KernelEnv

    return KernelEnv(attention=attention_first(row.attention, DEFAULT_ENV.attention))


def predict_layer(row: Row, hw) -> tuple[float | None, str]:
    """One layer on one device, no parallelism: the planner's own op list and op times, with the attention
    kernel the row ran."""
    ops, env = layer_row_ops(row), layer_row_env(row)
    try:
        times = [op_times(hw, op, row.dtype, env=env) for op in ops]
    except ParplanError as exc:
        return None, str(exc)
    return float(sum(t[0 if row.op == "forward" else 1] for t in times)), ""


STEP_FRAMEWORK = "torchtitan"


def step_setup(row: Row, hw, framework: str = STEP_FRAMEWORK, links: Cluster | None = None):
    """(model, cluster, layout, software) a planner user passes for one whole-step row; ``links``, a
    cluster whose scale-up and network links (a cluster file's) the row's cluster keeps."""
    from ..layouts.layout import Layout
    from ..specs.framework import resolve_software
    from ..specs.framework_loader import load_framework
    from ..specs.model_loader import load_model

    fields = shape_fields(row.shape)
    try:
        batch, seq, micro_batches = int(fields["b"]), int(fields["s"]), int(fields.get("m", 1))
    except (KeyError, ValueError):
        raise ParplanError(f"step row has an unreadable shape {row.shape!r}") from None
    compiled, recipe = step_mode(row.op)
    model = load_model(row.model)
    world = max(1, row.world_size)
    cluster = make_cluster(hw, world, devices_per_node=max(1, min(world, row.local_world_size or world)),
                           intra_node=links.intra_node if links else None,
                           inter_node=links.inter_node if links else None)
    dtype = "fp8" if recipe else ("bf16" if row.dtype in ("bf16", "fp16") else "fp32")
    layout = Layout(dp=world, micro_batch=batch, global_batch=batch * micro_batches * world, seq_len=seq,
                    zero=3 if step_sharded(row.op, world) else 0, dtype=dtype)
    fw = load_framework(framework)
    # the kernel SDPA ran, first in the framework's preference
    fw = replace(fw, kernels=replace(fw.kernels, attention=attention_first(row.attention, fw.kernels.attention)))
    software = resolve_software(fw, dtype=dtype, compiled=compiled, fp8_recipe=recipe or None,
                                flash_attention=False if row.attention == "math" else None, device_kind=hw.kind)
    return model, cluster, layout, software


def predict_step(row: Row, hw, framework: str = STEP_FRAMEWORK,
                 links: Cluster | None = None) -> tuple[float | None, int | None, str]:
    """A whole step's predicted seconds and peak bytes per device, or ``None`` and the reason."""
    from ..step.train import estimate

    try:
        model, cluster, layout, software = step_setup(row, hw, framework, links)
        est = estimate(model, cluster, layout, software=software)
    except ParplanError as exc:
        return None, None, str(exc)
    return float(est.step_time_s), int(est.memory_bytes["total"]), ""


def _what(row: Row) -> str:
    if row.kind == "matmul":
        return f"{row.m}x{row.k}x{row.n}"
    if row.kind in ("layer", "step"):
        return " ".join([row.model] + row.shape.split()[:2])
    return format_bytes(row.size_bytes)


def compare(rows: Sequence[Row], hw_spec: str, framework: str = STEP_FRAMEWORK) -> list[Comparison]:
    """Every row against its prediction; ``framework`` runs the whole-step rows."""
    base = load_cluster(hw_spec)
    out = []
    for row in rows:
        memory = {}
        if row.kind == "step":
            predicted, mem, note = predict_step(row, base.hardware, framework, base)
            if mem is not None and row.peak_memory_bytes > 0:
                memory = dict(measured_memory_bytes=row.peak_memory_bytes, predicted_memory_bytes=mem,
                              memory_error_pct=100.0 * (mem - row.peak_memory_bytes) / row.peak_memory_bytes)
        else:
            predicted, note = predict(row, base)
        error = None if predicted is None else 100.0 * (predicted - row.time_s) / row.time_s
        if not row.correct:
            note = (note + "; " if note else "") + "measured row failed its correctness check"
        out.append(Comparison(row.kind, row.op, row.group, row.group_class, row.group_size, row.dtype,
                              _what(row), row.time_s, predicted, error, note, **memory))
    return out


def summarize(comparisons: Sequence[Comparison]) -> list[Summary]:
    """Median and mean absolute percentage error per op and group, then per kind, then overall."""
    buckets: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, list[float]] = defaultdict(list)
    for c in comparisons:
        if c.error_pct is None:
            continue
        buckets[c.key].append(c.error_pct)
        kinds[f"all {c.kind}"].append(c.error_pct)
        if c.memory_error_pct is not None:
            buckets[f"{c.key} peak memory"].append(c.memory_error_pct)
    def summary(key: str, errors: list[float]) -> Summary:
        return Summary(key, len(errors), median(abs(e) for e in errors), mean(abs(e) for e in errors), mean(errors))

    out = [summary(k, v) for k, v in sorted(buckets.items())]
    if len(buckets) > 1:
        out += [summary(k, v) for k, v in sorted(kinds.items())]
    if len(kinds) > 1:
        out.append(summary("all rows", [e for v in kinds.values() for e in v]))
    return out


def to_csv(items: Sequence[object]) -> str:
    if not items:
        return ""
    records = [asdict(i) for i in items]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]))
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                         for k, v in rec.items()})
    return buf.getvalue()


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def summary_table(summaries: Sequence[Summary]) -> str:
    width = max([len(s.key) for s in summaries] + [10])
    lines = [f"{'op / group':<{width}}  {'rows':>5}  {'median |err|':>12}  {'mean |err|':>10}  {'mean err':>9}"]
    for s in summaries:
        lines.append(f"{s.key:<{width}}  {s.rows:>5}  {s.median_ape_pct:>11.1f}%  {s.mean_ape_pct:>9.1f}%  "
                     f"{s.mean_error_pct:>+8.1f}%")
    return "\n".join(lines)


def rows_table(comparisons: Sequence[Comparison]) -> str:
    lines = [f"{'kind':<10} {'op':<14} {'group':<10} {'dtype':<5} {'size/shape':<24} {'measured':>10} "
             f"{'predicted':>10} {'error':>8}"]
    for c in comparisons:
        err = "-" if c.error_pct is None else f"{c.error_pct:+.1f}%"
        lines.append(f"{c.kind:<10} {c.op:<14} {c.group or '-':<10} {c.dtype or '-':<5} {c.what[:24]:<24} "
                     f"{_fmt_s(c.measured_s):>10} {_fmt_s(c.predicted_s):>10} {err:>8}"
                     + ("" if c.memory_error_pct is None else f"  peak memory {c.memory_error_pct:+.1f}%"))
    return "\n".join(lines)
