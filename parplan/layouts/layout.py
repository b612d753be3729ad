"""A parallel layout: how a model is split over a device mesh, and its checks.

Mesh axes are listed innermost (fastest links) first; the default order
``tp, cp, dp, pp`` is Megatron-LM's rank order (tensor parallel inside a node,
pipeline stages outermost). Every field may be a numpy array in the search,
where one Layout describes many candidates at once; the checks here are for
one concrete layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..errors import ParplanError
from ..specs.yamlio import suggest
from ..specs.hardware import DTYPES, Cluster
from ..specs.model import ModelSpec
from .strategies import BUILTIN, axis as strategy_axis, axis_names, is_folded

RECOMPUTE = ("none", "selective", "full")
SCHEDULES = ("1f1b", "interleaved", "gpipe")
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
    schedule: str = "1f1b"
    recompute: str = "none"
    dtype: str = "bf16"
    flash_attention: bool = True
    fused_kernels: bool = True       # Megatron's fused element-wise kernels (False: eager PyTorch, Megatron-LM 2019)
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    grad_accum_fp32: bool = True     # fp32 main gradients (Megatron, DeepSpeed BF16_Optimizer)
    pp_scatter_gather: bool = True   # TP ranks split pipeline sends (Megatron-LM); False: DeepSpeed pipeline
    gather_bucket_params: int | None = None  # ZeRO-3 gathers in buckets of this many parameters (None: per layer)
    reduce_bucket_params: int | None = None  # ZeRO-3 reduce-scatters in such buckets (None: per layer)
    order: tuple[str, ...] = field(default=DEFAULT_ORDER)
    # Sizes of plug-in axes beyond tp, cp, pp and dp, as (name, size) pairs; an axis folded over
    # others (parplan.layouts.strategies) lies over their ranks and is not in ``order``.
    axes: tuple[tuple[str, int], ...] = ()

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
        parts = [f"tp={self.tp}" + (f"({self.tp_mode})" if self.tp_mode != "1d" else "") + ("+sp" if self.sp else ""),
                 f"pp={self.pp}" + (f"x{self.vpp}" if self.vpp > 1 else ""),
                 f"dp={self.dp}" + (f"(zero{self.zero})" if self.zero else ""),
                 f"cp={self.cp}", f"mb={self.micro_batch}", f"recompute={self.recompute}"]
        parts[4:4] = [f"{name}={size}" for name, size in self.axes]
        if not self.fused_kernels:
            parts.append("unfused")
        return " ".join(parts)


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


def check_tp_1d(model: ModelSpec, tp: int) -> None:
    """Megatron 1D TP shards the heads, the KV heads (or replicates them) and the MLP width."""
    if model.heads % tp:
        raise ParplanError(f"tp={tp} does not divide the {model.heads} attention heads of {model.name}")
    if model.kv_heads % tp and tp % model.kv_heads:
        raise ParplanError(f"tp={tp} and the {model.kv_heads} KV heads of {model.name} do not divide each other")
    if model.ffn_hidden % tp:
        raise ParplanError(f"tp={tp} does not divide the MLP width {model.ffn_hidden} of {model.name}")


def check_layout(layout: Layout, model: ModelSpec, cluster: Cluster) -> Layout:
    """Refuse an impossible layout with one clear sentence; return it with defaults filled in."""
    for name in ("tp", "pp", "dp", "cp", "micro_batch", "vpp"):
        v = getattr(layout, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ParplanError(f"{name.replace('_', '-')} must be a positive whole number, got {v!r}")
        if v > 10_000_000:
            raise ParplanError(f"{name.replace('_', '-')} = {v} is absurdly large")
    if layout.recompute not in RECOMPUTE:
        raise ParplanError(f"recompute must be one of {', '.join(RECOMPUTE)}, got '{layout.recompute}'")
    if layout.schedule not in SCHEDULES:
        raise ParplanError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{layout.schedule}'")
    if layout.tp_mode not in TP_MODES:
        raise ParplanError(f"tp-mode must be one of {', '.join(TP_MODES)}, got '{layout.tp_mode}'")
    if layout.cp_mode not in CP_MODES:
        raise ParplanError(f"cp-mode must be one of {', '.join(CP_MODES)}, got '{layout.cp_mode}'")
    if layout.dtype not in DTYPES:
        raise ParplanError(f"dtype must be one of {', '.join(DTYPES)}, got '{layout.dtype}'")
    cluster.hardware.peak(layout.dtype)
    if layout.zero not in (0, 1, 2, 3):
        raise ParplanError(f"zero stage must be 0, 1, 2 or 3, got {layout.zero!r}")
    for name, size in layout.axes:
        strategy_axis(name)
        if name in BUILTIN:
            raise ParplanError(f"axis '{name}' is a Layout field; give it as {name}=, not in axes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ParplanError(f"axis {name} must be a positive whole number, got {size!r}")
        over = strategy_axis(name).folded_over
        if over:
            ranks = 1
            for a in over:
                ranks *= layout.size(a)
            if ranks % size:
                raise ParplanError(f"{name}={size} is folded over {'x'.join(over)} = {ranks} ranks and must "
                                   f"divide them")
    mesh = BUILTIN + tuple(a for a, _ in layout.axes if not is_folded(a))
    if sorted(layout.order) != sorted(mesh):
        raise ParplanError(f"mesh order must list each of {', '.join(mesh)} once, got {layout.order}")
    if layout.devices != cluster.devices:
        names = ["tp", "cp", "pp", "dp"] + [a for a, _ in layout.axes if not is_folded(a)]
        raise ParplanError(f"{'*'.join(names)} = {'*'.join(str(layout.size(a)) for a in names)} = {layout.devices} "
                           f"does not match the {cluster.devices} devices of {cluster.name}")
    tp = layout.tp
    if layout.tp_mode == "1d":
        check_tp_1d(model, tp)
    else:
        q = round(tp ** (0.5 if layout.tp_mode == "2d" else 1 / 3))
        if q ** (2 if layout.tp_mode == "2d" else 3) != tp:
            kind = "square" if layout.tp_mode == "2d" else "cube"
            raise ParplanError(f"tp-mode {layout.tp_mode} needs tp to be a {kind} number, got {tp}")
        for dim, name in ((model.hidden, "hidden size"), (model.ffn_hidden, "MLP width"), (model.heads, "heads")):
            if dim % q:
                raise ParplanError(f"tp-mode {layout.tp_mode} with q={q} does not divide the {name} {dim}")
        rows = q if layout.tp_mode == "2d" else q * q
        if layout.micro_batch % rows:
            raise ParplanError(f"tp-mode {layout.tp_mode} splits the micro-batch {rows} ways; "
                               f"micro-batch {layout.micro_batch} is not divisible by {rows}")
    if layout.sp and tp == 1:
        layout = replace(layout, sp=False)
    if layout.sp and layout.tp_mode != "1d":
        raise ParplanError("sequence parallel (--sp) applies to 1D tensor parallel only")
    seq = layout.seq_len or model.seq_len
    if seq % layout.cp or (layout.cp > 1 and seq % (2 * layout.cp)):
        raise ParplanError(f"cp={layout.cp} needs the sequence length {seq} divisible by 2*cp "
                           f"(causal load balancing splits it into 2*cp chunks)")
    if layout.sp and seq * layout.micro_batch % tp:
        raise ParplanError(f"sequence parallel needs micro-batch*seq divisible by tp={tp}")
    if layout.pp > model.layers:
        raise ParplanError(f"pp={layout.pp} exceeds the {model.layers} layers of {model.name}")
    if layout.vpp > 1:
        if layout.schedule == "1f1b":
            layout = replace(layout, schedule="interleaved")
        if layout.pp == 1:
            raise ParplanError("virtual pipeline stages (vpp > 1) need pp > 1")
        if model.layers % (layout.pp * layout.vpp):
            raise ParplanError(f"interleaving needs pp*vpp = {layout.pp * layout.vpp} to divide the "
                               f"{model.layers} layers of {model.name}")
    elif layout.schedule == "interleaved":
        raise ParplanError("the interleaved schedule needs vpp > 1")
    batch = layout.batch
    if not isinstance(batch, int) or batch < 1:
        raise ParplanError(f"global batch must be a positive whole number, got {batch!r}")
    if batch % (layout.micro_batch * layout.dp):
        raise ParplanError(f"global batch {batch} is not divisible into micro-batches of {layout.micro_batch} "
                           f"on dp={layout.dp} ({layout.micro_batch * layout.dp} sequences per round)")
    if layout.shard_group is not None:
        g = layout.shard_group
        if layout.zero == 0:
            raise ParplanError("a ZeRO shard group (HSDP) needs zero >= 1")
        if g < 1 or layout.dp % g:
            raise ParplanError(f"shard group {g} must divide dp={layout.dp}")
    if layout.schedule == "interleaved" and layout.micro_batches % layout.pp:
        raise ParplanError(f"the interleaved schedule needs the {layout.micro_batches} micro-batches per step "
                           f"to be a multiple of pp={layout.pp}")
    return replace(layout, seq_len=seq, global_batch=batch)
