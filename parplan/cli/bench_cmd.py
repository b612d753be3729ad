"""Click commands ``bench``, ``calibrate`` and ``compare``, and the torchrun worker entry point.

``bench`` starts ``torchrun`` on this machine; the worker (``python -m parplan.bench``) takes
the same measurement options and is what ``torchrun --nnodes ...`` runs across machines.
Nothing here imports torch: only the worker process does.
"""
from __future__ import annotations

import importlib.util
import socket
import sys
from dataclasses import replace
from pathlib import Path

import click

from ..errors import ParplanError
from ..units import parse_bytes
from ..calibrate.rows import CSV_NAME, JSONL_NAME
from ..calibrate.load import load_results
from ..bench.writer import default_out_dir
from ..views.files import write_text
from .common import one_line_errors, run
from ..bench.config import (BenchConfig, parse_concurrency, parse_dtypes, parse_groups, parse_layouts, parse_ops,
    parse_shapes, parse_step_modes, parse_suites, resolve)
from ..bench.items import build_plan


user_errors = one_line_errors


def measure_options(fn):
    """The options shared by ``parplan bench`` and the worker."""
    options = [
        click.option("--suite", default=None,
                     help="What to measure: collectives, matmul, copy, layer, step (whole training steps of "
                          "--model), or all [default: collectives,matmul,copy, plus layer with --model]."),
        click.option("--ops", default="all", show_default=True,
                     help="Collectives, comma separated: all_reduce, all_gather, reduce_scatter, all_to_all, "
                          "broadcast, reduce, send_recv (all = every one but reduce)."),
        click.option("--min-bytes", default="8", show_default=True, help="Smallest buffer (8, 64K, 1M, ...)."),
        click.option("--max-bytes", default="auto", show_default=True,
                     help="Largest buffer (auto: 1G on a GPU, 64M on a CPU)."),
        click.option("--factor", type=int, default=2, show_default=True, help="Size step factor."),
        click.option("--dtype", default="fp32", show_default=True, help="Collective dtype: fp32, bf16, fp16."),
        click.option("--groups", default="auto", show_default=True,
                     help="Group sizes, e.g. world,2,4,8 (auto: the world and every power of two dividing it)."),
        click.option("--layout", default="both", show_default=True,
                     help="Sub-group ranks: contiguous, strided (every world/g-th rank) or both."),
        click.option("--concurrency", default="all", show_default=True,
                     help="Sub-groups communicating at once: all (every group of a layout, as a mesh axis), "
                          "one (the first group alone, as GROUP-alone) or both."),
        click.option("--iters", type=int, default=20, show_default=True, help="Timed iterations per item."),
        click.option("--warmup", type=int, default=5, show_default=True, help="Untimed iterations first."),
        click.option("--timeout", type=float, default=300.0, show_default=True,
                     help="Seconds one item may take before the run ends with an error."),
        click.option("--matmul-dtypes", default="auto", show_default=True,
                     help="Matmul dtypes (auto: bf16,fp16,fp32 on a GPU, fp32 on a CPU)."),
        click.option("--shapes", default=None, help="Matmul shapes MxKxN,... instead of the default sweep."),
        click.option("--matmul-min", type=int, default=0, help="Smallest square matmul [256 GPU, 64 CPU]."),
        click.option("--matmul-max", type=int, default=0, help="Largest square matmul [16384 GPU, 512 CPU]."),
        click.option("--model", "models", multiple=True,
                     help="Model (name or YAML) whose layer to time forward and backward; repeatable."),
        click.option("--micro-batch", type=int, default=1, show_default=True, help="Layer micro-batch."),
        click.option("--seq", type=int, default=0, help="Layer sequence length [the model's]."),
        click.option("--layer-dtype", default="", help="Layer dtype [bf16 on a GPU, fp32 on a CPU]."),
        click.option("--step-modes", default="auto", show_default=True,
                     help="Whole steps: eager, compiled, and either with -fp8-tensorwise or -fp8-rowwise (torchao), "
                          "any with -fsdp (FSDP2 on one rank too) "
                          "(auto: eager,compiled,compiled-fp8-tensorwise on a GPU, eager on a CPU)."),
        click.option("--micro-batches", type=int, default=1, show_default=True,
                     help="Micro-batches accumulated per whole step."),
        click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu."),
        click.option("--backend", default="auto", show_default=True,
                     help="auto (nccl on GPUs, gloo on CPUs), nccl or gloo."),
        click.option("-o", "--output", default=None,
                     help="Results directory [reports/bench/<host>-<timestamp>]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def config_from_options(opts: dict) -> BenchConfig:
    """A validated BenchConfig from the shared options (every error a ParplanError)."""
    models = tuple(opts.get("models") or ())
    return BenchConfig(
        suites=parse_suites(opts.get("suite"), bool(models)),
        ops=parse_ops(opts.get("ops")),
        min_bytes=parse_bytes(opts.get("min_bytes", "8"), "--min-bytes"),
        max_bytes=_max_bytes(opts.get("max_bytes") or "auto"),
        factor=opts.get("factor", 2),
        dtype=str(opts.get("dtype", "fp32")).lower(),
        groups=parse_groups(opts.get("groups")),
        layouts=parse_layouts(opts.get("layout")),
        concurrency=parse_concurrency(opts.get("concurrency")),
        iters=opts.get("iters", 20),
        warmup=opts.get("warmup", 5),
        timeout_s=float(opts.get("timeout", 300.0)),
        matmul_dtypes=parse_dtypes(opts.get("matmul_dtypes"), "--matmul-dtypes"),
        shapes=parse_shapes(opts.get("shapes")),
        matmul_min=opts.get("matmul_min") or 0,
        matmul_max=opts.get("matmul_max") or 0,
        models=models,
        micro_batch=opts.get("micro_batch", 1),
        seq=opts.get("seq") or 0,
        layer_dtype=str(opts.get("layer_dtype") or "").lower(),
        step_modes=parse_step_modes(opts.get("step_modes")),
        micro_batches=opts.get("micro_batches") or 1,
        device=str(opts.get("device", "auto")).lower(),
        backend=str(opts.get("backend", "auto")).lower(),
        out_dir=opts.get("output") or "",
    )


def _max_bytes(text: str) -> int:
    """``--max-bytes``: a size, or ``auto`` (0) for the device's default."""
    return 0 if str(text).strip().lower() == "auto" else parse_bytes(text, "--max-bytes")


def _check_models(config: BenchConfig) -> None:
    from ..bench.config import check_bench_model
    from ..specs.model_loader import load_model

    for name in config.models:
        check_bench_model(load_model(name))


# --------------------------------------------------------------------------- bench


@click.command("bench")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes (GPUs) on this machine; torchrun starts them.")
@measure_options
@user_errors
def bench(nproc: int, **opts) -> None:
    """Measure collectives, matmuls, HBM copies and a transformer layer with PyTorch.

    Starts NPROC ranks with torchrun (NCCL on GPUs, gloo on CPUs) and writes CSV, JSON lines
    and plots to the results directory as each measurement finishes. Across machines, run the
    worker with torchrun yourself: torchrun --nnodes N ... -m parplan.bench [options].
    """
    from ..bench.launch import launch

    if not 1 <= nproc <= 1024:
        raise ParplanError(f"--nproc must be between 1 and 1024, got {nproc}")
    config = config_from_options(opts)
    _check_models(config)
    build_plan(resolve(config, on_gpu=False), nproc)  # group sizes against the world, before starting
    if importlib.util.find_spec("torch") is None:
        raise ParplanError("parplan bench needs PyTorch: pip install 'parplan[bench]'")
    out_dir = Path(config.out_dir) if config.out_dir else default_out_dir(socket.gethostname())
    if (out_dir / CSV_NAME).exists() and (out_dir / CSV_NAME).stat().st_size > 0:
        raise ParplanError(f"{out_dir} already holds results; choose another -o")
    config = replace(config, out_dir=str(out_dir))
    launch(nproc, config.to_argv(), out_dir)
    written = [p.name for p in (out_dir / CSV_NAME, out_dir / JSONL_NAME, out_dir / "meta.json",
                                out_dir / "busbw.png", out_dir / "matmul.png") if p.exists()]
    click.echo(f"results in {out_dir}: {', '.join(written)}")


# --------------------------------------------------------------------------- calibrate


@click.command("calibrate")
@click.argument("results", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Profile YAML to write (e.g. my-cluster.yaml).")
@click.option("--hw", "base", default=None,
              help="Base profile whose other fields the new one keeps, or a cluster file whose links it "
                   "keeps too (in_switch_reduction: false) [guessed from the device name].")
@user_errors
def calibrate(results: tuple[str, ...], output: str, base: str | None) -> None:
    """Fit a hardware profile to bench results or nccl-tests logs.

    RESULTS are bench result directories, results.csv / results.jsonl files, or the text
    output of nccl-tests (all_reduce_perf, all_gather_perf, ...). Writes a complete profile
    that --hw OUTPUT loads: alpha-beta fits per collective and group class, a matmul
    efficiency curve, HBM copy efficiency and kernel overhead.
    """
    from ..views.profiles import write_profile

    rows = load_results(results)
    cal, hw = write_profile(rows, Path(output), base)
    for note in cal.notes:
        click.echo(f"note: {note}", err=True)
    if cal.fits:
        click.echo(f"{'collective':<15} {'group':<6} {'ranks':>5} {'alpha':>10} {'busbw':>12} {'sizes':>6} "
                   f"{'rms err':>8}")
        for f in cal.fits:
            click.echo(f"{f.op:<15} {f.group:<6} {f.ranks:>5} {f.alpha_s * 1e6:>8.2f}us "
                       f"{f.busbw / 1e9:>8.2f} GB/s {f.points:>6} {100 * f.rms_rel_err:>7.1f}%")
    if cal.matmul_curve:
        click.echo(f"matmul curve ({cal.matmul_dtype}): {len(cal.matmul_curve)} points, best efficiency "
                   f"{hw.matmul_efficiency:.3f}")
    if cal.hbm_efficiency is not None:
        click.echo(f"HBM copy efficiency: {cal.hbm_efficiency:.3f}")
    if cal.in_layer_scale is not None:
        click.echo(f"in-layer matmul scale: {cal.in_layer_scale:.3f} ({cal.in_layer_passes} layer passes)")
    if cal.kernel_overhead_s is not None:
        click.echo(f"kernel overhead: {cal.kernel_overhead_s * 1e6:.2f} us")
    click.echo(f"wrote {output} (use it as --hw {output})")


# --------------------------------------------------------------------------- compare


@click.command("compare")
@click.argument("results", nargs=-1, required=True)
@click.option("--hw", "hw_spec", required=True, help="Profile (name or YAML) or cluster to predict with.")
@click.option("-o", "--output", default=None, help="Directory for compare.csv and compare.png [the results'].")
@click.option("--all-rows", is_flag=True, help="Print every row's error, not only the worst ten.")
@click.option("--framework", default=None,
              help="Framework profile (name or YAML) that predicts whole-step rows [torchtitan: what "
                   "--suite step runs].")
@user_errors
def compare(results: tuple[str, ...], hw_spec: str, output: str | None, all_rows: bool,
            framework: str | None) -> None:
    """Predicted against measured time for every result row, with error tables and a plot."""
    from ..calibrate import compare as cmp

    rows = load_results(results)
    comparisons = cmp.compare(rows, hw_spec, framework or cmp.STEP_FRAMEWORK)
    predicted = [c for c in comparisons if c.error_pct is not None]
    first = Path(results[0])
    out_dir = Path(output) if output else (first if first.is_dir() else first.parent)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParplanError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    summaries = cmp.summarize(comparisons)
    write_text(out_dir / "compare.csv", cmp.to_csv(comparisons), sync=True)
    write_text(out_dir / "compare-summary.csv", cmp.to_csv(summaries), sync=True)
    skipped = {}
    for c in comparisons:
        if c.error_pct is None:
            skipped[c.note] = skipped.get(c.note, 0) + 1
    if not predicted:
        raise ParplanError("no row could be predicted: " + "; ".join(f"{n} ({k} rows)" for n, k in skipped.items()))
    shown = predicted if all_rows else sorted(predicted, key=lambda c: -abs(c.error_pct))[:10]
    click.echo(f"{len(predicted)} of {len(comparisons)} rows predicted with --hw {hw_spec}")
    click.echo("")
    click.echo(cmp.summary_table(summaries))
    click.echo("")
    click.echo("every row:" if all_rows else "largest errors:")
    click.echo(cmp.rows_table(shown))
    for note, k in skipped.items():
        if note:
            click.echo(f"note: {k} rows not predicted: {note}", err=True)
    try:
        from ..views.bench_plots import plot_compare

        plot_compare([c.measured_s for c in predicted], [c.predicted_s for c in predicted],
                     [c.key if c.kind != "collective" else c.op for c in predicted],
                     out_dir / "compare.png", f"predicted ({hw_spec}) vs measured")
        plot = ", compare.png"
    except ImportError:
        plot = ""
    click.echo(f"\nwrote {out_dir / 'compare.csv'}, compare-summary.csv{plot}")


# --------------------------------------------------------------------------- worker


@click.command("worker")
@measure_options
@user_errors
def worker(**opts) -> None:
    """One rank of a bench run (what torchrun starts): python -m parplan.bench [options]."""
    config = config_from_options(opts)
    if importlib.util.find_spec("torch") is None:
        raise ParplanError("parplan bench needs PyTorch: pip install 'parplan[bench]'")
    from ..bench.worker import run_worker

    sys.exit(run_worker(config))


COMMANDS = {"bench": bench, "calibrate": calibrate, "compare": compare}


def main(argv: list[str] | None = None) -> None:
    """``python -m parplan.bench [options]`` runs a worker; ``python -m parplan.bench calibrate|compare|bench ...``
    runs that command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        run(COMMANDS[argv[0]], argv[1:], f"python -m parplan.bench {argv[0]}")
    else:
        run(worker, argv, "python -m parplan.bench")
