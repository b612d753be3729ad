"""The ``parplan`` command line: a thin shell over the library.

Every failure the user can cause prints one line ``Error: ...`` and exits
non-zero (2 for usage errors), never a traceback.
"""
from __future__ import annotations

import json

import click

from ..layouts.layout import CP_MODES, RECOMPUTE, SCHEDULES, TP_MODES
from ..plan.emitters import TARGETS as EMIT_TARGETS
from ..plan.search import OBJECTIVES
from ..specs.dtypes import DTYPES
from .common import HEADROOM, one_line_errors, run
from .software_opts import pop_software, software_from, software_options
from ..errors import ParplanError
from .serve_cmd import inference_options
from .launch_opts import emit_framework, with_launch_config
from .layout_build import build_layout
from .pipeline_opts import split_options


ICI_HELP = ("TPU: lay the mesh axes over the slice's torus axes (x, y, z) and the slices (dcn), e.g. "
            "'tp=z,dp=x+y+dcn' or 'tp=z:4,dp=x+y+z:4' (default: the fastest).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="parplan")
def cli():
    """Plan, predict and explain distributed training of large transformers."""


# --------------------------------------------------------------------------- shared options

RECOMPUTE_LAYERS_HELP = ("Full recompute of only the first N layers of each pipeline chunk, the rest keeping "
                         "their activations (Megatron's --recompute-method block); implies --recompute full.")

def layout_options(fn):
    opts = [
        click.option("--model", "model_name", required=True, help="Model name, YAML spec or HF config.json."),
        click.option("--hw", "hw", required=True, help="Cluster: NAMExCOUNT (a100x512), a profile, or a cluster YAML."),
        click.option("--mesh", default=None, help="Axes innermost first, e.g. 'tp=8,cp=1,pp=16,dp=128'."),
        click.option("--tp", type=int, default=None, help="Tensor-parallel size."),
        click.option("--pp", type=int, default=None, help="Pipeline-parallel stages."),
        click.option("--dp", type=int, default=None, help="Data-parallel size (default: what the rest leaves)."),
        click.option("--cp", type=int, default=None, help="Context-parallel size."),
        click.option("--ep", type=int, default=None,
                     help="Expert-parallel size (MoE models; folded over tp x cp x dp, not more devices)."),
        click.option("--etp", type=int, default=None, help="Expert tensor-parallel size (MoE models; default 1)."),
        click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per micro-batch."),
        click.option("--global-batch", type=int, default=None,
                     help="Sequences per step (default: the plan's fixed budget of ~4.2M tokens, in whole rounds of "
                          "micro-batches)."),
        click.option("--seq", type=int, default=None, help="Sequence length (default: the model's)."),
        click.option("--recompute", type=click.Choice(RECOMPUTE), default=None,
                     help="Activation recompute (default: none; full with --recompute-layers)."),
        click.option("--recompute-layers", type=int, default=None, help=RECOMPUTE_LAYERS_HELP),
        click.option("--dtype", type=click.Choice(DTYPES), default="bf16",
                     show_default=True),
        click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True,
                     help="ZeRO stage (3 = FSDP FULL_SHARD)."),
        click.option("--shard-group", type=int, default=None, help="HSDP: shard within groups of this many DP ranks."),
        click.option("--sp/--no-sp", default=False, help="Megatron sequence parallel."),
        click.option("--tp-mode", type=click.Choice(TP_MODES), default="1d", show_default=True),
        click.option("--cp-mode", type=click.Choice(CP_MODES), default="allgather", show_default=True),
        click.option("--vpp", type=int, default=1, show_default=True, help="Virtual pipeline stages per rank."),
        click.option("--schedule", type=click.Choice(SCHEDULES), default="1f1b",
                     show_default=True),
        click.option("--ici", default=None, help=ICI_HELP),
        click.option("--headroom", type=HEADROOM, default=0.10, show_default=True,
                     help="Fraction of HBM kept free."),
        *budget_options(),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return software_options(split_options(fn))


def budget_options() -> list:
    return [
        click.option("--tokens", type=float, default=None,
                     help="Tokens to train on: prints the time to train and the device-hours (e.g. 1e12)."),
        click.option("--price-per-device-hour", "price", type=float, default=None,
                     help="Price of one device for an hour (or price_per_device_hour in a cluster file): "
                          "prints the cost."),
    ]


def _estimate_from_options(model_name, hw, headroom, **kw):
    from ..plan.candidates import default_batch_note
    from ..step.train import estimate
    from ..specs.cluster import load_cluster
    from ..specs.model_loader import load_model

    model = load_model(model_name)
    cluster = load_cluster(hw)
    software = software_from(pop_software(kw), cluster, kw["dtype"])
    layout = build_layout(cluster, model, **kw)
    note = "given" if kw.get("global_batch") is not None else \
        default_batch_note(layout.global_batch, layout.seq_len or model.seq_len)
    return estimate(model, cluster, layout, headroom=headroom, software=software), note


# --------------------------------------------------------------------------- commands

@cli.command()
@layout_options
@inference_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--from-config", "from_config", default=None,
              help="Read the layout from a launch config: torchtitan TOML, DeepSpeed JSON, Megatron flags or YAML, "
                   "llm-foundry YAML (options given here override it).")
@one_line_errors
def estimate(model_name, hw, headroom, fmt, mode, inference, from_config, **kw):
    """Predict step time, throughput, MFU and memory of one layout (--mode inference: TTFT, TPOT, KV cache)."""
    if from_config and mode == "inference":
        raise ParplanError("--from-config reads a training launch; it does not apply with --mode inference")
    if from_config:
        kw = with_launch_config(from_config, model_name, hw, kw, click.get_current_context())
    _estimate_or_explain(model_name, hw, headroom, fmt, mode, inference, kw, explain=False)


@cli.command()
@layout_options
@inference_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--from-config", "from_config", default=None,
              help="Read the layout from a launch config: torchtitan TOML, DeepSpeed JSON, Megatron flags or YAML, "
                   "llm-foundry YAML (options given here override it).")
@one_line_errors
def explain(model_name, hw, headroom, fmt, mode, inference, from_config, **kw):
    """Per-op and per-collective cost table for one layer and the whole step."""
    if from_config and mode == "inference":
        raise ParplanError("--from-config reads a training launch; it does not apply with --mode inference")
    if from_config:
        kw = with_launch_config(from_config, model_name, hw, kw, click.get_current_context())
    _estimate_or_explain(model_name, hw, headroom, fmt, mode, inference, kw, explain=True)


def _estimate_or_explain(model_name, hw, headroom, fmt, mode, inference, kw, explain: bool) -> None:
    from .serve_cmd import dispatch_estimate
    from ..plan.interval import estimate_interval
    from ..views.records import estimate_dict, explain_dict, format_budget, format_estimate, plan_budget
    from ..views.text import format_explain

    text = dispatch_estimate(model_name, hw, headroom, fmt, mode, inference, kw, explain=explain)
    if text is not None:
        click.echo(text)
        return
    tokens, price = kw.pop("tokens"), kw.pop("price")
    est, note = _estimate_from_options(model_name, hw, headroom, **kw)
    money = plan_budget(est, tokens, price)
    interval = estimate_interval(est)
    if fmt == "json":
        extra = {"global_batch_note": note, "step_time_interval_s": [interval.low_s, interval.high_s],
                 "interval": interval.as_dict()} | ({"budget": money.as_dict()} if money else {})
        click.echo(json.dumps((explain_dict if explain else estimate_dict)(est) | extra, indent=2))
        return
    click.echo(format_estimate(est, batch_note=note, interval=interval))
    if money:
        click.echo(format_budget(money))
    if explain:
        click.echo("")
        click.echo(format_explain(explain_dict(est)))


@cli.command()
@click.option("--model", "model_name", required=True, help="Model name, YAML spec or HF config.json.")
@click.option("--hw", "hw", required=True, help="Cluster: NAMExCOUNT (a100x512), a profile, or a cluster YAML.")
@click.option("--global-batch", default=None,
              help="Sequences per step: N, a list 512,1024 or a range 512..4096 to search (default: ~4M tokens).")
@click.option("--seq", type=int, default=None, help="Sequence length (default: the model's).")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16",
              show_default=True)
@click.option("--objective", type=click.Choice(OBJECTIVES), default="throughput", show_default=True)
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--headroom", type=HEADROOM, default=0.10, show_default=True,
              help="Fraction of HBM kept free.")
@click.option("--allow-cross-node-tp", is_flag=True, help="Let tensor parallel span nodes.")
@software_options
@click.option("--tp", type=int, default=None, help="Fix the tensor-parallel size.")
@click.option("--pp", type=int, default=None, help="Fix the pipeline size.")
@click.option("--dp", type=int, default=None, help="Fix the data-parallel size.")
@click.option("--cp", type=int, default=None, help="Fix the context-parallel size.")
@click.option("--ep", type=int, default=None, help="Fix the expert-parallel size (MoE models).")
@click.option("--etp", type=int, default=None, help="Fix the expert tensor-parallel size (MoE models).")
@click.option("--zero", type=click.IntRange(0, 3), default=None, help="Fix the ZeRO stage.")
@click.option("--micro-batch", type=int, default=None, help="Fix the micro-batch.")
@click.option("--recompute", type=click.Choice(RECOMPUTE), default=None)
@click.option("--recompute-layers", type=int, default=None, help=RECOMPUTE_LAYERS_HELP)
@click.option("--mesh", default=None, help="Fix the axes and their order, innermost first, e.g. 'tp=8,pp=4,dp=16'.")
@click.option("--sp/--no-sp", default=None, help="Fix Megatron sequence parallel on or off.")
@click.option("--vpp", type=int, default=None, help="Fix the virtual pipeline stages per rank.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None, help="Fix the pipeline schedule.")
@split_options(plan=True)
@click.option("--tp-mode", type=click.Choice(TP_MODES), default=None, help="Fix the tensor-parallel scheme.")
@click.option("--cp-mode", type=click.Choice(CP_MODES), default=None, help="Fix the context-parallel scheme.")
@click.option("--shard-group", type=int, default=None, help="Fix HSDP: ZeRO shards within groups of this many.")
@click.option("--ici", default=None, help=ICI_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--emit", "emit_target", type=click.Choice(EMIT_TARGETS), default=None,
              help="Print the launch config of the best plan for this framework (implies its --framework); "
                   "vllm or sglang with --mode inference.")
@click.option("--explain", is_flag=True, help="Name the binding constraint and what +10% of each hardware "
              "parameter would buy.")
@budget_options()[0]
@budget_options()[1]
@inference_options(plan=True)
@one_line_errors
def plan(model_name, hw, global_batch, seq, dtype, objective, top, headroom, allow_cross_node_tp,
         fmt, emit_target, explain, tokens, price, mode, inference, **fixed):
    """Search every mesh shape and knob; print the best layouts, ranked (--mode inference: serving layouts)."""
    from ..specs.cluster import load_cluster
    from .serve_cmd import dispatch_plan
    from ..specs.model_loader import load_model
    from ..specs.model import with_seq_len
    from ..plan.planner import make_plan
    from ..views.plan_text import plan_report

    software_kw = pop_software(fixed)
    text = dispatch_plan(model_name, hw, dtype, top, headroom, fmt, mode, inference,
                         dict(global_batch=global_batch, seq=seq, objective=objective, **software_kw), fixed,
                         allow_cross_node_tp, emit_target=emit_target)
    if text is not None:
        click.echo(text)
        return

    model = load_model(model_name)
    model = with_seq_len(model, seq)
    cluster = load_cluster(hw)
    if emit_target:
        software_kw["framework"] = emit_framework(emit_target, software_kw.get("framework"))
    fixed, schedule, placements = plan_fixed(fixed)
    result = make_plan(model, cluster, global_batch=global_batch, dtype=dtype, objective=objective, top=top,
                       headroom=headroom, allow_cross_node_tp=allow_cross_node_tp,
                       software=software_from(software_kw, cluster, dtype), fixed=fixed, emit_target=emit_target,
                       explain=explain, schedule=schedule if schedule in ("gpipe", "zb-h1", "dualpipev") else None,
                       placements=placements)
    click.echo(plan_report(result, fmt, tokens=tokens, price=price))


def plan_fixed(options: dict) -> tuple[dict, str | None, tuple | None]:
    """The search's fixed axes and knobs from plan's options, with the schedule and the mesh order."""
    from ..layouts.layout import mesh_order, parse_mesh, plugin_axes

    fixed = {k: v for k, v in options.items() if v is not None}
    mesh, schedule = fixed.pop("mesh", None), fixed.pop("schedule", None)
    placements = None
    if mesh:
        sizes = parse_mesh(mesh)
        other = [a for a, _ in plugin_axes(sizes) if a not in ("ep", "etp")]
        if other:
            raise ParplanError(f"--mesh: plan searches tp, cp, pp, dp, ep and etp; give {other[0]} "
                               f"to estimate instead")
        for axis, size in sizes.items():
            if fixed.get(axis, size) != size:
                raise ParplanError(f"--{axis} {fixed[axis]} contradicts --mesh {axis}={size}")
            fixed[axis] = size
        placements = (mesh_order(sizes),)
    if schedule == "interleaved" and fixed.get("vpp", 2) < 2:
        raise ParplanError("the interleaved schedule needs --vpp 2 or more")
    if schedule in ("1f1b", "zb-h1"):
        fixed.setdefault("vpp", 1)
    if schedule == "dualpipev":
        fixed.setdefault("vpp", 2)
    for k, v in fixed.items():
        if isinstance(v, int) and not isinstance(v, bool) and v < (0 if k == "zero" else 1):
            raise ParplanError(f"--{k.replace('_', '-')} must be a positive whole number, got {v}")
    return fixed, schedule, placements


@cli.command(name="list")
@click.argument("what", type=click.Choice(["hardware", "models"]))
@one_line_errors
def list_(what):
    """List the shipped hardware profiles or model specs."""
    if what == "hardware":
        from ..specs.hardware import hardware_names, load_hardware

        for name in hardware_names():
            hw = load_hardware(name)
            peak = hw.peak_flops.get("bf16") or hw.peak_flops.get("fp16") or max(hw.peak_flops.values())
            click.echo(f"{hw.name:<14} {peak / 1e12:7.0f} TFLOP/s  {hw.hbm_bytes / 1e9:5.0f} GB  "
                       f"{hw.hbm_bandwidth / 1e12:5.2f} TB/s  aliases: {', '.join(hw.aliases) or '-'}")
    else:
        from ..specs.model_loader import load_model, model_names

        for name in model_names():
            m = load_model(name)
            click.echo(f"{m.name:<16} {m.total_params() / 1e9:9.2f} B params  L={m.layers} h={m.hidden} "
                       f"heads={m.heads}/{m.kv_heads} seq={m.seq_len}  aliases: {', '.join(m.aliases) or '-'}")


@cli.command()
@click.argument("name")
@one_line_errors
def show(name):
    """Show a hardware profile (with derived ratios) or a model spec (with parameter counts)."""
    from ..specs.hardware import load_hardware
    from ..specs.model_loader import load_model
    from ..specs.registry import shipped
    from ..views.text import format_hardware, format_model

    if name.lower() in shipped("hardware") or (name.endswith((".yaml", ".yml")) and _looks_like_profile(name)):
        click.echo(format_hardware(load_hardware(name)))
    elif name.lower() in shipped("models") or name.endswith((".yaml", ".yml", ".json")):
        click.echo(format_model(load_model(name)))
    else:
        from ..specs.yamlio import suggest

        raise ParplanError(f"unknown hardware or model '{name}'"
                           f"{suggest(name, list(shipped('hardware')) + list(shipped('models')))}")


def _looks_like_profile(path: str) -> bool:
    from pathlib import Path

    from ..specs.yamlio import read_yaml

    p = Path(path)
    return p.is_file() and isinstance(data := read_yaml(p), dict) and "peak_flops" in data


@cli.command()
@click.argument("files", nargs=-1)
@click.option("--framework", default=None,
              help="Framework for the runs whose record names none (default: megatron-core on GPUs, jax on TPUs; "
                   "a serving stack applies to the serving records).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@one_line_errors
def validate(files, framework, fmt):
    """Predict every published run in FILES (default: the shipped sets) as 'plan' would, and every serving
    record as 'estimate --mode inference' would, and report the error."""
    from ..validate.published import format_validation, validate_runs
    from ..validate.serving import format_serving_validation, framework_split, split_runs, validate_serving
    from ..views.progress import progress

    runs, serving, unreadable = split_runs(files)
    if not runs and not serving:
        raise ParplanError("; ".join(unreadable))
    train_fw, serve_fw = framework_split(framework)
    with progress("validate", len(runs) + len(serving), unit="run") as bar:
        results = validate_runs(runs, framework=train_fw, progress=bar) if runs else None
        served = validate_serving(serving, serve_fw, lambda i, n: bar(len(runs) + i, len(runs) + n)) \
            if serving else None
    if fmt == "json":
        click.echo(json.dumps((results or {}) | ({"serving": served} if served else {}), indent=2))
    else:
        click.echo("\n\n".join(t for t in (results and format_validation(results),
                                             served and "serving:\n" + format_serving_validation(served)) if t))
    skipped = (results or {}).get("skipped", []) + (served or {}).get("skipped", [])
    failed = ([f"{len(skipped)} runs could not be predicted: "
               + "; ".join(f"{r['id']}: {r['skipped']}" for r in skipped[:3]) + (" ..." if len(skipped) > 3 else "")]
              if skipped else []) + [f"skipped {u}" for u in unreadable]
    if failed:
        raise ParplanError("; ".join(failed))


def _register_optional_commands() -> None:
    """Commands that live in their own packages (their heavy imports stay inside the commands)."""
    from .bench_cmd import bench, calibrate, compare
    from .report_cmd import report, sweep

    for command in (bench, calibrate, compare, report, sweep):
        cli.add_command(command)


_register_optional_commands()


def main(argv=None) -> None:
    """Entry point: run the CLI with one-line errors (exit 2 for usage, 1 otherwise)."""
    run(cli, argv)


if __name__ == "__main__":
    main()
