"""Result rows: one flat record per measurement (``parplan bench`` writes them as CSV and JSON lines as
each finishes, ``parplan.bench.writer``), and reading them back, with nccl-tests logs.

Columns (SI units; ``size_bytes`` is the nccl-tests buffer size):

- what: ``kind`` (collective | matmul | copy | layer | step), ``op`` (the collective; matmul; copy;
  forward or backward for a layer; the mode of a whole step: eager, compiled, compiled-fp8-tensorwise, ...),
  ``dtype``,
  ``size_bytes``, ``count`` (elements), ``m``/``k``/``n`` (matmul), ``flops`` (per call),
  ``bytes_moved`` (copy: bytes read plus written), ``shape`` and ``model`` (layer, step).
- a whole step: ``forward_s``, ``backward_s`` and ``optimizer_s`` (medians, summed over the step's
  micro-batches), ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated``), ``params``, ``attention``
  (the fused attention kernel PyTorch's SDPA chose: flash2, cudnn, efficient or math).
- where: ``group`` (world, contigG, stridedG, or contigG-alone and stridedG-alone: the first group
  by itself), ``group_size``, ``group_stride``, ``group_count`` (groups running at once),
  ``group_nodes`` (hosts one group spans), ``group_class`` (intra | inter),
  ``world_size``, ``local_world_size`` (ranks per host), ``nodes``, ``backend``, ``device``,
  ``device_name``, ``host``.
- how long: ``iters``, ``warmup``, ``time_s`` (median over iterations of the slowest rank),
  ``time_min_s``, ``time_p10_s``, ``time_p90_s``, ``time_max_s``.
- rates: ``algbw_bytes_per_s`` and ``busbw_bytes_per_s`` (nccl-tests doc/PERFORMANCE.md:
  algbw = size / time, busbw = algbw x bus factor), ``flops_per_s``, ``bandwidth_bytes_per_s``.
- checks: ``wrong`` (elements that differ from the expected result, summed over ranks),
  ``correct``; ``source`` (parplan-bench or nccl-tests:FILE) and ``timestamp`` (ISO 8601).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ParplanError

# A whole training step's mode (``--suite step``): eager or torch.compile'd, optionally with torchao FP8 linears,
# and ``-fsdp``: every block under FSDP2 even on one rank (its copies and hooks without a network).
STEP_MODE = re.compile(r"^(eager|compiled)(?:-fp8-(tensorwise|rowwise))?(-fsdp)?$")


def step_mode(mode: str) -> tuple[bool, str]:
    """(compiled, FP8 recipe or "") of a step row's mode."""
    match = STEP_MODE.match(mode)
    if match is None:
        raise ParplanError(f"unknown step mode {mode!r}")
    return match.group(1) == "compiled", match.group(2) or ""


def step_sharded(mode: str, world_size: int) -> bool:
    """Whether a step row ran its blocks under FSDP2: always on several ranks, on one where the mode says ``-fsdp``."""
    match = STEP_MODE.match(mode)
    if match is None:
        raise ParplanError(f"unknown step mode {mode!r}")
    return world_size > 1 or match.group(3) is not None


CSV_NAME = "results.csv"
JSONL_NAME = "results.jsonl"
META_NAME = "meta.json"


@dataclass(frozen=True)
class Row:
    kind: str
    op: str
    dtype: str = ""
    size_bytes: int = 0
    count: int = 0
    m: int = 0
    k: int = 0
    n: int = 0
    flops: float = 0.0
    bytes_moved: int = 0
    shape: str = ""
    model: str = ""
    group: str = ""
    group_size: int = 1
    group_stride: int = 1
    group_count: int = 1
    group_nodes: int = 1
    group_class: str = "intra"
    world_size: int = 1
    local_world_size: int = 1
    nodes: int = 1
    backend: str = ""
    device: str = ""
    device_name: str = ""
    host: str = ""
    iters: int = 0
    warmup: int = 0
    time_s: float = 0.0
    time_min_s: float = 0.0
    time_p10_s: float = 0.0
    time_p90_s: float = 0.0
    time_max_s: float = 0.0
    algbw_bytes_per_s: float = 0.0
    busbw_bytes_per_s: float = 0.0
    flops_per_s: float = 0.0
    bandwidth_bytes_per_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    peak_memory_bytes: int = 0
    params: int = 0
    attention: str = ""
    wrong: int = 0
    correct: bool = True
    source: str = "parplan-bench"
    timestamp: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(Row))
_TYPES = {f.name: f.type for f in fields(Row)}
_REQUIRED = ("kind", "op", "time_s")


def _convert(name: str, value: Any, what: str) -> Any:
    kind = _TYPES[name]
    if value is None or value == "":
        return Row.__dataclass_fields__[name].default
    try:
        if kind == "int":
            return int(float(value))
        if kind == "float":
            v = float(value)
            if math.isnan(v):
                raise ValueError(value)
            return v
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError):
        raise ParplanError(f"{what}: column '{name}' has a bad value {value!r}") from None


def row_from_mapping(data: Mapping[str, Any], what: str) -> Row:
    """A Row from a CSV or JSON record, checking types; unknown columns are ignored."""
    for key in _REQUIRED:
        if data.get(key) in (None, ""):
            raise ParplanError(f"{what}: missing column '{key}'")
    values = {name: _convert(name, data.get(name), what) for name in COLUMNS if name in data}
    row = Row(**values)
    if row.time_s <= 0 or not math.isfinite(row.time_s):
        raise ParplanError(f"{what}: time_s must be a positive number, got {row.time_s!r}")
    return row


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        raise ParplanError("no timings to summarize")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def timing_fields(times_s: Iterable[float]) -> dict[str, float]:
    """Median and spread of per-iteration times."""
    values = sorted(float(t) for t in times_s)
    return {
        "time_s": percentile(values, 50),
        "time_min_s": values[0],
        "time_p10_s": percentile(values, 10),
        "time_p90_s": percentile(values, 90),
        "time_max_s": values[-1],
    }


def with_rates(row: Row) -> Row:
    """Fill the derived rates of a row from its time (used for rows built outside the worker)."""
    from ..cost.collectives import algbw, busbw

    if row.kind != "collective":
        return row
    return replace(row, algbw_bytes_per_s=algbw(row.size_bytes, row.time_s),
                   busbw_bytes_per_s=busbw(row.op, row.group_size, row.size_bytes, row.time_s))
