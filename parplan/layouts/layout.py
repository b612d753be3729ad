"""A parallel layout: how a model is split over a device mesh, and its checks.

Mesh axes are listed innermost (fastest links) first; the default order
``tp, cp, dp, pp`` is Megatron-LM's rank order (tensor parallel inside a node,
pipeline stages outermost). Every field may be a numpy array in the search,
where one Layout describes many candidates at once; the checks here are for
one concrete layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ParplanError
from ..cost.memory import RECOMPUTE_MODES
from ..specs.yamlio import suggest
from .strategies import BUILTIN, axis as strategy_axis, axis_names, is_folded

RECOMPUTE = RECOMPUTE_MODES
SCHEDULES = ("1f1b", "interleaved", "gpipe", "zb-h1", "dualpipev")
TP_MODES = ("1d", "2d", "3d")
CP_MODES = ("ring", "allgather")
DEFAULT_ORDER = ("tp", "cp", "dp", "pp")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    micro_batch: int = 1
    global_batch: int | None = None  # sequences per optimizer step; default micro_batch * dp
    seq_len: int | None = None       # default: the model's
    zero: int = 0                    # 0 DP, 1 optimizer, 2 +gradients, 3 +parameters (FSDP FULL_SHARD)
    shard_group: int | None = None   # HSDP: ZeRO shards within groups of this many DP ranks
    sp: bool = False                 # Megatron sequence parallel (with 1D TP)
    tp_mode: str = "1d"
    cp_mode: str = "allgather"
    vpp: int = 1                     # virtual pipeline stages per rank (interleaved 1F1B)
    schedule: str = "1f1b"           # zb-h1: Qi et al. 2023's zero-bubble schedule that keeps 1F1B's memory;
    #                                  dualpipev: DeepSeek's DualPipe cut in half, two stages per rank in a V
    recompute: str = "none"
    # With recompute "full": the layers of each pipeline chunk recomputed, the first N (Megatron's block
    # method); the rest keep their activations. None: every layer.
    recompute_layers: int | None = None
    dtype: str = "bf16"              # the compute type; fp8: the linear GEMMs under the software's FP8 recipe
    order: tuple[str, ...] = field(default=DEFAULT_ORDER)
    # Sizes of plug-in axes beyond tp, cp, pp and dp, as (name, size) pairs; an axis folded over
    # others (parplan.layouts.strategies) lies over their ranks and is not in ``order``.
    axes: tuple[tuple[str, int], ...] = ()
    # TPU: each mesh axis's factor per torus axis and across slices (parplan.layouts.torus_map);
    # None: the estimate takes the fastest map.
    torus_map: tuple | None = None
    # Transformer layers on the first and last pipeline rank (None: the framework's own split,
    # parplan.layouts.split); the ranks between share the rest.
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

    def sizes(self) -> dict:
        """The mesh axes in order (innermost first) with their sizes."""
        return {a: self.size(a) for a in self.order}

    def size(self, axis: str):
        """The size of any mesh axis, built-in or plug-in (1 for a plug-in axis the layout does not use)."""
        if axis in BUILTIN:
            return getattr(self, axis)
        return dict(self.axes).get(axis, 1)

    @property
    def devices(self) -> int:
        n = self.tp * self.pp * self.dp * self.cp
        for name, size in self.axes:
            if not is_folded(name):
                n = n * size
        return n

    @property
    def batch(self) -> int:
        return self.global_batch if self.global_batch is not None else self.micro_batch * self.dp

    @property
    def micro_batches(self) -> int:
        """Micro-batches per pipeline per step (gradient-accumulation steps)."""
        return self.batch // (self.micro_batch * self.dp)

    def stride(self, axis: str) -> int:
        """Device-index distance between neighbours on ``axis`` (product of inner axes).

        A folded axis takes the innermost ranks of the axes it folds over: its stride is theirs.
        """
        if axis not in self.order and axis in dict(self.axes) and is_folded(axis):
            over = strategy_axis(axis).folded_over
            return self.stride(next(a for a in self.order if a in over))
        s = 1
        for a in self.order:
            if a == axis:
                return s
            s *= self.size(a)
        raise ParplanError(f"axis '{axis}' is not in the mesh order {self.order}")

    def describe(self) -> str:
        hsdp = f",hsdp{self.shard_group}" if self.shard_group not in (None, self.dp) else ""
        parts = [f"tp={self.tp}" + (f"({self.tp_mode})" if self.tp_mode != "1d" else "") + ("+sp" if self.sp else ""),
                 f"pp={self.pp}" + (f"x{self.vpp}" if self.vpp > 1 else "") + self._split()
                 + (f"[{self.schedule}]" if self.pp > 1 and self.schedule in ("gpipe", "zb-h1", "dualpipev") else ""),
                 f"dp={self.dp}" + (f"(zero{self.zero}{hsdp})" if self.zero else ""),
                 f"cp={self.cp}" + ("(ring)" if self.cp > 1 and self.cp_mode == "ring" else ""),
                 f"mb={self.micro_batch}", f"recompute={self.recompute}"
                 + (f"({self.recompute_layers} per chunk)" if self.recompute_layers is not None else "")]
        parts[4:4] = [f"{name}={size}" for name, size in self.axes]
        return " ".join(parts)


    def _split(self) -> str:
        """The ends' layers where the layout sets them, e.g. ``(7|..|7)``; the framework's own split unsaid."""
        if self.pp == 1 or (self.first_stage_layers is None and self.last_stage_layers is None):
            return ""
        def end(n):
            return "-" if n is None else str(n)
        return f"({end(self.first_stage_layers)}|..|{end(self.last_stage_layers)})"


def parse_mesh(text: str) -> dict[str, int]:
    """``"tp=8,cp=1,pp=16,dp=128"`` -> ordered axis sizes (innermost first)."""
    sizes: dict[str, int] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name not in axis_names():
            raise ParplanError(f"--mesh: unknown axis '{name}'{suggest(name, axis_names())}; "
                               f"axes are {', '.join(axis_names())}")
        if name in sizes:
            raise ParplanError(f"--mesh: axis '{name}' given twice")
        if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
            raise ParplanError(f"--mesh: axis '{name}' needs a positive whole size, got '{value}'")
        sizes[name] = int(value)
    if not sizes:
        raise ParplanError("--mesh: give axes like 'tp=8,pp=4,dp=16'")
    return sizes


def mesh_order(sizes: dict[str, int]) -> tuple[str, ...]:
    """The mesh order: the named axes first in the order given, then the rest (size 1).

    Folded axes lie over the ranks of others and take no place of their own.
    """
    named = tuple(a for a in sizes if not is_folded(a))
    return named + tuple(a for a in DEFAULT_ORDER if a not in sizes)


def plugin_axes(sizes: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """The (name, size) pairs of the plug-in axes among ``sizes`` (for ``Layout.axes``)."""
    return tuple((a, v) for a, v in sizes.items() if a not in BUILTIN)
