"""A DeepSpeed JSON config for a plan, and the plan back from a user's ``ds_config.json``.

Keys of DeepSpeed's config (deepspeedai/DeepSpeed v0.14.0 ``deepspeed/runtime/config.py``,
``zero/config.py``): the batch triple, ``zero_optimization.stage``, ``bf16``/``fp16``; ``pipeline``
(``get_pipeline_config``: ``stages``, ``activation_checkpoint_interval``, the recompute interval of
``PipelineModule``); ``tensor_parallel.autotp_size`` (AutoTP training, v0.16.4+). The sequence length
is the model code's, not DeepSpeed's: it is read from ``--seq`` or the model.
"""
from __future__ import annotations

import json

from ...errors import ParplanError
from ...layouts.layout import Layout
from ...specs.model import ModelSpec
from .common import agree, launch, profile_for, rule_problem, software_problem, split_dp, stage_ends, unknown, whole

TARGET = "deepspeed"
PROFILE = "deepspeed"
KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "zero_optimization",
        "bf16", "fp16", "pipeline", "tensor_parallel", "optimizer", "scheduler", "gradient_clipping",
        "steps_per_print", "wall_clock_breakdown", "activation_checkpointing", "zero_allow_untested_optimizer",
        "communication_data_type", "prescale_gradients", "gradient_predivide_factor", "sparse_gradients",
        "amp", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comms_logger", "checkpoint",
        "data_types", "elasticity", "aio", "compression_training", "data_efficiency", "dump_state",
        "memory_breakdown", "seed", "zero_force_ds_cpu_optimizer", "torch_autocast", "bfloat16")


def problem(layout: Layout, model: ModelSpec, software=None) -> str | None:
    fw = profile_for(TARGET, software, PROFILE)
    if layout.cp > 1:  # the profile has no context parallelism: say what DeepSpeed has instead
        return ("DeepSpeed has no ring or all-gather context parallelism (its sequence parallelism is Ulysses "
                "all-to-all, deepspeed/sequence/layer.py); cp must be 1")
    if layout.size("ep") > 1:
        return (f"DeepSpeed takes expert parallelism in the model code (deepspeed.moe.layer.MoE(num_experts="
                f"{model.experts}, ep_size={layout.size('ep')}, k={model.top_k})), not in ds_config.json; "
                f"--emit deepspeed writes the JSON of plans with ep=1")
    if layout.pp > 1 and layout.zero > 1:
        return f"DeepSpeed's pipeline engine refuses ZeRO-{layout.zero} (deepspeed/runtime/pipe/engine.py); " \
               f"use zero 0 or 1 with pp > 1"
    said = rule_problem(layout, model, fw) or software_problem(software, fw)
    if not said and stage_ends(layout, model, fw) is not None:
        said = ("a DeepSpeed JSON config carries no pipeline layer split: PipelineModule's partition_method in the "
                "model code sets it (Megatron-DeepSpeed: --pp-partition-method 'type:transformer|embedding' gives "
                "the first and last stage one layer less); drop --first-stage-layers/--last-stage-layers")
    return said


def config(layout: Layout, model: ModelSpec, software=None) -> dict:
    zero = {"stage": layout.zero, "overlap_comm": layout.zero == 3}
    cfg = {"train_batch_size": layout.batch, "train_micro_batch_size_per_gpu": layout.micro_batch,
           "gradient_accumulation_steps": layout.micro_batches, "zero_optimization": zero,
           "bf16": {"enabled": layout.dtype == "bf16"}, "fp16": {"enabled": layout.dtype == "fp16"},
           "pipeline": {"stages": layout.pp, "activation_checkpoint_interval": 1 if layout.recompute == "full" else 0}}
    if layout.tp > 1:
        cfg["tensor_parallel"] = {"autotp_size": layout.tp}
    return cfg


def text(layout: Layout, model: ModelSpec, software=None) -> str:
    return json.dumps(config(layout, model, software), indent=2)


def read(source: str, world_size: int, model: ModelSpec):
    """A :class:`LaunchConfig` from a DeepSpeed JSON config."""
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ParplanError(f"DeepSpeed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ParplanError("DeepSpeed JSON: the config must be an object")
    unknown(data, KEYS, "DeepSpeed JSON")
    pipe, tpc = data.get("pipeline", {}), data.get("tensor_parallel", {})
    pp = whole(pipe.get("stages", 1), "pipeline.stages") if pipe.get("stages", "auto") != "auto" else 1
    tp = whole(tpc.get("autotp_size", 1), "tensor_parallel.autotp_size")
    dp = split_dp(world_size, tp * pp)
    mb, gas = data.get("train_micro_batch_size_per_gpu"), data.get("gradient_accumulation_steps")
    gb = data.get("train_batch_size")
    if mb is None and gb is None:
        raise ParplanError("DeepSpeed JSON: give train_micro_batch_size_per_gpu or train_batch_size")
    gas = whole(gas, "gradient_accumulation_steps") if gas is not None else None
    mb = whole(mb, "train_micro_batch_size_per_gpu") if mb is not None else whole(gb, "x") // (dp * (gas or 1))
    gb = whole(gb, "train_batch_size") if gb is not None else mb * dp * (gas or 1)
    agree("train_batch_size", gb, mb * dp * (gas if gas is not None else gb // (mb * dp)),
          f"train_micro_batch_size_per_gpu {mb} x gradient_accumulation_steps x dp {dp}")
    if data.get("bf16", {}).get("enabled") and data.get("fp16", {}).get("enabled"):
        raise ParplanError("DeepSpeed JSON: bf16 and fp16 are both enabled")
    stage = data.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ParplanError(f"DeepSpeed JSON: zero_optimization.stage must be 0-3, got {stage!r}")
    interval = pipe.get("activation_checkpoint_interval", 0)
    layout = dict(tp=tp, pp=pp, cp=1, dp=dp, micro_batch=mb, global_batch=gb, seq_len=None, zero=stage,
                  recompute="full" if interval else "none",
                  dtype="fp16" if data.get("fp16", {}).get("enabled") else "bf16")
    return launch(TARGET, PROFILE, layout)
