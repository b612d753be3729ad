"""torchtitan job-config TOML for a plan, and the plan back from a user's TOML.

Sections and keys of torchtitan v0.2.2, the last release read from TOML (``torchtitan/config/job_config.py``:
``Parallelism``, ``Training``, ``ActivationCheckpoint``, ``Compile``, ``Model.converters``,
``quantize.linear.float8``). FSDP2 shards: ZeRO-3 is ``data_parallel_shard_degree``, plain DP
``data_parallel_replicate_degree``, HSDP both; ZeRO-2 keeps the gathered weights
(``fsdp_reshard_after_forward = "never"``; under a pipeline ``"default"`` does the same, so ZeRO-3 there is
``"always"``: v0.2.2 ``parallelize.py: apply_fsdp``). ``local_batch_size`` is each rank's batch per forward; under a
pipeline it is split into ``local_batch_size / pipeline_parallel_microbatch_size`` micro-batches, otherwise
``global_batch_size / (local_batch_size * dp)`` steps accumulate gradients (``train.py``). The pipeline's
virtual stages (``pipeline_llm``): one per rank for single-stage schedules (1F1B, GPipe) and two for multi-stage
ones unless ``pipeline_parallel_layers_per_stage`` makes ``ceil((L + 2) / it)`` of them, split by
``generate_llm_fqn_per_model_part`` (the embedding and the head count as a layer each); any other split is
written out as ``module_fqns_per_model_part`` (llama-style module names: ``tok_embeddings``, ``layers.N``,
``norm``, ``output``). zb-h1 is ``InterleavedZeroBubble`` with one stage per rank, which only an explicit
``module_fqns_per_model_part`` gives (``pipeline_parallel_layers_per_stage`` refuses a multi-stage schedule with
fewer than two stages per rank).
"""
from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ...cost.memory import SELECTIVE_LAYER_EVERY
from ...errors import ParplanError
from ...layouts.layout import Layout
from ...layouts.split import spread_ends
from ...specs.model import ModelSpec
from .common import launch, profile_for, rule_problem, software_problem, split_dp, stage_ends, unknown, whole

TARGET = "torchtitan"
PROFILE = "torchtitan"
SCHEDULE = {"1f1b": "1F1B", "interleaved": "Interleaved1F1B", "gpipe": "GPipe", "zb-h1": "InterleavedZeroBubble",
            "dualpipev": "DualPipeV"}
SINGLE_STAGE = ("1F1B", "GPipe")  # PipelineScheduleSingle; the others take two stages per rank by default
RECOMPUTE = {"none": ("none", None), "full": ("full", None), "selective-op": ("selective", "op"),
             "selective-layer": ("selective", str(SELECTIVE_LAYER_EVERY))}
ROTATE = {"allgather": "allgather", "ring": "alltoall"}
# v0.2.2 job_config.py: the fields of the sections a plan sets; the other sections are read and left alone.
KEYS = {
    "parallelism": ("data_parallel_replicate_degree", "enable_compiled_autograd", "data_parallel_shard_degree",
                    "fsdp_reshard_after_forward", "tensor_parallel_degree", "disable_loss_parallel",
                    "enable_async_tensor_parallel", "pipeline_parallel_degree", "module_fqns_per_model_part",
                    "pipeline_parallel_first_stage_less_layers", "pipeline_parallel_last_stage_less_layers",
                    "pipeline_parallel_layers_per_stage", "pipeline_parallel_schedule",
                    "pipeline_parallel_schedule_csv", "pipeline_parallel_microbatch_size",
                    "context_parallel_degree", "context_parallel_rotate_method", "expert_parallel_degree",
                    "expert_tensor_parallel_degree"),
    "training": ("dataset", "dataset_path", "local_batch_size", "global_batch_size", "seq_len", "max_norm", "steps",
                 "enable_cpu_offload", "dtype", "mixed_precision_param", "mixed_precision_reduce", "gc_freq",
                 "gc_debug", "seed", "deterministic", "debug_moe_force_load_balance"),
    "activation_checkpoint": ("mode", "selective_ac_option", "per_op_sac_force_recompute_mm_shapes_by_fqns",
                              "early_stop", "memory_budget", "visualize_memory_budget_pareto"),
    "compile": ("enable", "components", "backend"),
}
OTHER_SECTIONS = ("job", "profiling", "metrics", "model", "optimizer", "lr_scheduler", "checkpoint", "quantize",
                  "comm", "memory_estimation", "fault_tolerance", "experimental", "validation", "debug",
                  "float8", "mx")


def problem(layout: Layout, model: ModelSpec, software=None) -> str | None:
    fw = profile_for(TARGET, software, PROFILE)
    if layout.dtype == "fp16":
        return "torchtitan trains in bf16 (mixed_precision_param bfloat16 | float32, v0.2.2), not fp16"
    return rule_problem(layout, model, fw) or _expert_problem(layout) or software_problem(software, fw)


def _expert_problem(layout: Layout) -> str | None:
    """torchtitan's expert mesh (v0.2.2 job_config.py, Parallelism.expert_parallel_degree): with etp = tp the
    experts take ep of the dp_shard x cp ranks (ep a multiple of cp); with etp = 1 ep spans all of tp x cp."""
    ep, etp = layout.size("ep"), layout.size("etp")
    if ep == 1:
        return None
    if etp == layout.tp and etp > 1 and (ep % layout.cp or ep < layout.cp):
        return f"torchtitan's expert_parallel_degree with etp = tp needs ep a multiple of cp={layout.cp}, not {ep}"
    if etp == 1 and ep % (layout.cp * layout.tp):
        return f"torchtitan's expert_parallel_degree with etp = 1 needs ep a multiple of cp*tp = " \
               f"{layout.cp * layout.tp}, not {ep}"
    return None


def _degrees(layout: Layout) -> tuple[int, int]:
    if layout.zero == 0:
        return layout.dp, 1
    if layout.shard_group:
        return layout.dp // layout.shard_group, layout.shard_group
    return 1, layout.dp


def text(layout: Layout, model: ModelSpec, software=None) -> str:
    replicate, shard = _degrees(layout)
    lines = ["[parallelism]", f"data_parallel_replicate_degree = {replicate}",
             f"data_parallel_shard_degree = {shard}", f"tensor_parallel_degree = {layout.tp}",
             f"context_parallel_degree = {layout.cp}", f"pipeline_parallel_degree = {layout.pp}"]
    if layout.cp > 1:
        lines.append(f'context_parallel_rotate_method = "{ROTATE[layout.cp_mode]}"')
    if layout.pp > 1:
        lines += [f'pipeline_parallel_schedule = "{SCHEDULE[layout.schedule]}"',
                  f"pipeline_parallel_microbatch_size = {layout.micro_batch}", *_stage_lines(layout, model, software)]
    if software is not None and software.tp_overlap != "none" and layout.tp > 1:
        lines.append("enable_async_tensor_parallel = true")
    if layout.zero == 2:
        lines.append('fsdp_reshard_after_forward = "never"')
    elif layout.zero == 3 and layout.pp > 1:  # "default" keeps the weights gathered under a pipeline (apply_fsdp)
        lines.append('fsdp_reshard_after_forward = "always"')
    if model.is_moe:
        lines += [f"expert_parallel_degree = {layout.size('ep')}",
                  f"expert_tensor_parallel_degree = {layout.size('etp')}"]
    local = layout.batch // layout.dp if layout.pp > 1 else layout.micro_batch
    mode, option = RECOMPUTE[layout.recompute]
    lines += ["", "[training]", f"local_batch_size = {local}", f"global_batch_size = {layout.batch}",
              f"seq_len = {layout.seq_len or model.seq_len}", 'mixed_precision_param = "bfloat16"',
              "", "[activation_checkpoint]", f'mode = "{mode}"']
    if option:
        lines.append(f'selective_ac_option = "{option}"')
    compiled = software is not None and software.compiled
    lines += ["", "[compile]", f"enable = {'true' if compiled else 'false'}"]
    if layout.dtype == "fp8":
        recipe = (software.fp8_recipe if software is not None else None) or "tensorwise"
        lines += ["", "[model]", 'converters = ["quantize.linear.float8"]', "",
                  "[quantize.linear.float8]", f'recipe_name = "{recipe}"']
    return "\n".join(lines)


def _stage_lines(layout: Layout, model: ModelSpec, software) -> list[str]:
    """How the layers split into the pipeline's virtual stages: nothing where torchtitan's default gives the
    plan, else ``pipeline_parallel_layers_per_stage`` where it does, else every stage's modules."""
    ends = stage_ends(layout, model, profile_for(TARGET, software, PROFILE))
    name, stages = SCHEDULE[layout.schedule], layout.pp * layout.vpp
    if ends is None:
        if stages == layout.pp * (1 if name in SINGLE_STAGE else 2):
            return []
        fits = [n for n in range(1, model.layers + 3) if -(-(model.layers + 2) // n) == stages]
        if fits and (name in SINGLE_STAGE or layout.vpp >= 2):
            return [f"pipeline_parallel_layers_per_stage = {fits[0]}"]
        ends = tuple(int(x) for x in spread_ends(model.layers, layout.pp, layout.vpp, 1, 1))
    parts = ", ".join("[" + ", ".join(f'"{m}"' for m in part) + "]" for part in _fqns(model.layers, layout, *ends))
    return [f"module_fqns_per_model_part = [{parts}]"]


def _fqns(layers: int, layout: Layout, first: int, last: int) -> list[list[str]]:
    """Each virtual stage's modules: rank r holds stages r, r + p, ...; the middle ranks share the layers the
    ends leave, the extra ones first, and each rank's layers split into vpp chunks, the extra ones first."""
    p, v = layout.pp, layout.vpp
    rest, k = layers - first - last, max(p - 2, 1)
    totals = [first] + [rest // k + (i < rest % k) for i in range(p - 2)] + [last]
    chunks = [[t // v + (c < t % v) for c in range(v)] for t in totals]
    out, start = [], 0
    for s in range(p * v):
        n = chunks[s % p][s // p]
        out.append(["tok_embeddings"] * (s == 0) + [f"layers.{i}" for i in range(start, start + n)]
                   + ["norm", "output"] * (s == p * v - 1))
        start += n
    return out


def _read_stages(par: dict, pp: int, schedule: str | None, layers: int) -> tuple[int, int | None, int | None]:
    """(vpp, first, last) from the TOML's stage keys; the ends None where torchtitan's default split gives them."""
    parts = par.get("module_fqns_per_model_part")
    weights = [par.get(f"pipeline_parallel_{k}_stage_less_layers", 1) for k in ("first", "last")]
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in weights):
        raise ParplanError(f"torchtitan TOML: pipeline_parallel_first/last_stage_less_layers need whole numbers >= 0, "
                           f"got {weights}")
    if parts:
        if len(parts) % pp:
            raise ParplanError(f"torchtitan TOML: {len(parts)} model parts do not divide over pipeline_parallel_degree "
                               f"{pp}")
        counts = [sum(str(m).startswith("layers.") for m in part) for part in parts]
        vpp = len(parts) // pp
        totals = [sum(counts[c * pp + r] for c in range(vpp)) for r in range(pp)]
        if sum(totals) != layers:
            raise ParplanError(f"torchtitan TOML: module_fqns_per_model_part holds {sum(totals)} layers, the model "
                               f"{layers}")
        if pp > 2 and max(totals[1:-1]) - min(totals[1:-1]) > 1:
            raise ParplanError("torchtitan TOML: module_fqns_per_model_part gives the middle stages "
                               f"{min(totals[1:-1])} to {max(totals[1:-1])} layers; the estimate spreads the middle "
                               "evenly (give them within one layer of each other)")
        return vpp, totals[0], totals[-1]
    per_stage = par.get("pipeline_parallel_layers_per_stage")
    if per_stage:
        stages = -(-(layers + sum(weights)) // whole(per_stage, "pipeline_parallel_layers_per_stage"))
        if stages % pp:
            raise ParplanError(f"torchtitan TOML: pipeline_parallel_layers_per_stage {per_stage} makes {stages} "
                               f"stages, not a multiple of pipeline_parallel_degree {pp}")
        vpp = stages // pp
    else:
        vpp = 1 if SCHEDULE.get(schedule) in SINGLE_STAGE else 2
    if weights == [1, 1]:
        return vpp, None, None
    first, last = (int(x) for x in spread_ends(layers, pp, vpp, *weights))
    return vpp, first, last


def read(source: str, world_size: int, model: ModelSpec):
    """A :class:`LaunchConfig` from a torchtitan TOML."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ParplanError(f"torchtitan TOML: {exc}") from None
    unknown(data, tuple(KEYS) + OTHER_SECTIONS, "torchtitan TOML")
    for section, keys in KEYS.items():
        unknown(data.get(section, {}), keys, f"torchtitan TOML [{section}]")
    par, train = data.get("parallelism", {}), data.get("training", {})
    ac, comp = data.get("activation_checkpoint", {}), data.get("compile", {})
    tp, pp, cp = (whole(par.get(k, 1), k) for k in ("tensor_parallel_degree", "pipeline_parallel_degree",
                                                     "context_parallel_degree"))
    replicate = whole(par.get("data_parallel_replicate_degree", 1), "data_parallel_replicate_degree")
    shard = par.get("data_parallel_shard_degree", -1)
    shard = split_dp(world_size, tp * pp * cp * replicate) if shard == -1 else whole(shard, "data_parallel_shard_degree")
    dp = replicate * shard
    split_dp(world_size, tp * pp * cp * dp)
    if tp * pp * cp * dp != world_size:
        raise ParplanError(f"torchtitan TOML: the degrees multiply to {tp * pp * cp * dp}, not the {world_size} devices")
    # FSDP runs over dp_shard x cp: context-parallel ranks shard parameters even when dp_shard is 1
    # (v0.2.2 parallel_dims.py: fsdp_enabled = dp_shard_enabled or cp_enabled; mesh "dp_shard_cp").
    policy = par.get("fsdp_reshard_after_forward", "default")
    zero = 0 if shard * cp == 1 else (2 if policy == "never" or (policy == "default" and pp > 1) else 3)
    local = whole(train.get("local_batch_size", 8), "local_batch_size")
    mb = whole(par.get("pipeline_parallel_microbatch_size", 1), "pipeline_parallel_microbatch_size") if pp > 1 else local
    gb = train.get("global_batch_size", -1)
    gb = local * dp if gb == -1 else whole(gb, "global_batch_size")
    schedule = {v: k for k, v in SCHEDULE.items()}.get(par.get("pipeline_parallel_schedule", "1F1B"))
    if pp > 1 and schedule is None:
        raise ParplanError(f"torchtitan TOML: pipeline_parallel_schedule '{par['pipeline_parallel_schedule']}' is not "
                           f"one of {', '.join(SCHEDULE.values())}")
    vpp, first, last = _read_stages(par, pp, schedule, model.layers) if pp > 1 else (1, None, None)
    mode = ac.get("mode", "selective")
    option = str(ac.get("selective_ac_option", "2"))
    recompute = {"none": "none", "full": "full"}.get(mode) or \
        ("selective-op" if option == "op" else "selective-layer" if mode == "selective" else None)
    if recompute == "selective-layer" and option != str(SELECTIVE_LAYER_EVERY):
        raise ParplanError(f"torchtitan TOML: selective_ac_option '{option}': the model prices layer-selective "
                           f"checkpointing of one block in {SELECTIVE_LAYER_EVERY}, or 'op'")
    if recompute is None:
        raise ParplanError(f"torchtitan TOML: activation_checkpoint mode '{mode}' is not none, full or selective")
    ep = whole(par.get("expert_parallel_degree", 1), "expert_parallel_degree")
    etp = whole(par.get("expert_tensor_parallel_degree", 1), "expert_tensor_parallel_degree")
    if (ep > 1 or etp > 1) and not model.is_moe:
        raise ParplanError(f"torchtitan TOML: expert_parallel_degree {ep} shards experts, but {model.name} is a "
                           f"dense model")
    converters = data.get("model", {}).get("converters", [])
    fp8 = "quantize.linear.float8" in converters or "float8" in converters
    recipe = data.get("quantize", {}).get("linear", {}).get("float8", {}).get("recipe_name") if fp8 else None
    layout = dict(tp=tp, pp=pp, cp=cp, dp=dp, micro_batch=mb, global_batch=gb,
                  seq_len=whole(train.get("seq_len", 2048), "seq_len"), zero=zero,
                  shard_group=shard if zero and replicate > 1 else None, sp=tp > 1, vpp=vpp,
                  schedule=schedule if pp > 1 else "1f1b", recompute=recompute, dtype="fp8" if fp8 else "bf16",
                  cp_mode="ring" if par.get("context_parallel_rotate_method") == "alltoall" else "allgather",
                  first_stage_layers=first, last_stage_layers=last)
    if model.is_moe:
        layout["axes"] = (("ep", ep), ("etp", etp))
    return launch(TARGET, PROFILE, layout, compiled=bool(comp.get("enable", False)),
                  fp8_recipe=(recipe or "tensorwise") if fp8 else None,
                  tp_overlap="collective-matmul" if par.get("enable_async_tensor_parallel") else None)
