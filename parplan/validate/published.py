"""Predict published training runs as a user would, and report the error: the yardstick of the cost model.

Each record of ``validation/*.yaml`` gives a model, a cluster (with its own server where it
differs from the profile's), a layout, the software that ran it (``framework`` and its
overrides: ``flash_attention``, ``fused_kernels``, ``compiled``, ``fp8_recipe``) and the step
time its publication implies. Each record is predicted exactly as ``parplan plan`` predicts it
for a user who passes the record's fields as flags (:mod:`parplan.validate.cli_args` writes that
command line, and ``scripts/validate_via_cli.py`` runs it for every record): the published axes
(tp, pp, dp, cp) and every published knob (ZeRO stage, recompute, micro-batch) fixed, the global batch,
sequence length and precision given, the framework named; what a publication leaves out (``null``) the plan
searches, taking the fastest layout that fits, as the authors tuned for speed too. Where no
layout fits, the record is predicted by ``parplan estimate`` with its published knobs and the
defaults, and counted as a memory-model miss. There are no per-record constants and no knob a
user cannot pass: what a framework does comes from its profile (``frameworks/*.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParplanError
from ..layouts.layout import RECOMPUTE, Layout
from ..plan.planner import make_plan
from ..specs.cluster import Cluster, make_cluster
from ..specs.framework import Software, default_framework, resolve_software
from ..specs.framework_loader import load_framework
from ..specs.hardware import load_hardware
from ..specs.model import ModelSpec, model_from_dict
from ..specs.registry import spec_dir
from ..specs.slices import parse_shape
from ..specs.yamlio import check_keys, flag, number, read_records, require_mapping, text
from ..step.train import estimate

DEFAULT_FILES = ("published-runs.yaml", "modern-runs.yaml", "bridge-dense-runs.yaml", "moe-runs.yaml",
                 "tpu-runs.yaml")
DEFAULT_FILE = DEFAULT_FILES[0]


def load_runs(path: str | None = None) -> list[dict]:
    """The records of one validation file (default: every shipped one, in order)."""
    if path:
        return read_records(Path(path), "validation run")
    runs = []
    for name in DEFAULT_FILES:
        file = spec_dir("validation") / name
        if file.is_file():
            runs += [dict(r, _file=name) for r in read_records(file, "validation run")]
    return runs


# The schema of a published-run record (see the comment at the top of validation/published-runs.yaml).
RUN_KEYS = ("id", "source", "confidence", "model", "hardware", "devices", "devices_per_node", "slices", "slice", "network",
            "inter_node_bandwidth", "precision", "framework", "flash_attention", "fused_kernels", "compiled",
            "fp8_recipe", "fp8_params", "moe_overlap", "moe_dispatcher", "tp_overlap", "optimizer_states",
            "offload_layers", "layout",
            "global_batch", "left_out",
            "published", "reference_step_time_s", "reference_derivation", "notes", "_file")
RUN_LAYOUT_KEYS = ("tp", "pp", "dp", "cp", "vpp", "zero", "shard_group", "sequence_parallel", "recompute",
                   "micro_batch", "ep", "etp", "first_stage_layers", "last_stage_layers", "recompute_layers")
PUBLISHED_KEYS = ("step_time_s", "tflops_per_device", "mfu", "hfu", "tokens_per_s", "tokens_per_s_per_device",
                  "flops_convention")
# What a user passes for a record's model when the record leaves it out: a 2-matrix MLP for squared-ReLU
# (FLOP-equal to GELU), GPT-2's BPE padded as Megatron pads it.
MODEL_FALLBACKS = {"activation": "gelu", "vocab": 51200}


def record_model_data(rec: dict) -> dict:
    """The model spec a user writes for a record: its given fields, the fallbacks, its id as the name."""
    rid = str(rec.get("id", "?"))
    data = {k: v for k, v in require_mapping(rec.get("model"), f"run {rid}: model").items() if v is not None}
    for key, value in MODEL_FALLBACKS.items():
        data.setdefault(key, value)
    data.setdefault("name", rid)
    return data


@dataclass(frozen=True)
class RunSetup:
    """A record as a user passes it: the model, cluster, software, fixed knobs and the estimate fallback's layout."""

    model: ModelSpec
    cluster: Cluster
    software: Software
    fixed: dict             # what the plan keeps (published axes and knobs)
    global_batch: int
    dtype: str
    fallback: Layout        # ``parplan estimate`` with the published knobs and the defaults
    unknown: tuple          # knobs the publication leaves out, searched
    framework_note: str     # where the framework came from
    left_out: str | None = None  # why the record stays out of the summaries (left_out_reason), or None


def record_setup(rec: dict, framework: str | None = None) -> RunSetup:
    """The flags a user passes for one record. ``framework``: used where the record names none."""
    rid = str(rec.get("id", "?"))
    check_keys(rec, RUN_KEYS, f"run {rid}")
    lay = require_mapping(rec.get("layout"), f"run {rid}: layout")
    check_keys(lay, RUN_LAYOUT_KEYS, f"run {rid}: layout")
    check_keys(require_mapping(rec.get("published") or {}, f"run {rid}: published"), PUBLISHED_KEYS,
               f"run {rid}: published")
    left_out = left_out_reason(rec)  # a bad reason is this record's one-line error, before anything is predicted
    model = model_from_dict(record_model_data(rec), f"run {rid}: model")
    hw = load_hardware(str(rec.get("hardware")))
    devices = number(rec, "devices", f"run {rid}", integer=True)
    inter = hw.inter_node
    if rec.get("inter_node_bandwidth") is not None:
        inter = replace(inter, bandwidth=float(number(rec, "inter_node_bandwidth", f"run {rid}")))
    torus = {}
    if rec.get("slices") is not None or rec.get("slice") is not None:  # TPU slices, as a cluster file gives them
        if hw.torus is None:
            raise ParplanError(f"run {rid}: slices and slice describe TPU tori; {hw.name} is not a TPU")
        torus = {"slices": number(rec, "slices", f"run {rid}", required=False, integer=True),
                 "slice_shape": parse_shape(rec["slice"], hw.torus.dims, f"run {rid}: slice")
                 if rec.get("slice") is not None else None}
    cluster = make_cluster(hw, devices, devices_per_node=rec.get("devices_per_node"), inter_node=inter,
                           name=None if hw.torus is not None else f"{hw.name}x{devices}", **torus)
    dtype = rec.get("precision") or "bf16"
    w = f"run {rid}: layout"
    recompute = lay.get("recompute")
    if recompute is not None and recompute not in RECOMPUTE:
        raise ParplanError(f"{w}: recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
    fixed = {k: number(lay, k, w, integer=True) for k in ("tp", "pp", "dp")}
    fixed["cp"] = number(lay, "cp", w, required=False, integer=True, default=1)
    zero = number(lay, "zero", w, required=False, positive=False, integer=True, maximum=3)
    if zero is not None:
        fixed["zero"] = zero
    if recompute:
        fixed["recompute"] = recompute
    if lay.get("micro_batch"):
        fixed["micro_batch"] = number(lay, "micro_batch", w, integer=True)
    # A published interleaving degree and sequence-parallel setting are fixed as `plan --vpp --sp` fixes them.
    if lay.get("vpp") is not None:
        fixed["vpp"] = number(lay, "vpp", w, integer=True)
    if lay.get("sequence_parallel") is not None:
        fixed["sp"] = bool(lay["sequence_parallel"])
    for axis in ("ep", "etp"):  # the expert axes of an MoE run (searched where not printed)
        if lay.get(axis) is not None:
            fixed[axis] = number(lay, axis, w, integer=True)
    if lay.get("shard_group") is not None:
        fixed["shard_group"] = number(lay, "shard_group", w, integer=True)
    for key in ("first_stage_layers", "last_stage_layers", "recompute_layers"):  # as plan's options of those names
        if lay.get(key) is not None:
            fixed[key] = number(lay, key, w, integer=True)
    if "recompute_layers" in fixed:  # a block of each chunk, recomputed whole
        fixed.setdefault("recompute", "full")
    name = rec.get("framework") or framework
    note = "given" if rec.get("framework") else ("--framework" if framework else "default")
    name = name or default_framework(hw.kind)
    software = resolve_software(load_framework(str(name)), dtype=dtype, compiled=rec.get("compiled"),
                                fp8_recipe=rec.get("fp8_recipe"),
                                flash_attention=False if rec.get("flash_attention") is False else None,
                                fused_kernels=False if rec.get("fused_kernels") is False else None,
                                device_kind=hw.kind,
                                moe_overlap=text(rec, "moe_overlap", f"run {rid}", required=False),
                                optimizer_states=text(rec, "optimizer_states", f"run {rid}", required=False),
                                moe_dispatcher=text(rec, "moe_dispatcher", f"run {rid}", required=False),
                                tp_overlap=text(rec, "tp_overlap", f"run {rid}", required=False),
                                fp8_params=flag(rec, "fp8_params", f"run {rid}", None),
                                offload_layers=number(rec, "offload_layers", f"run {rid}", required=False, integer=True))
    batch = number(rec, "global_batch", f"run {rid}", integer=True)
    vpp = number(lay, "vpp", w, required=False, integer=True, default=1)
    fallback = Layout(tp=fixed["tp"], pp=fixed["pp"], dp=fixed["dp"], cp=fixed["cp"],
                      micro_batch=fixed.get("micro_batch", 1), global_batch=batch, seq_len=model.seq_len,
                      zero=fixed.get("zero", 0), shard_group=fixed.get("shard_group"),
                      sp=bool(lay.get("sequence_parallel")), vpp=vpp,
                      schedule="interleaved" if vpp > 1 else "1f1b", recompute=fixed.get("recompute", "none"),
                      dtype=dtype, axes=tuple((a, fixed[a]) for a in ("ep", "etp") if a in fixed),
                      first_stage_layers=fixed.get("first_stage_layers"),
                      last_stage_layers=fixed.get("last_stage_layers"), recompute_layers=fixed.get("recompute_layers"))
    searched = ("micro_batch", "zero", "recompute", "recompute_layers", "vpp", "sp") + \
        (("first_stage_layers", "last_stage_layers") if fixed["pp"] > 1 else ())
    unknown = tuple(k for k in searched if k not in fixed) + (("etp",) if model.is_moe and "etp" not in fixed else ())
    return RunSetup(model, cluster, software, fixed, batch, dtype, fallback, unknown, note, left_out)


def predict_record(rec: dict, framework: str | None = None):
    """(Estimate, setup, how, band) for one record: the best plan with its fixed knobs, or ``estimate``.

    ``band`` is the (fastest, slowest) step time over every fitting choice of the searched knobs: the
    range a reader who does not trust "the fastest" should hold the publication against.
    """
    setup = record_setup(rec, framework)
    try:
        result = make_plan(setup.model, setup.cluster, global_batch=setup.global_batch, dtype=setup.dtype, top=1,
                           fixed=setup.fixed, software=setup.software, with_intervals=False)
    except ParplanError as exc:
        if "does not fit" not in str(exc):
            raise
        est = estimate(setup.model, setup.cluster, setup.fallback, software=setup.software)
        return est, setup, "estimate (no fitting plan)", None
    times = result.ranked["step_time_s"].to_numpy(float)
    return result.estimates[0], setup, "plan", (float(times.min()), float(times.max()))


def validate_runs(records: list[dict], framework: str | None = None, progress=None) -> dict[str, Any]:
    """Predict every record; one that cannot be predicted becomes a row with its reason (``skipped``).

    ``framework`` applies to the records that name none; ``progress(done, total)`` is called after each."""
    rows, skipped = [], []
    for i, rec in enumerate(records):
        try:
            est, setup, how, band = predict_record(rec, framework)
            published = float(number(rec, "reference_step_time_s", f"run {rec.get('id')}"))
        except ParplanError as exc:
            skipped.append({"id": str(rec.get("id", "?")), "skipped": str(exc)})
            if progress:
                progress(i + 1, len(records))
            continue
        predicted = float(est.step_time_s)
        lay = est.layout
        rows.append({
            "id": str(rec.get("id")),
            "file": rec.get("_file", ""),
            "group": publication_group(rec, lay),
            "framework": setup.software.name + ("" if setup.framework_note == "given" else f" ({setup.framework_note})"),
            "software": setup.software.describe(),
            "software_defaults": list(setup.software.notes),
            "how": how,
            "predicted_s": predicted,
            "published_s": published,
            "error": (predicted - published) / published,
            "chosen": {k: (bool(getattr(lay, k)) if k == "sp" else lay.size(k) if k == "etp" else getattr(lay, k))
                       for k in setup.unknown if k == "etp" or getattr(lay, k) is not None},  # a split left to
            # the framework is not shown
            "band_s": list(band) if band else None,
            "within_band": bool(band) and band[0] <= published <= band[1],
            "fits": bool(est.fits),
            "mfu": float(est.mfu),
            "left_out": setup.left_out,
        })
        if progress:
            progress(i + 1, len(records))
    groups, files = {}, {}
    counted = [r for r in rows if not r["left_out"]]
    for r in counted:
        groups.setdefault(r["group"], []).append(r["error"])
        files.setdefault(r["file"] or "given file", []).append(r["error"])
    summary = _error_summary([r["error"] for r in counted])
    summary["runs_with_unpublished_knobs"] = sum(r["band_s"] is not None for r in counted)  # and a fitting choice
    summary["published_within_band"] = sum(r["within_band"] for r in counted)
    summary["no_fitting_plan"] = sum(r["how"] != "plan" for r in counted)
    summary["skipped"] = len(skipped)
    summary["left_out"] = len(rows) - len(counted)
    return {
        "rows": rows,
        "skipped": skipped,
        "summary": summary,
        "groups": {g: _error_summary(errs) for g, errs in groups.items()},
        "files": {f: _error_summary(errs) for f, errs in files.items()},
    }


def left_out_reason(rec: dict) -> str | None:
    """Why a record is predicted and shown but kept out of every error summary and interval, or None.

    Only a run its publisher itself reports as a regression of its software belongs here (the reason cites
    where): its time measures a defect, not the stack the profile describes."""
    reason = rec.get("left_out")
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason.split()) < 3:
        raise ParplanError(f"run {rec.get('id')}: left_out must say why, with its source (got {reason!r})")
    return reason.strip()


def _error_summary(errors: list[float]) -> dict[str, Any]:
    err = np.asarray(errors, float)
    if not err.size:  # None, not NaN: --format json stays valid JSON
        return {"runs": 0, "mean_abs_error": None, "median_abs_error": None, "max_abs_error": None,
                "p90_abs_error": None, "mean_error": None}
    return {
        "runs": int(err.size),
        "mean_abs_error": float(np.abs(err).mean()),
        "median_abs_error": float(np.median(np.abs(err))),
        "max_abs_error": float(np.abs(err).max()),
        "p90_abs_error": float(np.sort(np.abs(err))[min(err.size - 1, int(0.9 * err.size))]),
        "mean_error": float(err.mean()),  # the sign says whether the model runs fast (<0) or slow
    }


def publication_group(rec: dict, layout: Layout) -> str:
    """Short name of a record's publication and table, e.g. "Narayanan et al. 2021, Table 1".

    The citation's author-year part and its last part when that names a table or section; runs
    on DeepSpeed ZeRO-3 are split from the rest of their table (a different framework).
    """
    source = str(rec.get("source", "?"))
    head = source.split(" (")[0].split(",")[0].split(";")[0].strip()
    last = source.rsplit(", ", 1)[-1].strip() if ", " in source else ""
    label = f"{head}, {last}" if last.startswith(("Table", "Sec")) else head
    if rec.get("framework") and rec.get("framework") not in label.lower():
        label += f" ({rec['framework']})"
    return label


def format_validation(results: dict) -> str:
    lines = [f"{'run':<48}{'predicted s':>12}{'published s':>12}{'error':>8}{'band s':>16}  "
             f"{'software':<34}chosen (unpublished knobs)"]
    for r in results["rows"]:
        chosen = " ".join(f"{k}={v}" for k, v in r["chosen"].items())
        band = f"{r['band_s'][0]:.2f}-{r['band_s'][1]:.2f}" if r["band_s"] else "none fits"
        miss = "" if r["how"] == "plan" else "  (no layout fits: estimated with the published knobs)"
        miss += "  (left out of the summaries)" if r["left_out"] else ""
        lines.append(f"{r['id'][:47]:<48}{r['predicted_s']:12.2f}{r['published_s']:12.2f}{r['error'] * 100:7.1f}%"
                     f"{band:>16}  {r['software'][:33]:<34}{chosen}{miss}")
    for r in results.get("skipped", []):
        lines.append(f"{r['id']:<48}{'skipped':>12}  {r['skipped']}")
    lines += ["", f"{'by publication':<62}{'runs':>5}{'mean |err|':>11}{'max |err|':>10}{'mean err':>10}"]
    for name, g in sorted(results.get("groups", {}).items(), key=lambda kv: kv[1]["mean_abs_error"]):
        lines.append(f"{name[:61]:<62}{g['runs']:>5}{g['mean_abs_error'] * 100:10.1f}%{g['max_abs_error'] * 100:9.1f}%"
                     f"{g['mean_error'] * 100:9.1f}%")
    if len(results.get("files", {})) > 1:
        lines += ["", f"{'by file':<30}{'runs':>5}{'mean |err|':>11}{'median':>8}{'p90':>8}{'mean err':>10}"]
        for name, g in results["files"].items():
            lines.append(f"{name:<30}{g['runs']:>5}{g['mean_abs_error'] * 100:10.1f}%"
                         f"{g['median_abs_error'] * 100:7.1f}%{g['p90_abs_error'] * 100:7.1f}%"
                         f"{g['mean_error'] * 100:9.1f}%")
    s = results["summary"]
    if s.get("skipped"):
        total = s['runs'] + s['skipped'] + s.get('left_out', 0)
        lines += ["", f"{s['skipped']} of {total} runs could not be predicted (listed above)"]
    for r in results["rows"]:
        if r["left_out"]:
            lines += ["", f"left out of every summary: {r['id']}: {r['left_out']}"]
    stats = (f"mean |error| {s['mean_abs_error'] * 100:.1f}%, median {s['median_abs_error'] * 100:.1f}%, "
             f"p90 {s['p90_abs_error'] * 100:.1f}%, max {s['max_abs_error'] * 100:.1f}%, "
             f"signed mean {s['mean_error'] * 100:+.1f}%") if s["runs"] else "no error to summarise"
    lines += ["", f"{s['runs']} runs: {stats}"
                  + (f"; {s['no_fitting_plan']} without a fitting plan" if s.get("no_fitting_plan") else ""),
              "each run is predicted as 'parplan plan' predicts it with the run's fields as flags (published axes "
              "and knobs fixed, the rest searched); band: the step times of every fitting choice of the searched "
              f"knobs, the prediction the fastest. The published time lies in the band for "
              f"{s['published_within_band']} of the {s['runs_with_unpublished_knobs']} runs."]
    return "\n".join(lines)
