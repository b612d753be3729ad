"""What one bench run measures, item by item: the mesh sub-groups a collective runs on, the sizes and
shapes of the sweep, and the faults a test can inject into a rank."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ..errors import ParplanError
from ..units import format_bytes
from .config import ELEMENT_BYTES, THIN_M, BenchConfig


@dataclass(frozen=True)
class GroupLayout:
    """One mesh axis: the world split into ``count`` groups of ``size`` ranks ``stride`` apart.

    All groups of a layout communicate at once, as the groups of one mesh axis do in training;
    with ``alone`` only the first does while the other ranks wait, which shows what the groups
    running at once cost each other. ``nodes`` is how many hosts each group spans (the most of any
    group).
    """

    name: str
    size: int
    stride: int
    members: tuple[tuple[int, ...], ...]
    nodes: int = 1
    alone: bool = False

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def active(self) -> int:
        """Groups communicating at once."""
        return 1 if self.alone else self.count

    def runs(self, rank: int) -> bool:
        """Whether ``rank`` communicates in this layout (with ``alone``, only the first group's ranks)."""
        return not self.alone or rank in self.members[0]

    @property
    def group_class(self) -> str:
        return "inter" if self.nodes > 1 else "intra"

    def group_of(self, rank: int) -> tuple[int, ...]:
        for members in self.members:
            if rank in members:
                return members
        raise ParplanError(f"rank {rank} is in no group of layout {self.name}")


def _layout(name: str, members: list[tuple[int, ...]], stride: int, hosts: Sequence[str]) -> GroupLayout:
    nodes = max(len({hosts[r] for r in g}) for g in members)
    return GroupLayout(name=name, size=len(members[0]), stride=stride, members=tuple(members), nodes=nodes)


def mesh_layouts(world: int, sizes: Iterable[int], layouts: Sequence[str],
                 hosts: Sequence[str] | None = None,
                 concurrency: Sequence[str] = ("all",)) -> tuple[GroupLayout, ...]:
    """The world, and for each size ``g`` its contiguous (``contigG``) and strided (``stridedG``) partitions.

    Contiguous groups are ``[0..g-1], [g..2g-1], ...``; strided groups take every ``world/g``-th
    rank (``[0, s, 2s, ...], [1, 1+s, ...]``), like the outer axis of a device mesh. ``concurrency``
    ``all`` runs every group of a partition at once; ``one`` adds ``contigG-alone`` and
    ``stridedG-alone``, the first group by itself.
    """
    hosts = list(hosts) if hosts is not None else ["localhost"] * world
    if len(hosts) != world:
        raise ParplanError(f"expected {world} host names, got {len(hosts)}")
    sizes = list(sizes)
    if not sizes:
        sizes = [0] + [g for g in (2**i for i in range(1, 21)) if g < world and world % g == 0]
    out: list[GroupLayout] = []
    seen: set[str] = set()
    for g in sizes:
        if g == 0 or g == world:
            if "world" not in seen:
                out.append(_layout("world", [tuple(range(world))], 1, hosts))
                seen.add("world")
            continue
        if g > world:
            raise ParplanError(f"--groups: group size {g} is larger than the {world} ranks")
        if world % g:
            raise ParplanError(f"--groups: group size {g} does not divide the {world} ranks")
        stride = world // g
        if "contiguous" in layouts and f"contig{g}" not in seen:
            members = [tuple(range(i * g, (i + 1) * g)) for i in range(stride)]
            out.append(_layout(f"contig{g}", members, 1, hosts))
            seen.add(f"contig{g}")
        if "strided" in layouts and f"strided{g}" not in seen:
            members = [tuple(range(i, world, stride)) for i in range(stride)]
            out.append(_layout(f"strided{g}", members, stride, hosts))
            seen.add(f"strided{g}")
    alone = [replace(lay, name=f"{lay.name}-alone", alone=True) for lay in out if lay.count > 1]
    if "all" not in concurrency:
        out = [lay for lay in out if lay.count == 1]
    return tuple(out + (alone if "one" in concurrency else []))


@dataclass(frozen=True)
class Item:
    """One measurement: a collective on a layout at one size, a matmul shape, a copy, a layer or a whole step."""

    kind: str  # collective | matmul | copy | layer | step
    op: str
    dtype: str
    size_bytes: int = 0
    count: int = 0
    layout: GroupLayout | None = None
    shape: tuple[int, int, int] = (0, 0, 0)
    model: str = ""

    @property
    def label(self) -> str:
        if self.kind == "collective":
            return f"{self.op} {self.layout.name if self.layout else ''} {format_bytes(self.size_bytes)}"
        if self.kind == "matmul":
            m, k, n = self.shape
            return f"matmul {self.dtype} {m}x{k}x{n}"
        if self.kind == "copy":
            return f"copy {format_bytes(self.size_bytes)}"
        if self.kind == "step":
            return f"step {self.model} {self.op}"
        return f"layer {self.model}"

    @property
    def description(self) -> str:
        """The item in an error message: ``all_reduce of 4 KiB on group contig2``."""
        if self.kind == "collective" and self.layout is not None:
            return f"{self.op} of {format_bytes(self.size_bytes)} on group {self.layout.name}"
        return self.label


def sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """``min, min*factor, ...`` up to ``max`` (nccl-tests ``-b -e -f``)."""
    out, size = [], min_bytes
    while size <= max_bytes:
        out.append(size)
        size *= factor
    return out


def collective_count(op: str, size_bytes: int, dtype: str, n: int) -> int:
    """Elements in the nccl-tests buffer: a whole number per rank for the ops that split it."""
    count = max(1, size_bytes // ELEMENT_BYTES[dtype])
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        count = max(n, count // n * n)
    return count


# GEMMs of real layers (tokens x in x out): GPT-3 175B and Llama 3 8B/70B projections and MLPs,
# whole and as 8-way tensor-parallel shards. Square GEMMs run faster than these.
TRANSFORMER_SHAPES = ((2048, 12288, 4608), (2048, 1536, 12288), (2048, 12288, 6144), (2048, 6144, 12288),
                      (8192, 4096, 6144), (8192, 4096, 28672), (8192, 14336, 4096), (4096, 8192, 1280),
                      (4096, 8192, 7168), (4096, 3584, 8192))


def default_shapes(lo: int, hi: int) -> tuple[tuple[int, int, int], ...]:
    """Square ``s x s x s`` for powers of two ``lo..hi``, then thin decode-like ``m x K x K`` (m = 1..64)."""
    square = []
    s = 1 << max(0, (lo - 1).bit_length())
    while s <= hi:
        square.append((s, s, s))
        s *= 2
    thin_k = min(8192, hi)
    thin = [(m, thin_k, thin_k) for m in THIN_M if m < thin_k]
    layers = [s for s in TRANSFORMER_SHAPES if max(s) <= hi and min(s) >= lo]
    return tuple(square + thin + layers)


def build_plan(config: BenchConfig, world: int, hosts: Sequence[str] | None = None) -> tuple[Item, ...]:
    """Every item of the run, in order: collectives, matmuls, copies, layers, whole steps.

    ``config`` must be :func:`resolve`\\ d for the compute items to be planned.
    """
    if world < 1:
        raise ParplanError(f"world size must be positive, got {world}")
    items: list[Item] = []
    if "collectives" in config.suites:
        for layout in mesh_layouts(world, config.groups, config.layouts, hosts, config.concurrency):
            for op in config.ops:
                if op == "send_recv" and layout.size < 2:
                    continue
                seen: set[int] = set()
                for size in sizes(config.min_bytes, config.max_bytes, config.factor):
                    count = collective_count(op, size, config.dtype, layout.size)
                    actual = count * ELEMENT_BYTES[config.dtype]
                    if actual in seen:
                        continue
                    seen.add(actual)
                    items.append(Item("collective", op, config.dtype, actual, count, layout))
    if "matmul" in config.suites and config.matmul_max:
        shapes = config.shapes or default_shapes(config.matmul_min, config.matmul_max)
        for dtype in config.matmul_dtypes:
            for shape in shapes:
                items.append(Item("matmul", "matmul", dtype, shape=shape))
    if "copy" in config.suites:
        for size in sizes(config.min_bytes, config.max_bytes, config.factor):
            items.append(Item("copy", "copy", "uint8", size, size))
    if "layer" in config.suites:
        for model in config.models:
            items.append(Item("layer", "layer", config.layer_dtype or "fp32", model=model))
    if "step" in config.suites:
        for model in config.models:
            for mode in config.step_modes:
                items.append(Item("step", mode, config.layer_dtype or "fp32", model=model))
    return tuple(items)


@dataclass(frozen=True)
class Fault:
    """A deliberate failure for rehearsing error handling: at plan item ``item`` (0-based), ``rank``
    exits, hangs, or corrupts its collective input (which the result checks must catch).

    Set by ``PARPLAN_BENCH_FAIL_RANK``, ``PARPLAN_BENCH_FAIL_ITEM`` (default 1) and
    ``PARPLAN_BENCH_FAIL_MODE`` (``exit``, ``hang`` or ``corrupt``).
    """

    rank: int
    item: int = 1
    mode: str = "exit"

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> "Fault | None":
        import os

        env = dict(os.environ) if env is None else env
        if not env.get("PARPLAN_BENCH_FAIL_RANK"):
            return None
        try:
            rank = int(env["PARPLAN_BENCH_FAIL_RANK"])
            item = int(env.get("PARPLAN_BENCH_FAIL_ITEM", "1"))
        except ValueError:
            raise ParplanError("PARPLAN_BENCH_FAIL_RANK and PARPLAN_BENCH_FAIL_ITEM must be integers") from None
        mode = env.get("PARPLAN_BENCH_FAIL_MODE", "exit")
        if mode not in ("exit", "hang", "corrupt"):
            raise ParplanError(f"PARPLAN_BENCH_FAIL_MODE must be exit, hang or corrupt, got {mode!r}")
        return Fault(rank, item, mode)
