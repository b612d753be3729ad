"""An llm-foundry (Composer) training YAML for a plan, and the plan back from a user's YAML.

Keys of mosaicml/llm-foundry 8c8dd48f ``scripts/train/yamls/pretrain/mpt-*.yaml`` and Composer's
``FSDPConfig`` (composer/utils/parallelism.py @008dac70): ``global_train_batch_size``,
``device_train_microbatch_size``, ``max_seq_len``, ``precision`` amp_bf16 | amp_fp16 | amp_fp8,
``fsdp_config.sharding_strategy`` NO_SHARD | SHARD_GRAD_OP (ZeRO-2) | FULL_SHARD (ZeRO-3) | HYBRID_SHARD
with ``data_parallel_shard_degree``, ``fsdp_config.activation_checkpointing``, ``compile_config``.
"""
from __future__ import annotations

import yaml

from ...errors import ParplanError
from ...layouts.layout import Layout
from ...specs.model import ModelSpec
from .common import launch, profile_for, rule_problem, software_problem, unknown, whole

TARGET = "llm-foundry"
PROFILE = "llm-foundry"
STRATEGY = {0: "NO_SHARD", 2: "SHARD_GRAD_OP", 3: "FULL_SHARD"}
PRECISION = {"bf16": "amp_bf16", "fp16": "amp_fp16", "fp8": "amp_fp8"}
KEYS = ("variables", "max_seq_len", "global_train_batch_size", "device_train_microbatch_size",
        "device_eval_batch_size", "precision", "fsdp_config", "compile_config", "model", "tokenizer", "optimizer",
        "scheduler", "algorithms", "max_duration", "eval_interval", "eval_first", "eval_subset_num_batches",
        "train_loader", "eval_loader", "seed", "run_name", "save_folder", "save_interval", "loggers", "callbacks",
        "progress_bar", "log_to_console", "console_log_interval", "dist_timeout", "autoresume", "load_path",
        "device_train_grad_accum", "data_local", "data_remote", "icl_tasks", "eval_gauntlet", "save_num_checkpoints_to_keep")
FSDP_KEYS = ("sharding_strategy", "mixed_precision", "activation_checkpointing", "activation_checkpointing_reentrant",
             "activation_cpu_offload", "limit_all_gathers", "forward_prefetch", "backward_prefetch",
             "data_parallel_shard_degree", "data_parallel_replicate_degree", "state_dict_type", "verbose",
             "use_orig_params", "sync_module_states", "cpu_offload")
FOUNDRY_MARKS = ("global_train_batch_size", "device_train_microbatch_size", "fsdp_config", "max_seq_len")


def problem(layout: Layout, model: ModelSpec, software=None) -> str | None:
    fw = profile_for(TARGET, software, PROFILE)
    return rule_problem(layout, model, fw) or software_problem(software, fw)


def config(layout: Layout, model: ModelSpec, software=None) -> dict:
    fsdp = {"sharding_strategy": "HYBRID_SHARD" if layout.shard_group else STRATEGY.get(layout.zero, "FULL_SHARD"),
            "mixed_precision": "DEFAULT", "activation_checkpointing": layout.recompute == "full"}
    if layout.shard_group:
        fsdp["data_parallel_shard_degree"] = layout.shard_group
    cfg = {"max_seq_len": layout.seq_len or model.seq_len, "global_train_batch_size": layout.batch,
           "device_train_microbatch_size": layout.micro_batch, "precision": PRECISION[layout.dtype],
           "fsdp_config": fsdp}
    if software is not None and software.compiled:
        cfg["compile_config"] = {}
    return cfg


def text(layout: Layout, model: ModelSpec, software=None) -> str:
    return yaml.safe_dump(config(layout, model, software), sort_keys=False).rstrip()


def read(data: dict, world_size: int, model: ModelSpec):
    """A :class:`LaunchConfig` from an llm-foundry YAML mapping."""
    unknown(data, KEYS, "llm-foundry YAML")
    fsdp = data.get("fsdp_config") or {}
    unknown(fsdp, FSDP_KEYS, "llm-foundry YAML fsdp_config")
    strategy = fsdp.get("sharding_strategy", "FULL_SHARD")
    zero = {v: k for k, v in STRATEGY.items()}.get(strategy, 3 if strategy == "HYBRID_SHARD" else None)
    if zero is None:
        raise ParplanError(f"llm-foundry YAML: sharding_strategy '{strategy}' is not one of "
                           f"{', '.join(STRATEGY.values())}, HYBRID_SHARD")
    shard = whole(fsdp.get("data_parallel_shard_degree", 8), "data_parallel_shard_degree") \
        if strategy == "HYBRID_SHARD" else None
    precision = data.get("precision", "amp_bf16")
    dtype = {v: k for k, v in PRECISION.items()}.get(precision)
    if dtype is None:
        raise ParplanError(f"llm-foundry YAML: precision '{precision}' is not one of {', '.join(PRECISION.values())}")
    if "global_train_batch_size" not in data:
        raise ParplanError("llm-foundry YAML: global_train_batch_size is missing")
    layout = dict(tp=1, pp=1, cp=1, dp=world_size, micro_batch=whole(data.get("device_train_microbatch_size", 1),
                                                                     "device_train_microbatch_size"),
                  global_batch=whole(data["global_train_batch_size"], "global_train_batch_size"),
                  seq_len=whole(data["max_seq_len"], "max_seq_len") if "max_seq_len" in data else None,
                  zero=zero, shard_group=shard, recompute="full" if fsdp.get("activation_checkpointing") else "none",
                  dtype=dtype)
    return launch(TARGET, PROFILE, layout, compiled="compile_config" in data,
                  fp8_recipe="delayed" if dtype == "fp8" else None)
