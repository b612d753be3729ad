"""Megatron-LM / Megatron-Core launch flags for a plan, and the plan back from a user's flags or YAML.

Flag names are Megatron-LM core_v0.14.0's (commit 23e00ed0963c35382dfe8a5a94fb3cda4d21e133,
``megatron/training/arguments.py``; every flag of that file is listed in ``megatron_flags.txt``):
the distributed optimizer for ZeRO-1, Megatron-FSDP ``--data-parallel-sharding-strategy``
``optim_grads`` / ``optim_grads_params`` for ZeRO-2/3, ``--cp-comm-type p2p`` for ring context parallel,
``--fp8-format hybrid`` with ``--fp8-recipe``; the pipeline split with ``--decoder-first-pipeline-num-layers`` /
``--decoder-last-pipeline-num-layers`` or, where the ends hold one layer less and interleaving needs it,
``--account-for-embedding-in-pipeline-split`` / ``--account-for-loss-in-pipeline-split`` (interleaved uneven
splits take ``--num-virtual-stages-per-pipeline-rank``), else ``--pipeline-model-parallel-layout``
(:mod:`.megatron_layout`); ``--recompute-layers`` is ``--recompute-method block``. ``--moe-overlap`` writes
``--moe-shared-expert-overlap`` or ``--overlap-moe-expert-parallel-comm --delay-wgrad-compute``; ``--moe-dispatcher
deepep``, ``--moe-token-dispatcher-type flex --moe-enable-deepep``. NeMo YAML gives the names with underscores.
Transformer Engine's fused cross-entropy (the ``megatron-bridge`` profile's loss) is ``--cross-entropy-loss-fusion
--cross-entropy-fusion-impl te``, and those flags read back as that profile.
A mixture-of-experts model adds ``--num-experts``, ``--moe-router-topk``, ``--moe-ffn-hidden-size``,
``--moe-shared-expert-intermediate-size`` (all shared experts together), ``--moe-layer-freq`` (a pattern
where some layers stay dense), ``--moe-router-score-function``, the all-to-all dispatcher with grouped
GEMMs, ``--expert-model-parallel-size`` and ``--expert-tensor-parallel-size`` (when absent Megatron uses
tp), and a capacity factor where tokens are dropped; latent attention ``--multi-latent-attention`` with
``--q-lora-rank``, ``--kv-lora-rank``, ``--qk-head-dim`` (the nope part), ``--qk-pos-emb-head-dim``,
``--v-head-dim``.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from importlib import resources

from ...errors import ParplanError
from ...layouts.layout import Layout
from ...specs.model import ModelSpec
from ...layouts.split import expressible
from .common import agree, launch, profile_for, rule_problem, software_problem, stage_ends, whole
from .megatron_layout import layout_string, parse_layout
from .megatron_text import flag_pairs, flag_values, one_line, yaml_to_flags

TARGET = "megatron"
PROFILE = "megatron-core"
FSDP_STRATEGY = {2: "optim_grads", 3: "optim_grads_params"}
SELECTIVE_MODULES = {"norm-act": ("layernorm", "moe_act"), "mla-up-proj": ("mla_up_proj",)}  # --recompute-modules
# Activation offload: NeMo's model config and later Megatron-LM flags (TransformerConfig), not core_v0.14.0's.
OFFLOAD_FLAGS = ("cpu-offloading", "cpu-offloading-num-layers", "cpu-offloading-activations",
                 "cpu-offloading-weights", "cpu-offloading-double-buffering")
# The Megatron flags that restate the model, each with the model field it must agree with.
MODEL_FLAGS = (("num-layers", "layers"), ("hidden-size", "hidden"), ("ffn-hidden-size", "ffn_hidden"),
               ("num-attention-heads", "heads"), ("num-query-groups", "kv_heads"), ("mtp-num-layers", "mtp_layers"),
               ("num-experts", "experts"), ("moe-router-topk", "top_k"), ("moe-ffn-hidden-size", "expert_width"))


@lru_cache(maxsize=1)
def megatron_flags() -> frozenset[str]:
    """Every flag name Megatron-LM core_v0.14.0 parses (``megatron_flags.txt``)."""
    text = resources.files(__package__).joinpath("megatron_flags.txt").read_text()
    return frozenset(line.strip()[2:] for line in text.splitlines() if line.startswith("--"))


def problem(layout: Layout, model: ModelSpec, software=None) -> str | None:
    fw = profile_for(TARGET, software, PROFILE)
    judged = software if software is not None and software.framework is fw else fw  # with the run's choices
    if _pipeline_inside_data(layout) and (layout.cp > 1 or layout.size("ep") > 1):
        return ("Megatron-Core lays the pipeline inside data parallelism (--use-tp-pp-dp-mapping) only with cp = 1 "
                "and ep = 1; take the placement dp,pp")
    if software is not None and software.optimizer_states == "bf16":  # NeMo's distributed_fused_adam dtype bf16
        return ("Megatron-LM's flags keep fp32 or fp16 main parameters (--main-params-dtype), not bf16 optimizer "
                "state; plan with --optimizer-states fp32 or bf16-moments")
    if software is not None and software.offload_layers:  # later versions: --cpu-offloading-num-layers
        return "Megatron-LM core_v0.14.0 has no flag for activation offload; drop --offload-layers to emit its flags"
    return rule_problem(layout, model, judged) or software_problem(software, fw)


def _pipeline_inside_data(layout: Layout) -> bool:
    """Whether the stages lie inside the data-parallel replicas (--use-tp-pp-dp-mapping), not outside them."""
    order = layout.order
    return layout.pp > 1 and layout.dp > 1 and "pp" in order and "dp" in order and order.index("pp") < order.index("dp")


def text(layout: Layout, model: ModelSpec, software=None) -> str:
    return one_line(flag_pairs(megatron_args(layout, model, software)))


def megatron_args(layout: Layout, model: ModelSpec, software=None) -> list[str]:
    args = [
        "--tensor-model-parallel-size", str(layout.tp),
        "--pipeline-model-parallel-size", str(layout.pp),
        "--context-parallel-size", str(layout.cp),
        "--micro-batch-size", str(layout.micro_batch),
        "--global-batch-size", str(layout.batch),
        "--seq-length", str(layout.seq_len or model.seq_len),
        "--num-layers", str(model.layers),
        "--hidden-size", str(model.hidden),
        "--ffn-hidden-size", str(model.ffn_hidden),
        "--num-attention-heads", str(model.heads),
    ]
    if model.kv_heads != model.heads:
        args += ["--group-query-attention", "--num-query-groups", str(model.kv_heads)]
    if model.mtp_layers:
        args += ["--mtp-num-layers", str(model.mtp_layers)]
    args += _split_args(layout, model, software)
    if _pipeline_inside_data(layout):
        args.append("--use-tp-pp-dp-mapping")
    if layout.sp:
        args.append("--sequence-parallel")
        if software is not None and software.tp_overlap != "none":  # TE's userbuffers: needs --sequence-parallel
            args.append("--tp-comm-overlap")
    if layout.zero == 1:
        args.append("--use-distributed-optimizer")
        if layout.shard_group and layout.shard_group < layout.dp:  # HSDP: optimizer shards within groups
            args += ["--num-distributed-optimizer-instances", str(layout.dp // layout.shard_group)]
    elif layout.zero in FSDP_STRATEGY:
        args += ["--use-megatron-fsdp", "--use-distributed-optimizer", "--data-parallel-sharding-strategy",
                 FSDP_STRATEGY[layout.zero], "--no-gradient-accumulation-fusion", "--ckpt-format", "fsdp_dtensor"]
    if software is not None and software.optimizer_states == "bf16-moments":
        args += ["--use-precision-aware-optimizer", "--exp-avg-dtype", "bf16", "--exp-avg-sq-dtype", "bf16"]
    if layout.recompute == "selective":
        args += ["--recompute-granularity", "selective"]
    elif layout.recompute in SELECTIVE_MODULES:
        args += ["--recompute-granularity", "selective", "--recompute-modules", *SELECTIVE_MODULES[layout.recompute]]
    elif layout.recompute == "full":
        block = layout.recompute_layers  # the first N layers of each chunk (block), else every layer (uniform, 1)
        args += ["--recompute-granularity", "full", "--recompute-method", "block" if block else "uniform",
                 "--recompute-num-layers", str(block or 1)]
    dp_sw = software.framework.data_parallel if software is not None else None
    if layout.dp > 1 and (dp_sw is None or dp_sw.grad_reduce[layout.zero] == "overlapped"):
        args.append("--overlap-grad-reduce")
    if layout.zero >= 1 and (dp_sw is None or dp_sw.overlap_param_gather):
        args.append("--overlap-param-gather")
    if layout.cp > 1:
        args += ["--cp-comm-type", "p2p" if layout.cp_mode == "ring" else "allgather"]
    if getattr(software, "loss", "") == "te-fused":  # Transformer Engine's fused cross-entropy
        args += ["--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", "te"]
    args.append({"bf16": "--bf16", "fp16": "--fp16"}.get(layout.dtype, "--bf16"))
    if layout.dtype == "fp8":
        args += ["--fp8-format", "hybrid"]
        recipe = software.fp8_recipe if software is not None else None
        args += ["--fp8-recipe", recipe] if recipe and recipe != "delayed" else []
        args += ["--fp8-param-gather"] if software is not None and software.fp8_params else []
    if software is None or software.flash_attention:
        args += ["--attention-backend", "flash"]
    if software is not None and set(software.elementwise.values()) == {"eager"}:
        args += list(UNFUSED_FLAGS)
    return args + moe_args(layout, model, software)


def moe_args(layout: Layout, model: ModelSpec, software=None) -> list[str]:
    """The mixture-of-experts and latent-attention flags of a plan (module docstring)."""
    args = []
    if model.mla:
        args += ["--multi-latent-attention", "--kv-lora-rank", str(model.kv_lora_rank),
                 "--qk-head-dim", str(model.head_dim - model.qk_rope_dim), "--qk-pos-emb-head-dim",
                 str(model.qk_rope_dim), "--v-head-dim", str(model.v_dim)]
        if model.q_lora_rank:
            args += ["--q-lora-rank", str(model.q_lora_rank)]
    if not model.is_moe:
        return args
    deepep = software is not None and software.moe_dispatcher == "deepep"
    args += ["--num-experts", str(model.experts), "--moe-router-topk", str(model.top_k),
             "--moe-ffn-hidden-size", str(model.expert_width), "--moe-router-score-function", model.router,
             "--moe-token-dispatcher-type", "flex" if deepep else "alltoall",
             "--expert-model-parallel-size", str(layout.size("ep")),
             "--expert-tensor-parallel-size", str(layout.size("etp"))] + (["--moe-enable-deepep"] if deepep else [])
    if model.shared_experts:
        args += ["--moe-shared-expert-intermediate-size", str(model.shared_experts * model.shared_width)]
        if software is not None and software.moe_overlap == "shared-experts":
            args.append("--moe-shared-expert-overlap")
    if software is not None and software.moe_overlap == "micro-batch":
        args += ["--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute"]
    if model.moe_layers != model.layers:
        moe = set(model.moe_layer_ids)
        args += ["--moe-layer-freq", "[" + ",".join("1" if i in moe else "0" for i in range(model.layers)) + "]"]
    if software is None or software.framework.moe.expert_gemms != "loop":
        args.append("--moe-grouped-gemm")
    if model.capacity_factor is not None:
        args += ["--moe-expert-capacity-factor", f"{model.capacity_factor:g}", "--moe-pad-expert-input-to-capacity"]
    return args


def read_moe(values: dict, model: ModelSpec, tp: int) -> dict:
    """The expert axes of Megatron flags ({} for a dense model); the model's own flags are MODEL_FLAGS'."""
    if not model.is_moe:
        for flag in ("expert-model-parallel-size", "expert-tensor-parallel-size"):
            if int(values.get(flag, 1)) > 1:
                raise ParplanError(f"--{flag} {values[flag]} shards experts, but {model.name} is a dense model")
        return {}
    ep = int(values.get("expert-model-parallel-size", 1))
    etp = int(values.get("expert-tensor-parallel-size", tp))  # Megatron's default: the tensor-parallel size
    return {"axes": (("ep", ep), ("etp", etp))}


def _split_args(layout: Layout, model: ModelSpec, software) -> list[str]:
    """The pipeline split: the ends' counts where the framework's rule takes them, else the embedding and loss
    counted as layers (MCore asserts these two ways exclusive); the interleaving degree."""
    fw = profile_for(TARGET, software, PROFILE)
    ends = stage_ends(layout, model, fw)
    out = []
    if ends is not None:
        first, last = ends
        counts = fw.pipeline.split
        def by(how):
            return how in counts.ends and bool(expressible(model.layers, layout.pp, layout.vpp, first, last,
                                                           replace(counts, ends=(how,))))
        if by("counts"):
            out += ["--decoder-first-pipeline-num-layers", str(first), "--decoder-last-pipeline-num-layers", str(last)]
        elif not by("as-layers") and by("layout"):  # uneven chunks: every virtual stage's layers spelled out
            middle = (model.layers - first - last) // max(layout.pp - 2, 1)
            ranks = [first] + [middle] * (layout.pp - 2) + [last]
            return ["--pipeline-model-parallel-layout", layout_string(ranks, layout.vpp, model.mtp_layers)]
        else:
            n = (model.layers - first - last) // max(layout.pp - 2, 1) if layout.pp > 2 else max(first, last)
            out += ["--account-for-embedding-in-pipeline-split"] * (first == n - 1)
            out += ["--account-for-loss-in-pipeline-split"] * (last == n - 1)
    if layout.vpp > 1:
        out += (["--num-virtual-stages-per-pipeline-rank", str(layout.vpp)] if ends is not None else
                ["--num-layers-per-virtual-pipeline-stage", str(model.layers // (layout.pp * layout.vpp))])
    return out


# Megatron-LM's switches for its fused scale-mask-softmax, bias-GeLU and bias-dropout-add kernels.
# Any of them parses as an unfused layout; parplan's unfused layer is Megatron-LM 2019's, whose
# q/k/v transposes today's Megatron no longer makes, so for it the estimate errs slow.
UNFUSED_FLAGS = ("--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-dropout-fusion")


def parse_megatron_args(text: str, world_size: int) -> Layout:
    """A Layout from Megatron-LM flags (the inverse of :func:`megatron_args` for the layout fields)."""
    values = flag_values(text)

    def num(key: str, default: int) -> int:
        v = values.get(key, default)
        try:
            return int(v)
        except (TypeError, ValueError):
            raise ParplanError(f"--{key} needs a whole number, got {v!r}") from None

    tp, pp, cp = num("tensor-model-parallel-size", 1), num("pipeline-model-parallel-size", 1), \
        num("context-parallel-size", 1)
    if world_size % (tp * pp * cp):
        raise ParplanError(f"tp*pp*cp = {tp * pp * cp} does not divide the world size {world_size}")
    layers = num("num-layers", 0)
    given_layout = values.get("pipeline-model-parallel-layout")
    if given_layout and pp > 1:
        ranks, chunks = parse_layout(given_layout, pp)
        if len(set(ranks[1:-1])) > 1:
            raise ParplanError(f"--pipeline-model-parallel-layout gives the middle ranks {ranks[1:-1]} layers; "
                               f"parplan plans middle ranks of equal layers")
        if layers and sum(ranks) != layers:
            raise ParplanError(f"--pipeline-model-parallel-layout places {sum(ranks)} transformer layers; "
                               f"--num-layers is {layers}")
        if min(ranks[0], ranks[-1]) < 1:
            raise ParplanError("--pipeline-model-parallel-layout leaves the first or last pipeline rank without a "
                               "transformer layer; parplan plans ranks of at least one")
        if any(values.get(f"decoder-{end}-pipeline-num-layers") for end in ("first", "last")) or \
                any(values.get(f"account-for-{k}-in-pipeline-split") for k in ("embedding", "loss")):
            raise ParplanError("--pipeline-model-parallel-layout excludes --decoder-first/last-pipeline-num-layers "
                               "and --account-for-embedding/loss-in-pipeline-split")
        values = {**values, "num-virtual-stages-per-pipeline-rank": chunks,
                  "decoder-first-pipeline-num-layers": ranks[0], "decoder-last-pipeline-num-layers": ranks[-1]}
    embedding, loss = (int(bool(values.get(f"account-for-{k}-in-pipeline-split"))) for k in ("embedding", "loss"))
    per_virtual = num("num-layers-per-virtual-pipeline-stage", 0)
    vpp = (layers + embedding + loss) // (pp * per_virtual) if per_virtual and layers else \
        num("num-virtual-stages-per-pipeline-rank", 1)
    first = num("decoder-first-pipeline-num-layers", 0) or None
    last = num("decoder-last-pipeline-num-layers", 0) or None
    if (embedding or loss) and layers and pp > 1:
        if first or last:
            raise ParplanError("--account-for-embedding/loss-in-pipeline-split and --decoder-first/last-pipeline-"
                               "num-layers exclude each other (Megatron-Core's TransformerConfig refuses both)")
        share = (layers + embedding + loss) // pp
        first, last = share - embedding, share - loss
    zero = 0
    if values.get("use-megatron-fsdp"):
        strategy = values.get("data-parallel-sharding-strategy", "optim_grads_params")
        zero = {"no_shard": 0, "optim": 1, "optim_grads": 2, "optim_grads_params": 3}.get(str(strategy), 3)
    elif values.get("use-distributed-optimizer"):
        zero = 1
    instances = num("num-distributed-optimizer-instances", 1)
    dp = world_size // (tp * pp * cp)
    shard_group = dp // instances if zero == 1 and instances > 1 and dp % instances == 0 else None
    recompute = str(values.get("recompute-granularity", "none"))
    if values.get("checkpoint-activations"):
        recompute = "full"
    block = recompute == "full" and values.get("recompute-method") == "block"
    modules = frozenset(str(values.get("recompute-modules") or "core_attn").split())
    if recompute == "selective" and modules != {"core_attn"}:
        known = {frozenset(v): k for k, v in SELECTIVE_MODULES.items()}
        if modules not in known:
            raise ParplanError(f"--recompute-modules {' '.join(sorted(modules))}: parplan models core_attn "
                               f"(--recompute selective), " + ", ".join(
                                   f"{' '.join(v)} (--recompute {k})" for k, v in SELECTIVE_MODULES.items()))
        recompute = known[modules]
    dtype = "fp16" if values.get("fp16") else ("fp8" if values.get("fp8-format") else "bf16")
    return Layout(tp=tp, pp=pp, cp=cp, dp=dp, micro_batch=num("micro-batch-size", 1), shard_group=shard_group,
                  global_batch=num("global-batch-size", 0) or None, seq_len=num("seq-length", 0) or None,
                  zero=zero, sp=bool(values.get("sequence-parallel")), vpp=vpp,
                  schedule="interleaved" if vpp > 1 else "1f1b", recompute=recompute, dtype=dtype,
                  cp_mode="ring" if values.get("cp-comm-type") == "p2p" else "allgather",
                  order=("tp", "cp", "pp", "dp") if values.get("use-tp-pp-dp-mapping") else ("tp", "cp", "dp", "pp"),
                  first_stage_layers=first, last_stage_layers=last,
                  recompute_layers=num("recompute-num-layers", 1) if block else None)


def read(source: str, world_size: int, model: ModelSpec, yaml_data=None):
    """A :class:`LaunchConfig` from Megatron flags (or a Megatron / NeMo YAML mapping)."""
    if yaml_data is not None:
        source = yaml_to_flags(yaml_data)
    values = flag_values(source)
    bad = sorted(k for k in values if k not in megatron_flags() and k not in OFFLOAD_FLAGS)
    if bad:
        raise ParplanError(f"Megatron flags: unknown flag '--{bad[0]}' (not a flag of Megatron-LM core_v0.14.0)")
    for flag, attr in MODEL_FLAGS:
        if flag in values:
            agree(f"--{flag}", whole(values[flag], f"--{flag}"), getattr(model, attr), f"the {model.name} model")
    if model.mtp_layers and "mtp-num-layers" not in values:  # Megatron trains no MTP module without the flag
        raise ParplanError(f"the config sets no --mtp-num-layers, so Megatron trains no multi-token-prediction "
                           f"module, but {model.name} has {model.mtp_layers}: add the flag, or give a model with "
                           f"mtp_layers: 0")
    lay = parse_megatron_args(source, world_size)
    fields = {k: getattr(lay, k) for k in ("tp", "pp", "cp", "dp", "micro_batch", "global_batch", "seq_len", "zero",
                                            "shard_group", "sp", "vpp", "schedule", "recompute", "dtype", "cp_mode",
                                            "first_stage_layers", "last_stage_layers", "order", "recompute_layers")}
    try:
        fields.update(read_moe(values, model, lay.tp))
    except ValueError:
        raise ParplanError("Megatron flags: the expert flags need whole numbers") from None
    recipe = values.get("fp8-recipe") or ("delayed" if values.get("fp8-format") else None)
    overlap = "micro-batch" if values.get("overlap-moe-expert-parallel-comm") else \
        "shared-experts" if values.get("moe-shared-expert-overlap") else None
    states = _states(values)
    deepep = values.get("moe-token-dispatcher-type") == "flex" and values.get("moe-enable-deepep")
    optim = (yaml_data.get("model") or {}).get("optim") if isinstance(yaml_data, dict) else None
    if isinstance(optim, dict) and optim.get("name") in NEMO_DISTRIBUTED_OPTIMIZERS:
        fields["zero"] = max(fields["zero"], 1)  # NeMo's distributed optimizers shard the optimizer state
        if optim.get("name") == "distributed_fused_adam" and str(optim.get("dtype")) in ("bf16", "torch.bfloat16"):
            states = "bf16"  # Apex DistributedFusedAdam keeps its state (the parameter copy too) in optim.dtype
    # Transformer Engine's cross-entropy is the megatron-bridge profile's loss
    te_loss = values.get("cross-entropy-loss-fusion") and values.get("cross-entropy-fusion-impl") == "te"
    return launch(TARGET, "megatron-bridge" if te_loss else PROFILE, fields, fp8_recipe=recipe,
                  moe_overlap=overlap, optimizer_states=states,
                  moe_dispatcher="deepep" if deepep else None, fp8_params=values.get("fp8-param-gather") or None,
                  tp_overlap="collective-matmul" if values.get("tp-comm-overlap") else None,
                  offload_layers=_offload_layers(values, yaml_data is not None))


def _offload_layers(values: dict, nemo: bool) -> int | None:
    """The layers offloaded: NeMo's config needs cpu_offloading true beside the count; later Megatron-LM flags
    turn it on with a count above 0 (megatron/training/arguments.py at d98e8a64)."""
    n = values.get("cpu-offloading-num-layers")
    if n in (None, "0") or (nemo and not values.get("cpu-offloading")):
        return None
    return whole(n, "--cpu-offloading-num-layers")


# NeMo's sharded optimizers (NeMo-Framework-Launcher conf/training: distributed_fused_adam to 2024, then mcore's).
NEMO_DISTRIBUTED_OPTIMIZERS = ("distributed_fused_adam", "mcore_distributed_optim")


def _states(values: dict) -> str | None:
    """The optimizer-state precision of --use-precision-aware-optimizer: fp32 master copy with bf16 moments."""
    if not values.get("use-precision-aware-optimizer"):
        return None
    dtypes = tuple(str(values.get(f, "fp32")) for f in ("main-params-dtype", "exp-avg-dtype", "exp-avg-sq-dtype"))
    states = {("fp32", "fp32", "fp32"): "fp32", ("fp32", "bf16", "bf16"): "bf16-moments"}.get(dtypes)
    if states:
        return states
    raise ParplanError(f"--use-precision-aware-optimizer with main params, exp_avg, exp_avg_sq in {', '.join(dtypes)}: "
                       f"parplan models fp32 ones and bf16 moments (--exp-avg-dtype bf16 --exp-avg-sq-dtype bf16)")

