"""Read the result tables that nccl-tests binaries (``all_reduce_perf`` and friends) print.

A table follows the ``#  Rank  N Group ... on HOST device D [bus] NAME`` lines and a header
``size count type redop root time algbw busbw #wrong time algbw busbw #wrong`` with the
out-of-place columns first, then the in-place ones; times are in microseconds and bandwidths
in GB/s (10^9 bytes/s). The out-of-place columns become one collective row per size. The
collective comes from the ``# Collective test starting: all_reduce_perf`` line, else from the
file name; the ranks and hosts from the device lines.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ParplanError
from .rows import Row

PERF_OPS = {
    "all_reduce_perf": "all_reduce", "all_gather_perf": "all_gather",
    "reduce_scatter_perf": "reduce_scatter", "alltoall_perf": "all_to_all",
    "broadcast_perf": "broadcast", "reduce_perf": "reduce", "sendrecv_perf": "send_recv",
}
# File-name fragments, most specific first ("allreduce" before "reduce").
_NAME_OPS = (("allreduce", "all_reduce"), ("allgather", "all_gather"), ("reducescatter", "reduce_scatter"),
             ("alltoall", "all_to_all"), ("broadcast", "broadcast"), ("sendrecv", "send_recv"),
             ("reduce", "reduce"))
_TYPES = {"float": "fp32", "half": "fp16", "bfloat16": "bf16", "double": "fp64", "int8": "int8",
          "uint8": "uint8", "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
          "f8e4m3": "fp8", "f8e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}
_START = re.compile(r"Collective test starting:\s*(\S+)")
_RANK = re.compile(r"^#\s*Rank\s+(\d+)\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)\s+device\s+\d+\s+\[[^\]]*\]\s*(.*)$")
_ITERS = re.compile(r"warmup iters:\s*(\d+)\s+iters:\s*(\d+)")
MAX_LOG_BYTES = 64 * 2**20


def op_from_name(name: str) -> str | None:
    key = re.sub(r"[^a-z]", "", name.lower())
    for fragment, op in _NAME_OPS:
        if fragment in key:
            return op
    return None


class _Section:
    def __init__(self, op: str | None):
        self.op = op
        self.ranks: dict[int, tuple[str, str]] = {}
        self.columns: list[str] = []
        self.iters = (0, 0)


def parse_nccl_tests(text: str, name: str = "nccl-tests.log") -> list[Row]:
    """Collective rows from the text of one nccl-tests log (one or more tests)."""
    rows: list[Row] = []
    section = _Section(None)
    fallback_op = op_from_name(Path(name).name)
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            start = _START.search(line)
            if start:
                binary = start.group(1)
                section = _Section(PERF_OPS.get(binary) or op_from_name(binary))
                continue
            rank = _RANK.match(line)
            if rank:
                section.ranks[int(rank.group(1))] = (rank.group(2), rank.group(3).strip())
                continue
            iters = _ITERS.search(line)
            if iters:
                section.iters = (int(iters.group(1)), int(iters.group(2)))
                continue
            tokens = line.lstrip("#").split()
            if "size" in tokens and "time" in tokens and "busbw" in tokens:
                section.columns = tokens
            continue
        tokens = line.split()
        if not section.columns or not tokens[0].isdigit() or len(tokens) != len(section.columns):
            continue
        cells: dict[str, str] = {}
        for column, token in zip(section.columns, tokens):
            cells.setdefault(column, token)  # the first time/algbw/busbw/#wrong: out-of-place
        row = _row(cells, section, section.op or fallback_op, name)
        if row is not None:
            rows.append(row)
    return rows


def _row(cells: dict[str, str], section: _Section, op: str | None, name: str) -> Row | None:
    if op is None:
        raise ParplanError(f"{name}: cannot tell which collective this nccl-tests log measured "
                           f"(no '# Collective test starting' line and no op in the file name)")
    if not section.ranks:
        raise ParplanError(f"{name}: no '#  Rank  N Group ...' device lines, so the number of ranks is unknown")
    try:
        size = int(cells["size"])
        count = int(cells.get("count", "0"))
        time_s = float(cells["time"]) * 1e-6
        alg = float(cells["algbw"]) * 1e9
        bus = float(cells["busbw"]) * 1e9
    except (KeyError, ValueError):
        return None
    if time_s <= 0:
        return None
    wrong_text = cells.get("#wrong", cells.get("error", "0"))
    try:
        wrong = int(wrong_text) if "#wrong" in cells else (0 if float(wrong_text) <= 1e-2 else 1)
    except ValueError:
        wrong = 0  # N/A: the check was off (-c 0)
    hosts = [h for h, _ in section.ranks.values()]
    n = len(section.ranks)
    per_host = max(hosts.count(h) for h in set(hosts))
    nodes = len(set(hosts))
    warmup, iters = section.iters
    return Row(kind="collective", op=op, dtype=_TYPES.get(cells.get("type", ""), cells.get("type", "")),
               size_bytes=size, count=count, group="world", group_size=n, group_stride=1, group_count=1,
               group_nodes=nodes, group_class="inter" if nodes > 1 else "intra", world_size=n,
               local_world_size=per_host, nodes=nodes, backend="nccl", device="cuda",
               device_name=section.ranks[min(section.ranks)][1], host=section.ranks[min(section.ranks)][0],
               iters=iters, warmup=warmup, time_s=time_s, time_min_s=time_s, time_p10_s=time_s,
               time_p90_s=time_s, time_max_s=time_s, algbw_bytes_per_s=alg, busbw_bytes_per_s=bus,
               wrong=wrong, correct=wrong == 0, source=f"nccl-tests:{Path(name).name}")


def parse_nccl_tests_file(path: Path) -> list[Row]:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            raise ParplanError(f"{path}: larger than {MAX_LOG_BYTES // 2**20} MiB; not an nccl-tests log")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ParplanError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = parse_nccl_tests(text, str(path))
    if not rows:
        raise ParplanError(f"{path}: neither a parplan bench result (.csv, .jsonl) nor an nccl-tests log "
                           f"with a result table")
    return rows
