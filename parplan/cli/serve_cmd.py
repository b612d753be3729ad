"""Command-line pieces for serving: ``estimate``/``plan``/``explain --mode inference``.

The functions here take plain values (as click parses them), return the text to
print (a table, JSON or CSV), and raise ``ParplanError`` with one line on bad
input; ``inference_options`` adds the serving options to a click command.
"""
from __future__ import annotations

import functools
import json

import click

from ..errors import ParplanError
from ..layouts.rules import check_tp_1d
from ..cost.memory import DEFAULT_HEADROOM
from ..step.serve_layout import KV_DTYPES, ServeLayout
from ..step.serve import estimate_inference
from ..step.serve_sweeps import decode_breakdown
from ..step.serve_software import serving_software
from ..specs.serving_stack import DEFAULT_SERVING
from ..views.serve_text import format_inference, inference_dict, op_rows
from ..views.serve_text import format_plans, plan_dicts
from ..views.serve_plots import pareto_plot
from ..plan.serve_search import plans

PLAN_CSV_COLUMNS = ("tp", "pp", "replicas", "batch", "ttft_s", "tpot_s", "itl_s", "tokens_per_s",
                    "tokens_per_s_per_device", "tokens_per_s_per_user", "kv_cache_bytes", "fits", "bottleneck")


INFERENCE_DEFAULTS = {"input_len": None, "output_len": None, "batch": None, "replicas": None, "kv_dtype": None,
                      "ttft_ms": None, "tpot_ms": None, "plot_path": None, "cuda_graphs": None}
# Training-only options of ``estimate``/``explain`` (parplan.cli.layout_options) and ``plan``, at their defaults.
# ``--framework`` and ``--fused-kernels`` apply to both modes (a serving stack's element-wise kernels).
ESTIMATE_TRAINING_DEFAULTS = {"mesh": None, "cp": None, "micro_batch": 1, "global_batch": None, "seq": None,
                              "recompute": None, "zero": 0, "shard_group": None, "sp": False, "tp_mode": "1d",
                              "cp_mode": "allgather", "vpp": 1, "schedule": "1f1b", "flash_attention": None, "etp": None,
                              "compiled": None, "fp8_recipe": None, "ici": None, "first_stage_layers": None,
                              "last_stage_layers": None, "moe_overlap": None, "optimizer_states": None,
                              "moe_dispatcher": None, "tp_overlap": None,
                              "recompute_layers": None, "fp8_params": None, "offload_layers": None}
PLAN_TRAINING_DEFAULTS = {"cp": None, "zero": None, "micro_batch": None, "recompute": None, "global_batch": None,
                          "seq": None, "objective": "throughput", "flash_attention": None,
                          "compiled": None, "fp8_recipe": None,
                          "mesh": None, "sp": None, "vpp": None, "schedule": None,
                          "tp_mode": None, "cp_mode": None, "shard_group": None, "etp": None, "ici": None,
                          "first_stage_layers": None, "last_stage_layers": None, "moe_overlap": None,
                          "optimizer_states": None, "moe_dispatcher": None, "tp_overlap": None,
                          "recompute_layers": None, "fp8_params": None, "offload_layers": None}
SERVING_HELP = f"whose default is {DEFAULT_SERVING['gpu']} on GPUs and {DEFAULT_SERVING['tpu']} on TPUs"


def inference_options(fn=None, *, plan: bool = False):
    """Add ``--mode`` and the serving options to a click command; the command receives them as one dict.

    ``--input-len``, ``--output-len``, ``--batch``, ``--kv-dtype`` always; ``--replicas`` for
    ``estimate``/``explain`` (plan=False); ``--ttft-ms``, ``--tpot-ms``, ``--plot`` for ``plan``
    (plan=True). The decorated function gets ``mode`` and ``inference`` (a dict keyed as
    ``INFERENCE_DEFAULTS``) instead of the individual options.
    """
    if fn is None:
        return lambda f: inference_options(f, plan=plan)
    opts = [
        click.option("--mode", type=click.Choice(["train", "inference"]), default="train", show_default=True,
                     help="Training steps, or serving (prefill + decode)."),
        click.option("--input-len", type=int, default=None, help="Inference: prompt tokens per request."),
        click.option("--output-len", type=int, default=None, help="Inference: generated tokens per request."),
        click.option("--batch", type=int, default=None,
                     help="Inference: sequences in flight per replica" +
                          (" (default: searched)." if plan else " (default 1).")),
        click.option("--kv-dtype", type=click.Choice(list(KV_DTYPES)), default=None,
                     help="Inference: KV-cache dtype (default: the activations', bf16 for fp8 weights)."),
        click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None,
                     help="Inference: replay decode steps as CUDA graphs (default: the serving stack's, "
                          f"{SERVING_HELP})."),
    ]
    if plan:
        opts += [
            click.option("--ttft-ms", type=float, default=None, help="Inference: time-to-first-token target."),
            click.option("--tpot-ms", type=float, default=None, help="Inference: time-per-output-token target."),
            click.option("--plot", "plot_path", default=None,
                         help="Inference: save the Pareto front as this PNG (e.g. reports/inference/pareto.png)."),
        ]
    else:
        opts.append(click.option("--replicas", type=int, default=None,
                                 help="Inference: model replicas (default: what tp*pp leaves; --dp is a synonym)."))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        inference = {k: kwargs.pop(k, None) for k in INFERENCE_DEFAULTS}
        return fn(*args, inference=inference, **kwargs)

    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper


def reject_options(given: dict, defaults: dict, mode: str) -> None:
    """One line naming the first option set away from its default that does not apply in ``mode``."""
    for k, v in given.items():
        if k in defaults and v != defaults[k]:
            flag = {"compiled": "compile", "plot_path": "plot"}.get(k, k).replace("_", "-")
            raise ParplanError(f"--{flag} does not apply with --mode {mode}")


def dispatch_estimate(model_name, hw, headroom, fmt, mode, inference: dict, layout_kw: dict,
                      explain: bool = False) -> str | None:
    """For ``estimate``/``explain``: the text to print in inference mode, None in training mode.

    ``layout_kw`` are the command's layout options (``tp``, ``pp``, ``dp``, ``dtype`` ...);
    options of the other mode set away from their defaults are refused in one line.
    """
    if mode != "inference":
        reject_options(inference, INFERENCE_DEFAULTS, mode)
        return None
    reject_options(layout_kw, ESTIMATE_TRAINING_DEFAULTS, "inference")
    replicas = inference.get("replicas")
    if replicas is not None and layout_kw.get("dp") is not None and replicas != layout_kw["dp"]:
        raise ParplanError(f"--replicas {replicas} contradicts --dp {layout_kw['dp']}")
    command = explain_inference_command if explain else estimate_inference_command
    return command(model_name, hw, layout_kw.get("tp"), layout_kw.get("pp"),
                   replicas if replicas is not None else layout_kw.get("dp"), inference.get("batch"),
                   inference.get("input_len"), inference.get("output_len"), inference.get("kv_dtype"),
                   layout_kw.get("dtype") or "bf16", fmt, headroom, ep=layout_kw.get("ep"),
                   framework=layout_kw.get("framework"), cuda_graphs=inference.get("cuda_graphs"),
                   fused_kernels=layout_kw.get("fused_kernels"))


def dispatch_plan(model_name, hw, dtype, top, headroom, fmt, mode, inference: dict, training_kw: dict,
                  fixed: dict, allow_cross_node_tp: bool = False, emit_target: str | None = None) -> str | None:
    """For ``plan``: the text to print in inference mode, None in training mode.

    ``training_kw``: the plan's training-only options (``global_batch``, ``seq``, ``objective``,
    ``flash_attention``); ``fixed``: its axis options (``tp``, ``pp``, ``dp`` fix the split, ``dp``
    as the replicas; ``cp``, ``zero``, ``micro_batch``, ``recompute`` are training-only).
    """
    if mode != "inference":
        reject_options(inference, INFERENCE_DEFAULTS, mode)
        return None
    reject_options({**training_kw, **fixed}, PLAN_TRAINING_DEFAULTS, "inference")
    axes = {"tp": fixed.get("tp"), "pp": fixed.get("pp"), "replicas": fixed.get("dp"), "ep": fixed.get("ep")}
    return plan_inference_command(model_name, hw, inference.get("input_len"), inference.get("output_len"),
                                  inference.get("batch"), inference.get("ttft_ms"), inference.get("tpot_ms"),
                                  inference.get("kv_dtype"), dtype, top, fmt, headroom,
                                  plot_path=inference.get("plot_path"), fixed=axes,
                                  allow_cross_node_tp=allow_cross_node_tp, emit_target=emit_target,
                                  framework=training_kw.get("framework"), cuda_graphs=inference.get("cuda_graphs"),
                                  fused_kernels=training_kw.get("fused_kernels"))


def _resolve(model, cluster):
    from ..specs.cluster import load_cluster
    from ..specs.model_loader import load_model

    return (load_model(model) if isinstance(model, str) else model,
            load_cluster(cluster) if isinstance(cluster, str) else cluster)


def _lengths(input_len, output_len):
    for name, v in (("input-len", input_len), ("output-len", output_len)):
        if v is None:
            raise ParplanError(f"--{name} is required with --mode inference")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ParplanError(f"--{name} must be a positive whole number, got {v!r}")


def _positive(name, v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ParplanError(f"--{name} must be a positive whole number, got {v!r}")


def _layout(model, cluster, tp, pp, replicas, batch, input_len, output_len, kv_dtype, dtype, ep=None) -> ServeLayout:
    _lengths(input_len, output_len)
    for name, v in (("tp", tp), ("pp", pp), ("replicas", replicas), ("batch", batch), ("ep", ep)):
        _positive(name, v)
    tp, pp, batch = tp or 1, pp or 1, batch or 1
    check_tp_1d(model, tp)
    if replicas is None:
        if cluster.devices % (tp * pp):
            raise ParplanError(f"tp*pp = {tp * pp} does not divide the {cluster.devices} devices of {cluster.label}")
        replicas = cluster.devices // (tp * pp)
    return ServeLayout(tp=tp, pp=pp, replicas=replicas, batch=batch, input_len=input_len, output_len=output_len,
                       dtype=dtype or "bf16", kv_dtype=kv_dtype, ep=ep or 1)


def estimate_inference_command(model, cluster, tp, pp, replicas, batch, input_len, output_len, kv_dtype, dtype,
                               fmt="table", headroom=DEFAULT_HEADROOM, ep=None, *, framework=None, cuda_graphs=None,
                               fused_kernels=None) -> str:
    """``parplan estimate --mode inference``: TTFT, TPOT, throughput and memory of one serving layout."""
    model, cluster = _resolve(model, cluster)
    sw = serving_software(framework, cluster.hardware.kind, cuda_graphs=cuda_graphs, fused_kernels=fused_kernels)
    est = estimate_inference(model, cluster,
                             _layout(model, cluster, tp, pp, replicas, batch, input_len, output_len, kv_dtype, dtype,
                                     ep), headroom=headroom, software=sw)
    if fmt == "json":
        return json.dumps(inference_dict(est), indent=2)
    return format_inference(est)


def explain_inference_command(model, cluster, tp, pp, replicas, batch, input_len, output_len, kv_dtype, dtype,
                              fmt="table", headroom=DEFAULT_HEADROOM, batches=None, ep=None, *, framework=None,
                              cuda_graphs=None, fused_kernels=None) -> str:
    """``parplan explain --mode inference``: the estimate, per-op rows of one layer, and decode time vs batch."""
    model, cluster = _resolve(model, cluster)
    sw = serving_software(framework, cluster.hardware.kind, cuda_graphs=cuda_graphs, fused_kernels=fused_kernels)
    lay = _layout(model, cluster, tp, pp, replicas, batch, input_len, output_len, kv_dtype, dtype, ep)
    est = estimate_inference(model, cluster, lay, headroom=headroom, software=sw)
    table = decode_breakdown(model, cluster, lay.tp, batches, lay.input_len, lay.output_len, lay.dtype, lay.kv_dtype,
                             sw)
    if fmt == "json":
        d = inference_dict(est)
        d["prefill_ops"] = op_rows(est, "prefill")
        d["decode_ops"] = op_rows(est, "decode")
        d["decode_vs_batch"] = table.to_dict(orient="records")
        return json.dumps(d, indent=2)
    lines = [format_inference(est), ""]
    for phase in ("prefill", "decode"):
        lines.append(f"one layer, one device, {phase}:")
        lines.append(f"  {'op':<18}{'kind':<17}{'GFLOP':>10}{'MB':>10}{'ms':>9}")
        for r in op_rows(est, phase):
            lines.append(f"  {r['op']:<18}{r['kind']:<17}{r['flops'] / 1e9:10.3f}{r['bytes'] / 1e6:10.2f}"
                         f"{r['time_s'] * 1e3:9.3f}")
        lines.append("")
    lines.append(f"decode step (pp=1, tp={lay.tp}) against batch, ms:")
    lines.append(f"  {'batch':>6}{'GEMMs':>9}{'attention':>11}{'all-reduce':>12}{'other':>8}{'host':>8}{'step':>8}"
                 f"{'AR share':>10}")
    for _, r in table.iterrows():
        lines.append(f"  {int(r['batch']):>6}{r['matmul_s'] * 1e3:9.3f}{r['attention_s'] * 1e3:11.3f}"
                     f"{r['allreduce_s'] * 1e3:12.3f}{(r['other_s'] + r['sampling_s']) * 1e3:8.3f}"
                     f"{r['host_s'] * 1e3:8.3f}{r['step_s'] * 1e3:8.3f}{100 * r['allreduce_fraction']:9.1f}%")
    return "\n".join(lines)


def plan_inference_command(model, cluster, input_len, output_len, batch, ttft_ms, tpot_ms, kv_dtype, dtype,
                           top=10, fmt="table", headroom=DEFAULT_HEADROOM, plot_path=None, fixed=None,
                           allow_cross_node_tp=False, emit_target=None, *, framework=None, cuda_graphs=None,
                           fused_kernels=None) -> str:
    """``parplan plan --mode inference``: the best serving layouts under the latency targets, and the Pareto front.

    ``--emit vllm|sglang`` implies that framework (a different ``--framework`` is refused)."""
    from ..plan.emitters import serving

    model, cluster = _resolve(model, cluster)
    if emit_target is not None:
        framework = serving.framework_for(emit_target, framework)
    sw = serving_software(framework, cluster.hardware.kind, cuda_graphs=cuda_graphs, fused_kernels=fused_kernels)
    _lengths(input_len, output_len)
    _positive("batch", batch)
    _positive("top", top)
    for name, v in (("ttft-ms", ttft_ms), ("tpot-ms", tpot_ms)):
        if v is not None and not v > 0:
            raise ParplanError(f"--{name} must be a positive number of milliseconds, got {v!r}")
    dtype = dtype or "bf16"
    cluster.hardware.peak(dtype)
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    for k, v in fixed.items():
        _positive(k, v)
    df, ranked = plans(model, cluster, input_len=input_len, output_len=output_len, batch=batch, ttft_ms=ttft_ms,
                       tpot_ms=tpot_ms, dtype=dtype, kv_dtype=kv_dtype, headroom=headroom, fixed=fixed,
                       allow_cross_node_tp=allow_cross_node_tp, software=sw)
    if emit_target is not None:
        return _serving_flags(emit_target, model, ranked.iloc[0], input_len, output_len, dtype, kv_dtype)
    note = ""
    if plot_path:
        note = f"\nPareto plot saved to {pareto_plot(df, plot_path)}"
    if fmt == "json":
        return json.dumps(plan_dicts(model, cluster, ranked, input_len=input_len, output_len=output_len,
                                     dtype=dtype, kv_dtype=kv_dtype, headroom=headroom, top=top, software=sw),
                          indent=2)
    if fmt == "csv":
        lines = [",".join(PLAN_CSV_COLUMNS + ("memory_total_bytes",))]
        for _, r in ranked.head(top).iterrows():
            lines.append(",".join([str(r[c]) for c in PLAN_CSV_COLUMNS] + [str(r["memory_bytes"])]))
        return "\n".join(lines)
    return format_plans(df, ranked, top) + note


def _serving_flags(target, model, best, input_len, output_len, dtype, kv_dtype) -> str:
    """vLLM or SGLang flags that serve the best plan."""
    from ..plan.emitters import serving

    if target not in serving.TARGETS:
        raise ParplanError(f"--emit {target} writes a training launch; with --mode inference use "
                           f"{' or '.join(serving.TARGETS)}")
    lay = ServeLayout(tp=int(best["tp"]), pp=int(best["pp"]), replicas=int(best["replicas"]), batch=int(best["batch"]),
                      input_len=input_len, output_len=output_len, dtype=dtype, kv_dtype=kv_dtype,
                      ep=int(best["ep"]) if "ep" in best else 1)
    said = serving.problem(target, lay, model)
    if said:
        raise ParplanError(f"--emit {target}: {said}")
    return serving.text(target, lay, model)


__all__ = ["dispatch_estimate", "dispatch_plan", "estimate_inference_command", "explain_inference_command",
           "inference_options", "plan_inference_command", "reject_options"]
