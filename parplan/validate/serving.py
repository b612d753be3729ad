"""Serving measurements predicted as a user would serve them: ``validation/serving-runs.yaml``.

Each record (schema at the top of that file) gives a model, hardware, the serving stack and its
choices, a serving layout, the scope of what was measured (a whole engine, or a stack of layers)
and the measured times. It is predicted by exactly the call ``parplan estimate --mode inference``
makes for a user passing those fields as flags (:func:`serving_setup` builds the same model,
cluster, layout and stack; :func:`parplan.step.serve.estimate_inference` predicts), and each
measured metric is compared with the estimate's field of the same name. Records group by their
source and by what was timed (prefill or decode, with or without CUDA graphs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParplanError
from ..specs.cluster import Cluster, make_cluster
from ..specs.framework_loader import profile_kinds
from ..specs.hardware import load_hardware
from ..specs.model import ModelSpec, model_from_dict
from ..specs.model_loader import load_model
from ..specs.registry import spec_dir
from ..specs.serving_stack import ServingSoftware
from ..specs.yamlio import check_keys, number, read_records, require_mapping
from ..step.serve import InferenceEstimate, estimate_inference
from ..step.serve_layout import ServeLayout
from ..step.serve_software import serving_software
from .published import _error_summary

SERVING_FILE = "serving-runs.yaml"
SERVING_KEYS = ("id", "source", "url", "confidence", "mode", "model", "hardware", "devices", "framework",
                "cuda_graphs", "fused_kernels", "layout", "scope", "published", "measured_by", "notes", "_file",
                "_dir")
LAYOUT_KEYS = ("tp", "pp", "replicas", "batch", "input_len", "output_len", "dtype", "kv_dtype")
SCOPES = {"serving": ("ttft_s", "itl_s", "tpot_s", "tokens_per_s"),
          "layers": ("prefill_layers_s", "decode_layers_s")}


def is_serving_record(rec: dict) -> bool:
    return isinstance(rec, dict) and rec.get("mode") == "inference"


def load_serving_runs(path: str | None = None) -> list[dict]:
    """The serving records of one file (default: the shipped ``validation/serving-runs.yaml``)."""
    file = Path(path) if path else spec_dir("validation") / SERVING_FILE
    if not file.is_file():
        return [] if path is None else read_records(file, "serving record")
    return [dict(r, _file=file.name, _dir=str(file.parent)) for r in read_records(file, "serving record")]


def split_runs(files) -> tuple[list[dict], list[dict], list[str]]:
    """(training runs, serving records, files that hold no records: one line each) of the given validation
    files, or of the shipped ones. A file that cannot be read is reported, not fatal: the others still run."""
    from .published import load_runs

    if not files:
        return load_runs(None), load_serving_runs(None), []
    training, serving, unreadable = [], [], []
    for f in files:
        try:
            records = read_records(Path(f), "validation run")
        except ParplanError as exc:
            unreadable.append(str(exc))
            continue
        for r in records:
            if is_serving_record(r):
                serving.append(dict(r, _file=Path(f).name, _dir=str(Path(f).resolve().parent)))
            else:
                training.append(dict(r, _file=Path(f).name))
    return training, serving, unreadable


def framework_split(framework: str | None) -> tuple[str | None, str | None]:
    """``validate --framework X``: X for the training runs, the serving records, or both, by what X describes."""
    if framework is None:
        return None, None
    trains, serves = profile_kinds(framework)
    return (framework if trains else None), (framework if serves else None)


@dataclass(frozen=True)
class ServingSetup:
    """A record as a user passes it to ``estimate --mode inference``."""

    model: ModelSpec
    cluster: Cluster
    layout: ServeLayout
    software: ServingSoftware
    scope: str
    metrics: dict            # metric -> measured value


def _model(value: Any, what: str) -> ModelSpec:
    if isinstance(value, str):
        return load_model(value)
    data = {k: v for k, v in require_mapping(value, f"{what}: model").items() if v is not None}
    return model_from_dict(data, f"{what}: model")


def _flag(rec: dict, key: str, what: str) -> bool | None:
    v = rec.get(key)
    if v is not None and not isinstance(v, bool):
        raise ParplanError(f"{what}: '{key}' must be true, false or null, got {v!r}")
    return v


def serving_setup(rec: dict, framework: str | None = None) -> ServingSetup:
    """The model, cluster, layout and stack of one record. ``framework``: for records that name none."""
    rid = str(rec.get("id", "?"))
    what = f"serving record {rid}"
    check_keys(rec, SERVING_KEYS, what)
    scope = rec.get("scope", "serving")
    if scope not in SCOPES:
        raise ParplanError(f"{what}: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    lay = require_mapping(rec.get("layout"), f"{what}: layout")
    check_keys(lay, LAYOUT_KEYS, f"{what}: layout")
    published = require_mapping(rec.get("published"), f"{what}: published")
    check_keys(published, SCOPES[scope], f"{what}: published ({scope} scope)")
    metrics = {m: float(number(published, m, f"{what}: published")) for m in SCOPES[scope] if m in published}
    if not metrics:
        raise ParplanError(f"{what}: published gives none of {', '.join(SCOPES[scope])}")
    model = _model(rec.get("model"), what)
    hw = load_hardware(str(rec.get("hardware")))
    devices = number(rec, "devices", what, integer=True)
    cluster = make_cluster(hw, devices, name=f"{hw.name}x{devices}")
    name = rec.get("framework") or framework
    if name and str(name).endswith((".yaml", ".yml")) and not Path(str(name)).is_absolute() and rec.get("_dir"):
        name = str(Path(rec["_dir"]) / str(name))
    software = serving_software(name, hw.kind, cuda_graphs=_flag(rec, "cuda_graphs", what),
                                fused_kernels=_flag(rec, "fused_kernels", what))
    layout = ServeLayout(tp=number(lay, "tp", what, integer=True), pp=number(lay, "pp", what, integer=True),
                         replicas=number(lay, "replicas", what, integer=True),
                         batch=number(lay, "batch", what, integer=True),
                         input_len=number(lay, "input_len", what, integer=True),
                         output_len=number(lay, "output_len", what, integer=True),
                         dtype=str(lay.get("dtype") or "bf16"), kv_dtype=lay.get("kv_dtype"))
    return ServingSetup(model, cluster, layout, software, scope, metrics)


def predict_serving_record(rec: dict, framework: str | None = None) -> tuple[InferenceEstimate, ServingSetup]:
    """The estimate ``parplan estimate --mode inference`` gives for the record's fields."""
    setup = serving_setup(rec, framework)
    est = estimate_inference(setup.model, setup.cluster, setup.layout, software=setup.software)
    return est, setup


def serving_group(rec: dict, setup: ServingSetup, metric: str) -> str:
    """The source's short name and what was timed, e.g. "parplan GPU check on one NVIDIA H200 - decode, CUDA graph"."""
    head = str(rec.get("source", "?")).split(" (")[0].split(",")[0].strip()
    if setup.scope == "serving":
        return f"{head} ({setup.software.name})"
    phase = metric.split("_")[0]
    graphed = phase == "decode" and bool(setup.software.graphed(setup.layout.batch))
    return f"{head} - {phase}, {'CUDA graph' if graphed else 'eager'}"


def validate_serving(records: list[dict], framework: str | None = None, progress=None) -> dict[str, Any]:
    """Predict every serving record; rows of (id, metric, measured, predicted, error), grouped."""
    rows, skipped = [], []
    for i, rec in enumerate(records):
        try:
            est, setup = predict_serving_record(rec, framework)
        except ParplanError as exc:
            skipped.append({"id": str(rec.get("id", "?")), "skipped": str(exc)})
        else:
            for metric, measured in setup.metrics.items():
                predicted = float(getattr(est, metric))
                rows.append({"id": str(rec.get("id")), "file": rec.get("_file", ""),
                             "group": serving_group(rec, setup, metric), "metric": metric,
                             "framework": setup.software.name, "cuda_graphs": bool(setup.software.graphed(
                                 setup.layout.batch)), "measured": measured, "predicted": predicted,
                             "error": (predicted - measured) / measured, "fits": bool(est.fits)})
        if progress:
            progress(i + 1, len(records))
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r["error"])
    summary = _error_summary([r["error"] for r in rows])
    summary["skipped"] = len(skipped)
    return {"rows": rows, "skipped": skipped, "summary": summary,
            "groups": {g: _error_summary(e) for g, e in groups.items()}}


def format_serving_validation(results: dict) -> str:
    lines = [f"{'serving record':<58}{'metric':<18}{'measured':>11}{'predicted':>11}{'error':>8}"]
    for r in results["rows"]:
        lines.append(f"{r['id'][:57]:<58}{r['metric']:<18}{r['measured']:11.4g}{r['predicted']:11.4g}"
                     f"{r['error'] * 100:7.1f}%")
    for r in results.get("skipped", []):
        lines.append(f"{r['id']:<58}{'skipped':>18}  {r['skipped']}")
    lines += ["", f"{'by source and what was timed':<66}{'n':>4}{'median |err|':>13}{'mean |err|':>11}"
                  f"{'signed mean':>12}"]
    for name, g in results["groups"].items():
        lines.append(f"{name[:65]:<66}{g['runs']:>4}{g['median_abs_error'] * 100:12.1f}%"
                     f"{g['mean_abs_error'] * 100:10.1f}%{g['mean_error'] * 100:+11.1f}%")
    s = results["summary"]
    if s["runs"]:
        lines += ["", f"{s['runs']} serving metrics: median |error| {s['median_abs_error'] * 100:.1f}%, mean "
                      f"{s['mean_abs_error'] * 100:.1f}%, max {s['max_abs_error'] * 100:.1f}%, signed mean "
                      f"{s['mean_error'] * 100:+.1f}%",
                  "each record is predicted as 'parplan estimate --mode inference' predicts it with the record's "
                  "fields as flags; layer-stack records compare the estimate's prefill_layers_s / decode_layers_s"]
    return "\n".join(lines)
