"""Launch settings for a plan: Megatron-LM flags, a torchtitan TOML section, a DeepSpeed config.

Flag names follow Megatron-LM's ``megatron/training/arguments.py`` (Megatron-Core
distributed optimizer for ZeRO-1, Megatron-FSDP ``--data-parallel-sharding-strategy``
``optim_grads`` / ``optim_grads_params`` for ZeRO-2/3), torchtitan's job config
(``[parallelism]``, ``[activation_checkpoint]``) and DeepSpeed's JSON config
(``zero_optimization.stage``). ``parse_megatron_args`` reads Megatron flags back,
so a plan survives the round trip.
"""
from __future__ import annotations

import json
import shlex

from ..errors import ParplanError
from ..layouts.layout import Layout
from ..specs.model import ModelSpec

TARGETS = ("megatron", "torchtitan", "deepspeed")
FSDP_STRATEGY = {2: "optim_grads", 3: "optim_grads_params"}


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
    if layout.vpp > 1:
        args += ["--num-layers-per-virtual-pipeline-stage", str(model.layers // (layout.pp * layout.vpp))]
    if layout.sp:
        args.append("--sequence-parallel")
    if layout.zero == 1:
        args.append("--use-distributed-optimizer")
        if layout.shard_group and layout.shard_group < layout.dp:  # HSDP: optimizer shards within groups
            args += ["--num-distributed-optimizer-instances", str(layout.dp // layout.shard_group)]
    elif layout.zero in FSDP_STRATEGY:
        args += ["--use-megatron-fsdp", "--use-distributed-optimizer", "--data-parallel-sharding-strategy",
                 FSDP_STRATEGY[layout.zero], "--no-gradient-accumulation-fusion", "--ckpt-format", "fsdp_dtensor"]
    if layout.recompute == "selective":
        args += ["--recompute-granularity", "selective"]
    elif layout.recompute == "full":
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    dp_sw = software.framework.data_parallel if software is not None else None
    if layout.dp > 1 and (dp_sw is None or dp_sw.grad_reduce[layout.zero] == "overlapped"):
        args.append("--overlap-grad-reduce")
    if layout.zero >= 1 and (dp_sw is None or dp_sw.overlap_param_gather):
        args.append("--overlap-param-gather")
    if layout.cp > 1:
        args += ["--cp-comm-type", "p2p" if layout.cp_mode == "ring" else "allgather"]
    args.append({"bf16": "--bf16", "fp16": "--fp16"}.get(layout.dtype, "--bf16"))
    if layout.dtype == "fp8":
        args += ["--fp8-format", "hybrid"]
    if software is None or software.flash_attention:
        args += ["--attention-backend", "flash"]
    if software is not None and set(software.elementwise.values()) == {"eager"}:
        args += list(UNFUSED_FLAGS)
    return args


# Megatron-LM's switches for its fused scale-mask-softmax, bias-GeLU and bias-dropout-add kernels.
# Any of them parses as an unfused layout; parplan's unfused layer is Megatron-LM 2019's, whose
# q/k/v transposes today's Megatron no longer makes, so for it the estimate errs slow.
UNFUSED_FLAGS = ("--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-dropout-fusion")


def parse_megatron_args(text: str, world_size: int) -> Layout:
    """A Layout from Megatron-LM flags (the inverse of :func:`megatron_args` for the layout fields)."""
    tokens = shlex.split(text.replace("\\\n", " "))
    values: dict[str, str | bool] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            if "=" in tok:
                key, val = tok[2:].split("=", 1)
                values[key] = val
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                values[tok[2:]] = tokens[i + 1]
                i += 1
            else:
                values[tok[2:]] = True
        i += 1

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
    per_virtual = num("num-layers-per-virtual-pipeline-stage", 0)
    vpp = layers // (pp * per_virtual) if per_virtual and layers else 1
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
    dtype = "fp16" if values.get("fp16") else ("fp8" if values.get("fp8-format") else "bf16")
    return Layout(tp=tp, pp=pp, cp=cp, dp=dp, micro_batch=num("micro-batch-size", 1), shard_group=shard_group,
                  global_batch=num("global-batch-size", 0) or None, seq_len=num("seq-length", 0) or None,
                  zero=zero, sp=bool(values.get("sequence-parallel")), vpp=vpp,
                  schedule="interleaved" if vpp > 1 else "1f1b", recompute=recompute, dtype=dtype,
                  cp_mode="ring" if values.get("cp-comm-type") == "p2p" else "allgather")


def torchtitan_toml(layout: Layout, model: ModelSpec) -> str:
    """torchtitan job-config sections. torchtitan shards with FSDP2: ZeRO-3 is dp_shard, plain DP
    is dp_replicate, HSDP both; ZeRO-2 keeps gathered weights (reshard_after_forward = never)."""
    if layout.zero == 0:
        replicate, shard = layout.dp, 1
    elif layout.shard_group:
        replicate, shard = layout.dp // layout.shard_group, layout.shard_group
    else:
        replicate, shard = 1, layout.dp
    lines = [
        "[parallelism]",
        f"data_parallel_replicate_degree = {replicate}",
        f"data_parallel_shard_degree = {shard}",
        f"tensor_parallel_degree = {layout.tp}",
        f"context_parallel_degree = {layout.cp}",
        f"pipeline_parallel_degree = {layout.pp}",
    ]
    if layout.pp > 1:
        lines += [f'pipeline_parallel_schedule = "{"Interleaved1F1B" if layout.vpp > 1 else "1F1B"}"',
                  f"pipeline_parallel_microbatch_size = {layout.micro_batch}"]
    if layout.zero in (1, 2):
        lines.append('fsdp_reshard_after_forward = "never"')
    lines += [
        "",
        "[training]",
        f"local_batch_size = {layout.batch // layout.dp}",
        f"global_batch_size = {layout.batch}",
        f"seq_len = {layout.seq_len or model.seq_len}",
        f'mixed_precision_param = "{"bfloat16" if layout.dtype != "fp16" else "float16"}"',
        "",
        "[activation_checkpoint]",
        f'mode = "{layout.recompute}"',
    ]
    if layout.recompute == "selective":
        lines.append('selective_ac_option = "op"')
    return "\n".join(lines)


def deepspeed_config(layout: Layout, model: ModelSpec) -> str:
    """A DeepSpeed config (ZeRO stage, batch sizes, precision) plus the Megatron-DeepSpeed TP/PP flags."""
    config = {
        "train_batch_size": layout.batch,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.micro_batches,
        "zero_optimization": {"stage": layout.zero, "overlap_comm": layout.zero == 3},
        "bf16": {"enabled": layout.dtype == "bf16"},
        "fp16": {"enabled": layout.dtype == "fp16"},
    }
    # Recompute is a Megatron-DeepSpeed flag; DeepSpeed's own activation_checkpointing section only
    # tunes it (partitioning, CPU offload).
    flags = (f"# Megatron-DeepSpeed: --tensor-model-parallel-size {layout.tp} --pipeline-model-parallel-size "
             f"{layout.pp}" + (" --checkpoint-activations" if layout.recompute == "full" else "")
             + (" (DeepSpeed's pipeline engine runs ZeRO stage 1 at most; this plan has stage "
                f"{layout.zero})" if layout.pp > 1 and layout.zero > 1 else ""))
    return flags + "\n" + json.dumps(config, indent=2)


def emit(target: str, layout: Layout, model: ModelSpec, software=None) -> str:
    if target == "megatron":
        return " \\\n  ".join(" ".join(shlex.quote(a) for a in pair)
                              for pair in _pairs(megatron_args(layout, model, software)))
    if target == "torchtitan":
        return torchtitan_toml(layout, model)
    if target == "deepspeed":
        return deepspeed_config(layout, model)
    raise ParplanError(f"unknown --emit target '{target}'; choose one of {', '.join(TARGETS)}")


def _pairs(args: list[str]) -> list[list[str]]:
    """Group flags with their values, one per output line."""
    out: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not out:
            out.append([a])
        else:
            out[-1].append(a)
    return out
