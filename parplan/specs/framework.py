"""Software stacks as data: what a training framework actually runs (``frameworks/*.yaml``).

The same layout runs at different speeds on Megatron-Core, torchtitan or plain PyTorch because they run
different kernels and schedule their communication differently. A framework profile says, each value with
its source:

* ``kernels``: the attention kernel; for each element-wise op of a block whether it runs fused or as eager
  PyTorch's separate aten kernels; the loss kernel; whether autocast re-casts fp32 weights every forward;
* ``compile``: whether ``torch.compile`` (or XLA) is offered and on by default, and what it fuses;
* ``fp8``: the recipes offered, which GEMMs they cover, how the casts run, whether ZeRO-3 weights are
  gathered in FP8, whether FP8 primary weights are offered;
* ``data_parallel``: the ZeRO stages, how ZeRO-3 shards (flat buffers or FSDP2's per-parameter copy-in/out),
  when gradients are reduced, bucket sizes, prefetch;
* ``pipeline``: schedules, how activations are sent between stages, which ZeRO stages combine, how
  gradients are reduced under it, how the layers split over the stages, the micro-batch it defaults to;
* ``parallelism``: the tensor/context-parallel modes, its sequence parallelism, and the collective-matmul
  overlaps of its tensor-parallel collectives it offers;
* ``recompute``: the activation-checkpointing modes it offers; ``recompute_layers``, a block of each chunk;
  ``activation_offload``, when it keeps layers' saved activations in host memory (:mod:`.offload`);
* ``moe``: expert parallelism and tensor parallelism, how the experts' GEMMs launch, permute, add their biases,
  what the token all-to-all overlaps; the vocabulary padding rule, the optimizer, master weights, host overhead.

A :class:`Software` is one run's resolved choice: a framework plus the user's overrides
(``--compile``, ``--fp8-recipe``, ``--fp8-params``, ``--flash-attention``, ``--tp-overlap``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ParplanError
from .offload import ActivationOffload, check_offload_layers
from .tp_overlap import KEYS as TP_OVERLAP_KEYS, TpOverlap
from .yamlio import suggest

ELEMENTWISE_OPS = ("norm", "rope", "activation", "residual", "bias", "softmax", "transposes")
IMPLEMENTATIONS = ("fused", "eager")
ATTENTION_KERNELS = ("flash2", "flash3", "cudnn", "splash", "xla")
LOSSES = ("vocab-parallel", "eager-fp32", "fused", "te-fused")
FP8_RECIPES = ("delayed", "current", "tensorwise", "rowwise", "blockwise", "mxfp8")
FP8_CASTS = ("fused", "amax-fused", "separate")
WEIGHT_CASTS = ("per-step", "per-microbatch")
ZERO3_IMPLS = ("flat", "per-parameter", "none")
GRAD_REDUCE, PREFETCH = ("overlapped", "after-backward"), ("before", "after")
PP_SENDS = ("scatter-gather", "full", "partitioned")
MASTER_WEIGHTS = ("fp32-copy", "fp32-params")
# Gradients between steps: kept in a buffer (Megatron's, DeepSpeed's) or freed by zero_grad(set_to_none=True) (PyTorch).
GRADIENTS = ("persistent", "freed")
OPTIMIZERS = ("fused", "foreach")
# The precision of the optimizer's state: fp32 master copy, momentum and variance; all three in bf16 (NeMo's
# distributed_fused_adam dtype bf16); or the moments alone in bf16 (Megatron-Core's precision-aware optimizer).
OPTIMIZER_STATES = ("fp32", "bf16", "bf16-moments")
SEQUENCE_PARALLEL = ("optional", "always", "never")
EXPERT_GEMMS = ("grouped", "streams", "loop")  # how a device's experts' GEMMs launch (MoeSoftware.expert_gemms)
RECOMPUTE_MODES = ("none", "selective", "full", "selective-op", "selective-layer", "norm-act", "save-dots",
                   "mla-up-proj")
TP_MODES = ("1d", "2d", "3d")
CP_MODES = ("ring", "allgather")
SCHEDULES = ("1f1b", "interleaved", "gpipe", "zb-h1", "dualpipev")
# How a framework splits the layers over pipeline stages (parplan.layouts.split says what each means).
SPLIT_DEFAULTS = ("even", "front", "spread", "middle")
SPLIT_ENDS = ("counts", "as-layers", "layout")
SPLIT_CHUNKS = ("equal", "any")
DEVICE_KINDS = ("gpu", "tpu")
DEFAULT_FRAMEWORK = {"gpu": "megatron-core", "tpu": "jax"}

FRAMEWORK_KEYS = ("name", "aliases", "description", "devices", "emit", "kernels", "compile", "fp8", "data_parallel",
                  "pipeline", "parallelism", "recompute", "recompute_layers", "vocab", "optimizer", "master_weights",
                  "gradients", "host_overhead_per_layer_s", "host", "elementwise_efficiency", "serving", "sources",
                  "moe", "mtp", "optimizer_states", "activation_offload")
HOST_KEYS = ("layer_s", "moe_s", "expert_s")
KERNEL_KEYS = ("attention", "flash_attention", "elementwise", "loss", "weight_casts", "projections")
# How the q, k, v and the gate and up projections are held: one fused GEMM each (Megatron, MPT) or separate
# linear layers (torchtitan, transformers' Llama), which eager autocast feeds one 16-bit cast each.
PROJECTIONS = ("fused", "separate")
COMPILE_KEYS = ("available", "default", "elementwise", "loss", "host")
FP8_KEYS = ("recipes", "default", "casts", "recipe_casts", "compiled_casts", "weight_cast", "all_gather", "params", "wgrad",
            "saves_fp8_inputs", "compiled_saves_fp8_inputs", "experts_save_fp8_inputs", "experts", "weights_from_master")
DP_KEYS = ("zero", "zero3", "grad_reduce", "reduce_every_microbatch", "backward_prefetch", "gather_bucket_params",
           "reduce_bucket_params", "max_live_params", "grad_dtype", "overlap_param_gather")
PP_KEYS = ("schedules", "send", "zero", "reduce_every_microbatch", "split", "micro_batch", "micro_batches")
SPLIT_KEYS = ("default", "ends", "chunks", "ends_weight")
PARALLEL_KEYS = ("tp_modes", "cp_modes", "sequence_parallel", "activation_shard") + TP_OVERLAP_KEYS
ACTIVATION_SHARDS = ("sequence", "hidden")
VOCAB_KEYS = ("multiple", "times_tp")
MOE_KEYS = ("expert_parallel", "expert_tensor_parallel", "expert_gemms", "grouped_gemm", "overlaps", "overlap",
            "permute", "bias", "dispatchers", "sync_s")
# What a token all-to-all can hide under: nothing; its layer's shared experts (--moe-shared-expert-overlap); another
# micro-batch's compute (--overlap-moe-expert-parallel-comm, the merged forward/backward 1F1B schedule).
MOE_OVERLAPS = ("none", "shared-experts", "micro-batch")
# How tokens reach their experts: an all-to-all of every token's k copies, sorted by expert before it and by local
# expert after it (Megatron-Core's alltoall dispatcher, torchtitan's, DeepSpeed's), or DeepEP's kernels, which send
# each token once to every rank (over the network once to every node) its experts sit on and permute on arrival.
MOE_DISPATCHERS = ("alltoall", "deepep")
EXPERT_TP = ("any", "one-or-tp", "one")


@dataclass(frozen=True)
class Kernels:
    attention: tuple[str, ...]          # fused attention kernels in the order the framework prefers them
    flash_attention: bool               # whether it runs one by default (else two GEMMs and a softmax)
    elementwise: Mapping[str, str]      # op -> fused | eager
    loss: str
    weight_casts: bool                  # autocast casts fp32 weights to 16 bits every forward
    projections: str = "fused"          # PROJECTIONS


@dataclass(frozen=True)
class HostTimes:
    """Seconds the host takes to issue one layer's kernels, (forward, backward) (parplan.cost.host):
    a transformer layer, what an MoE layer's router, dispatch and combine add, and each local expert
    whose GEMMs launch one by one (a loop, or Transformer Engine's streams)."""

    layer_s: tuple[float, float] = (0.0, 0.0)
    moe_s: tuple[float, float] = (0.0, 0.0)
    expert_s: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Compile:
    available: bool
    default: bool
    elementwise: Mapping[str, str]      # what compiling turns each op into
    loss: str | None                    # the loss kernel once compiled (None: unchanged)
    host: HostTimes | None = None       # the host's launches once compiled (None: as eager)


@dataclass(frozen=True)
class FP8:
    recipes: tuple[str, ...]
    default: str | None
    casts: str                          # fused into the producing kernel | separate passes
    compiled_casts: str                 # the same once compiled
    weight_cast: str                    # per-step (cached across micro-batches) | per-microbatch
    all_gather: bool                    # ZeRO weights (the FP8 linears') are gathered in FP8
    wgrad: bool                         # the weight-gradient GEMM runs in FP8 too
    saves_fp8_inputs: bool = False      # linear layers keep their FP8-cast inputs for the backward (TE)
    compiled_saves_fp8_inputs: bool = False  # the same once compiled (the loader's default: saves_fp8_inputs)
    experts_save_fp8_inputs: bool = False  # the grouped expert GEMMs do too (TE's GroupedLinear; not torchao's)
    experts: bool = True                # the recipe runs the routed experts' GEMMs in FP8 too
    recipe_casts: Mapping[str, str] = field(default_factory=dict)  # a recipe's casts unlike ``casts`` (TE current)
    weights_from_master: bool = False   # FP8 linears cast the fp32 parameter itself: no 16-bit copy of theirs
    params: bool = False                # offers FP8 primary weights (--fp8-params: TE fp8_model_init)


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
    # ZeRO-3: gathered parameters kept resident before the oldest are released (DeepSpeed's
    # stage3_max_live_parameters); None: the wrapped units (FSDP: the layer in use and the prefetched one).
    max_live_params: int | None = None


@dataclass(frozen=True)
class PipelineSplit:
    """How the framework splits the transformer layers over the pipeline stages.

    ``default``: the split when none is given: ``even`` (the layers must divide), ``front`` (the busiest
    stage takes the rounded-up share, the first stages filled first), ``spread`` (virtual stages differ
    by at most one layer, the extra ones on the first; the embedding and the head count as
    ``ends_weight`` layers each), ``middle`` (the extra layers on the middle virtual stages).
    ``ends``: how the first and last stage can be given other layer counts: ``counts`` (any), ``as-layers``
    (the embedding and the head counted as one layer each, so the ends hold one layer less), ``layout``
    (any layers per virtual stage, as a layout string lists them: uneven chunks too).
    ``chunks``: under interleaving, ``equal`` (each rank's layers split into vpp equal chunks) or ``any``.
    """

    default: str = "even"
    ends: tuple[str, ...] = ()
    chunks: str = "equal"
    ends_weight: int = 0


@dataclass(frozen=True)
class PipelineSoftware:
    schedules: tuple[str, ...]
    send: str                           # scatter-gather | full | partitioned
    zero: tuple[int, ...]               # ZeRO stages that combine with pipeline parallelism
    reduce_every_microbatch: bool       # under pipelining, ZeRO-2/3 gradients reduced per micro-batch (else per step)
    split: PipelineSplit = field(default_factory=PipelineSplit)
    micro_batch: int | None = None      # the documented micro-batch size under a pipeline (None: none documented)
    micro_batches: str | None = None    # "stages": the documented micro-batch count is the stage count


@dataclass(frozen=True)
class Parallelism:
    tp_modes: tuple[str, ...]
    cp_modes: tuple[str, ...]
    sequence_parallel: str              # optional | always (with tp > 1) | never
    # Whether sequence-parallel TP's collectives run in steps under the GEMMs they feed (parplan.specs.tp_overlap).
    tp_overlap: TpOverlap = TpOverlap()
    # What sequence parallelism splits of the activations outside the TP block: the tokens (Megatron,
    # Korthikanti et al. 2022) or the hidden size (MaxText's activation_embed -> tensor); same bytes.
    activation_shard: str = "sequence"


@dataclass(frozen=True)
class MoeSoftware:
    expert_parallel: bool = False       # shards experts over an expert-parallel group
    expert_tensor_parallel: str = "one"  # any | one-or-tp (etp is 1 or tp) | one
    # How the local experts' GEMMs launch: one grouped kernel, one GEMM each over several CUDA streams
    # (Transformer Engine's GroupedLinear), or one after another (EXPERT_GEMMS).
    expert_gemms: str = "loop"
    # The token permute and weighted unpermute: one fused kernel each (Transformer Engine's moe_permute /
    # moe_unpermute) or eager PyTorch index, product and scatter-add kernels (parplan.cost.moe). Expert biases
    # (a model with biases): in the GEMMs' epilogue (fused), or a per-row gather and an add each (eager).
    permute: str = "fused"
    bias: str = "fused"
    # What the token all-to-alls can run under (MOE_OVERLAPS), and what runs when the user names none:
    # "shared-experts", the same layer's shared experts; "micro-batch", another micro-batch's compute.
    overlaps: tuple[str, ...] = ("none",)
    overlap: str = "none"
    dispatchers: tuple[str, ...] = ("alltoall",)   # MOE_DISPATCHERS it runs; the first is its default
    # Seconds the GPU idles each time the host reads the tokens per expert (parplan.cost.moe.host_syncs).
    sync_s: float = 0.0


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
    gradients: str = "persistent"       # GRADIENTS: kept between steps, or freed and allocated by the backward
    host_overhead_per_layer_s: float = 0.0
    host: HostTimes = HostTimes()
    elementwise_efficiency: float | None = None  # fitted by calibrate; None: the hardware profile's
    aliases: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    moe: MoeSoftware = MoeSoftware()
    mtp: bool = False                   # trains multi-token-prediction modules (parplan.step.mtp)
    recompute_layers: bool = False      # full recompute of the first N layers of each chunk (--recompute-layers)
    optimizer_states: tuple[str, ...] = ("fp32",)  # the state precisions it offers, its default first
    activation_offload: ActivationOffload | None = None  # when it keeps layers' activations in host memory

    def __deepcopy__(self, memo):  # immutable: a frame's attrs (pandas deep-copies them) share it
        return self

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
    moe_overlap: str = "none"           # what the MoE token all-to-alls run under (MOE_OVERLAPS)
    optimizer_states: str = "fp32"      # the optimizer state's precision (OPTIMIZER_STATES)
    moe_dispatcher: str = "alltoall"    # how tokens reach their experts (MOE_DISPATCHERS)
    tp_overlap: str = "none"            # what the sequence-parallel collectives run under (tp_overlap.TP_OVERLAPS)
    fp8_params: bool = False            # weights held in FP8 (with their transposes), gathered in FP8
    offload_layers: int | None = None   # layers per pipeline rank whose saved activations wait in host memory

    def __deepcopy__(self, memo):  # immutable (its mappings are read-only views): shared, not copied
        return self

    @property
    def name(self) -> str:
        return self.framework.name

    @property
    def attention_kernels(self) -> tuple[str, ...]:
        """The fused attention kernels in the framework's order of preference; () when attention is unfused."""
        return self.framework.kernels.attention if self.flash_attention else ()

    @property
    def host(self) -> HostTimes:
        """The host's time to issue a layer (parplan.cost.host), compiled or eager as the run is."""
        c = self.framework.compile.host
        return c if self.compiled and c is not None else self.framework.host

    @property
    def fp8_casts(self) -> str:
        fp8 = self.framework.fp8
        return fp8.compiled_casts if self.compiled else fp8.recipe_casts.get(self.fp8_recipe, fp8.casts)

    @property
    def fp8_saves_inputs(self) -> bool:
        """Whether an FP8 run's linear layers keep their FP8-cast inputs for the backward (else 16-bit ones)."""
        fp8 = self.framework.fp8
        return bool(self.fp8_recipe) and (fp8.compiled_saves_fp8_inputs if self.compiled else fp8.saves_fp8_inputs)

    def describe(self) -> str:
        parts = [self.name, "compiled" if self.compiled else "eager" if self.framework.compile.available else ""]
        if self.fp8_recipe:
            parts.append(f"fp8 {self.fp8_recipe}" + (" with fp8 weights" if self.fp8_params else ""))
        parts.append(f"attention {'/'.join(self.attention_kernels) or 'unfused'}")
        if self.moe_overlap != "none":
            parts.append(f"MoE all-to-alls under {self.moe_overlap.replace('-', ' ')}")
        if self.optimizer_states != "fp32":
            parts.append(f"{self.optimizer_states} optimizer state")
        if self.moe_dispatcher != "alltoall":
            parts.append(f"{self.moe_dispatcher} dispatch")
        if self.tp_overlap != "none":
            parts.append(f"TP {self.tp_overlap}")
        if self.offload_layers:
            parts.append(f"{self.offload_layers} layers' activations offloaded")
        return ", ".join(p for p in parts if p)


def resolve_software(framework: Framework, *, dtype: str = "bf16", compiled: bool | None = None,
                     fp8_recipe: str | None = None, flash_attention: bool | None = None,
                     fused_kernels: bool | None = None, device_kind: str | None = None,
                     moe_overlap: str | None = None, optimizer_states: str | None = None,
                     moe_dispatcher: str | None = None, tp_overlap: str | None = None,
                     fp8_params: bool | None = None, offload_layers: int | None = None) -> Software:
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
    elif fp8_recipe is not None or fp8_params:
        raise ParplanError(f"--{'fp8-recipe ' + fp8_recipe if fp8_recipe else 'fp8-params'} needs --dtype fp8")
    if fp8_params and not fw.fp8.params:
        raise ParplanError(f"framework '{fw.name}' keeps its weights in 16 bits (no FP8 primary weights): "
                           f"drop --fp8-params")
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
    moe_overlap = _choose(fw, moe_overlap, fw.moe.overlaps, fw.moe.overlap, "runs the MoE all-to-alls under")
    optimizer_states = _choose(fw, optimizer_states, fw.optimizer_states, fw.optimizer_states[0],
                               "keeps its optimizer state in")
    moe_dispatcher = _choose(fw, moe_dispatcher, fw.moe.dispatchers, fw.moe.dispatchers[0],
                             "dispatches MoE tokens with")
    tp = fw.parallelism.tp_overlap
    tp_overlap = _choose(fw, tp_overlap, tp.offered, tp.default, "runs the TP collectives with the overlaps")
    if tp_overlap != "none" and tp.compiled and not compiled:
        raise ParplanError(f"framework '{fw.name}' runs the TP {tp_overlap} only compiled: add --compile")
    return Software(framework=fw, compiled=bool(compiled), fp8_recipe=fp8_recipe if dtype == "fp8" else None,
                    flash_attention=bool(flash_attention), elementwise=MappingProxyType(elementwise), loss=loss,
                    notes=tuple(notes), moe_overlap=moe_overlap, optimizer_states=optimizer_states,
                    moe_dispatcher=moe_dispatcher, tp_overlap=tp_overlap, fp8_params=bool(fp8_params),
                    offload_layers=check_offload_layers(fw, offload_layers))


def _choose(fw: Framework, given: str | None, offered, default: str, says: str) -> str:
    """The user's choice where the framework offers it, else the framework's default."""
    if given is None:
        return default
    if given not in offered:
        raise ParplanError(f"framework '{fw.name}' {says} {', '.join(offered)}; not '{given}'{suggest(given, offered)}")
    return given


def default_framework(device_kind: str) -> str:
    """The framework a plan assumes when none is named: Megatron-Core on GPUs, JAX/XLA on TPUs."""
    return DEFAULT_FRAMEWORK.get(device_kind, "megatron-core")

