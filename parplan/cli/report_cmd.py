"""``parplan report`` and ``parplan sweep`` as click commands.

The main CLI registers them with ``cli.add_command(report)`` and
``cli.add_command(sweep)``. Importing this module loads neither pandas nor
matplotlib; the commands import what they need when they run.
"""
from __future__ import annotations

import shlex

import click

from ..plan.search import OBJECTIVES
from ..specs.dtypes import DTYPES
from .common import HEADROOM, one_line_errors
from .software_opts import pop_software, software_from, software_options
from ..errors import ParplanError



_one_line_errors = one_line_errors


def _positive(name: str, value):
    if value is not None and value < 1:
        raise ParplanError(f"--{name} must be a positive whole number, got {value}")


def _command_line() -> str:
    """The invocation as a user would type it: the options given on the command line, in the command's order."""
    ctx = click.get_current_context()
    parts = ["parplan", ctx.info_name or ctx.command.name]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name not in ctx.params:
            continue
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            flag = param.opts[0] if value else (param.secondary_opts or param.opts)[0]
            parts.append(flag)
            continue
        name = max(param.opts, key=len)
        for v in (value if param.multiple else (value,)):
            parts += [name, shlex.quote(str(v))]
    return " ".join(parts)


@click.command(name="report")
@click.option("--model", "model_name", required=True, help="Model name, YAML spec or HF config.json.")
@click.option("--hw", "hw", required=True, help="Cluster: NAMExCOUNT (a100x512), a profile, or a cluster YAML.")
@click.option("--global-batch", default=None,
              help="Sequences per step: N, or a list 512,1024 or a range 512..4096 to search, the report taking the "
                   "batch of the best plan (default: ~4M tokens).")
@click.option("--seq", type=int, default=None, help="Sequence length (default: the model's).")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True)
@click.option("--objective", type=click.Choice(OBJECTIVES), default="throughput", show_default=True)
@click.option("--top", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Plans in the breakdown charts and tables.")
@click.option("--headroom", type=HEADROOM, default=0.10, show_default=True,
              help="Fraction of HBM kept free.")
@click.option("--scaling/--no-scaling", default=True, show_default=True,
              help="Add the scaling curves (devices and global batch).")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output directory (default: reports/<model>-<cluster>/).")
@software_options
@_one_line_errors
def report(model_name, hw, global_batch, seq, dtype, objective, top, headroom, scaling, out_dir, **kw):
    """Write a Markdown report of the best plans with roofline, breakdown, memory and scaling plots."""
    from ..plan.planner import parse_global_batch
    from ..views.frames import as_cluster, as_model
    from ..views.progress import progress
    from ..views.report import build_report

    batches = parse_global_batch(global_batch)
    global_batch = batches[0] if batches and len(batches) == 1 else batches
    _positive("seq", seq)
    model, cluster = as_model(model_name, seq), as_cluster(hw)
    software = software_from(pop_software(kw), cluster, dtype)
    with progress("report", percent=True) as bar:
        rep = build_report(model, cluster, global_batch=global_batch, out_dir=out_dir,
                           top=top, dtype=dtype, headroom=headroom, objective=objective, scaling=scaling,
                           command=_command_line(), progress=bar, software=software)
    click.echo(f"wrote {rep.markdown}")
    for f in rep.files:
        if f != rep.markdown:
            click.echo(f"      {f}")


@click.command(name="sweep")
@click.option("--model", "model_name", required=True, help="Model name, YAML spec or HF config.json.")
@click.option("--hw", "hw", required=True,
              help="A profile (a100: vary devices) or a cluster (a100x512 or a cluster YAML).")
@click.option("--vary", "vary", multiple=True, required=True, metavar="KEY=VALUES",
              help="devices, global-batch or seq: a..b doubles from a to b (64..4096), or a list (512,1024,2048). "
                   "Repeat for a grid.")
@click.option("--global-batch", type=int, default=None,
              help="Sequences per step when not varied (default: the default rule at each size).")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True)
@click.option("--objective", type=click.Choice(OBJECTIVES), default="throughput", show_default=True)
@click.option("--headroom", type=HEADROOM, default=0.10, show_default=True,
              help="Fraction of HBM kept free.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True,
              help="What to print (the CSV and the plot are written either way).")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output directory for sweep.csv and sweep.png (default: reports/sweep-<model>-<hw>/).")
@software_options
@_one_line_errors
def sweep(model_name, hw, vary, global_batch, dtype, objective, headroom, fmt, out_dir, **kw):
    """Best plan for every combination of device count, global batch and sequence length."""
    from ..specs.model_loader import load_model
    from ..views.files import check_writable
    from ..views.progress import progress
    from ..plan.sweep import Options, base_cluster, parse_vary, run_sweep
    from ..views.sweep_text import default_sweep_dir, format_sweep, sweep_columns, write_sweep

    grid = parse_vary(vary)
    _positive("global-batch", global_batch)
    model = load_model(model_name)
    software = software_from(pop_software(kw), base_cluster(hw)[0], dtype)
    target = check_writable(out_dir if out_dir is not None else default_sweep_dir(model, hw))
    points = 1
    for values in grid.values():
        points *= len(values)
    with progress("sweep", points, unit="point") as bar:
        df = run_sweep(model, hw, grid, global_batch=global_batch,
                       options=Options(dtype=dtype, headroom=headroom, objective=objective, software=software),
                       progress=bar)
    written = write_sweep(df, target)
    if fmt == "csv":
        click.echo(df[sweep_columns(df)].to_csv(index=False), nl=False)
    else:
        click.echo(format_sweep(df))
        click.echo("")
        click.echo(f"wrote {written['csv']}")
        click.echo(f"      {written['plot']}")
