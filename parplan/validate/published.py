"""Predict published training runs and report the error: the yardstick of the cost model.

Each record of ``validation/published-runs.yaml`` gives a model, a cluster
(with its own server where it differs from the profile's), a layout and the
step time its publication implies. We predict it with no per-record constants.
Where a publication leaves a knob unstated (``null``: micro-batch, interleaving,
ZeRO stage, recompute), we take the value the planner would pick — the fastest
one that fits — since the authors tuned those knobs for speed too; the table
marks such rows.

Framework facts of the period that every record shares: no fused (flash)
attention, which postdates all of them, and gradient reduction after the
pipeline flush rather than under the backward pass (Megatron-LM's local DDP
and DeepSpeed's pipeline engine of 2021-22); DeepSpeed ZeRO-3 prefetches and
overlaps its gathers; fp16 mixed precision keeps 16-bit gradients (the fp16
optimizers of both frameworks), while the bf16 runs accumulate them in fp32;
runs on DeepSpeed's pipeline engine (the records' notes say so) send whole
activations between stages from every TP rank, where Megatron-LM splits them.
Megatron-LM's fused element-wise kernels and transpose-free attention layout
came with Narayanan et al. 2021 (Sec. 4.2), so the 2019 runs (Shoeybi et al.)
execute the layer's element-wise work as separate eager PyTorch kernels.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParplanError
from ..step.train import estimate
from ..specs.hardware import load_hardware
from ..specs.cluster import make_cluster
from ..layouts.layout import Layout
from ..layouts.rules import check_layout
from ..specs.model import model_from_dict
from ..specs.registry import spec_dir
from ..specs.yamlio import check_keys, number, read_records, require_mapping

DEFAULT_FILE = "published-runs.yaml"
# Publications whose code predates Megatron-LM's fused kernels (Narayanan et al. 2021, Sec. 4.2).
UNFUSED_SOURCES = ("Shoeybi et al. 2019",)


def load_runs(path: str | None = None) -> list[dict]:
    return read_records(Path(path) if path else spec_dir("validation") / DEFAULT_FILE, "validation run")


# The schema of a published-run record (see the comment at the top of validation/published-runs.yaml).
RUN_KEYS = ("id", "source", "confidence", "model", "hardware", "devices", "devices_per_node", "network",
            "inter_node_bandwidth", "precision", "framework", "flash_attention", "fused_kernels", "compiled",
            "fp8_recipe", "layout", "global_batch", "published", "reference_step_time_s", "reference_derivation",
            "notes")
RUN_LAYOUT_KEYS = ("tp", "pp", "dp", "cp", "vpp", "zero", "sequence_parallel", "recompute", "micro_batch")
PUBLISHED_KEYS = ("step_time_s", "tflops_per_device", "mfu", "hfu", "tokens_per_s", "tokens_per_s_per_device",
                  "flops_convention")


def record_setup(rec: dict):
    """(model, cluster, base layout, unknown knobs) of one record."""
    rid = str(rec.get("id", "?"))
    check_keys(rec, RUN_KEYS, f"run {rid}")
    check_keys(require_mapping(rec.get("layout"), f"run {rid}: layout"), RUN_LAYOUT_KEYS, f"run {rid}: layout")
    check_keys(require_mapping(rec.get("published") or {}, f"run {rid}: published"), PUBLISHED_KEYS,
               f"run {rid}: published")
    model_data = dict(require_mapping(rec.get("model"), f"run {rid}: model"))
    model_data.setdefault("name", rid)
    model_data.setdefault("position", "learned")
    if model_data.get("activation") is None:
        model_data["activation"] = "gelu"
    model = model_from_dict(model_data, f"run {rid}: model")
    hw = load_hardware(str(rec.get("hardware")))
    devices = number(rec, "devices", f"run {rid}", integer=True)
    inter = hw.inter_node
    if rec.get("inter_node_bandwidth") is not None:
        inter = replace(inter, bandwidth=float(number(rec, "inter_node_bandwidth", f"run {rid}")))
    cluster = make_cluster(hw, devices, devices_per_node=rec.get("devices_per_node"), inter_node=inter,
                           name=f"{hw.name}x{devices}")
    lay = require_mapping(rec.get("layout"), f"run {rid}: layout")
    w = f"run {rid}: layout"
    precision = rec.get("precision") or "fp16"
    if precision not in ("bf16", "fp16", "fp8"):
        raise ParplanError(f"run {rid}: precision must be bf16, fp16 or fp8, got {precision!r}")
    zero = number(lay, "zero", w, required=False, positive=False, integer=True, maximum=3)
    recompute = lay.get("recompute") or "none"
    if recompute not in ("none", "selective", "full"):
        raise ParplanError(f"{w}: recompute must be none, selective or full, got {recompute!r}")
    deepspeed = "deepspeed" in (str(rec.get("notes", "")) + str(rec.get("source", ""))).lower()
    fused = not str(rec.get("source", "")).startswith(UNFUSED_SOURCES)
    layout = Layout(
        tp=number(lay, "tp", w, integer=True), pp=number(lay, "pp", w, integer=True),
        dp=number(lay, "dp", w, integer=True), cp=number(lay, "cp", w, required=False, integer=True, default=1),
        micro_batch=number(lay, "micro_batch", w, required=False, integer=True, default=1),
        global_batch=number(rec, "global_batch", f"run {rid}", integer=True),
        seq_len=model.seq_len, zero=int(zero or 0), sp=bool(lay.get("sequence_parallel")),
        vpp=number(lay, "vpp", w, required=False, integer=True, default=1), recompute=recompute, dtype=precision,
        flash_attention=False, fused_kernels=fused, overlap_grad_reduce=(zero == 3), overlap_param_gather=(zero == 3),
        grad_accum_fp32=(precision == "bf16"),
        pp_scatter_gather=not deepspeed,
        # DeepSpeed's ZeRO-3 defaults: stage3_prefetch_bucket_size 5e7, reduce_bucket_size 5e8 elements.
        gather_bucket_params=int(5e7) if deepspeed and zero == 3 else None,
        reduce_bucket_params=int(5e8) if deepspeed and zero == 3 else None,
    )
    unknown = [k for k in ("micro_batch", "vpp", "zero", "recompute") if lay.get(k) is None]
    return model, cluster, layout, unknown


def _candidates(model, layout: Layout, unknown: list[str]):
    """Every choice of the unpublished knobs; the layout rules (``check_layout``) then drop what cannot run."""
    options = {
        "micro_batch": list(range(1, 17)) if "micro_batch" in unknown else [layout.micro_batch],
        "vpp": list(range(1, 9)) if "vpp" in unknown else [layout.vpp],
        "zero": [0, 1] if "zero" in unknown and layout.zero < 3 else [layout.zero],
        "recompute": ["none", "selective", "full"] if "recompute" in unknown else [layout.recompute],
    }
    for mb, v, z, rc in itertools.product(*options.values()):
        yield replace(layout, micro_batch=mb, vpp=v, zero=z, recompute=rc,
                      schedule="interleaved" if v > 1 else "1f1b")


def predict_record(rec: dict):
    """The Estimate for one record, choosing unstated knobs as the planner would.

    Also returns the (fastest, slowest) step time over every fitting choice of those knobs: the
    band a reader who does not trust "the fastest" should hold the publication against.
    """
    model, cluster, layout, unknown = record_setup(rec)
    best = None
    fallback = None
    fitting, first_problem = [], None
    for cand in _candidates(model, layout, unknown):
        try:
            cand = check_layout(cand, model, cluster)
        except ParplanError as exc:
            first_problem = first_problem or str(exc)
            continue
        est = estimate(model, cluster, cand, check=False)
        if fallback is None or float(est.memory_bytes["total"]) < float(fallback.memory_bytes["total"]):
            fallback = est
        if bool(est.fits):
            fitting.append(float(est.step_time_s))
            if best is None or float(est.step_time_s) < float(best.step_time_s):
                best = est
    chosen = best or fallback
    if chosen is None:
        raise ParplanError(f"run {rec.get('id')}: the published configuration cannot run: {first_problem}")
    band = (min(fitting), max(fitting)) if fitting else None  # None: no choice fits HBM
    return chosen, unknown, band


def validate_runs(records: list[dict]) -> dict[str, Any]:
    """Predict every record; one that cannot be predicted becomes a row with its reason (``skipped``)."""
    rows, skipped = [], []
    for rec in records:
        try:
            est, unknown, band = predict_record(rec)
            published = float(number(rec, "reference_step_time_s", f"run {rec.get('id')}"))
        except ParplanError as exc:
            skipped.append({"id": str(rec.get("id", "?")), "skipped": str(exc)})
            continue
        predicted = float(est.step_time_s)
        lay = est.layout
        rows.append({
            "id": str(rec.get("id")),
            "group": publication_group(rec, lay),
            "predicted_s": predicted,
            "published_s": published,
            "error": (predicted - published) / published,
            "chosen": {k: getattr(lay, k) for k in unknown},
            "band_s": list(band) if unknown and band else None,
            "within_band": bool(unknown and band) and band[0] <= published <= band[1],
            "fits": bool(est.fits),
            "mfu": float(est.mfu),
        })
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r["error"])
    summary = _error_summary([r["error"] for r in rows])
    summary["runs_with_unpublished_knobs"] = sum(r["band_s"] is not None for r in rows)  # and a fitting choice
    summary["published_within_band"] = sum(r["within_band"] for r in rows)
    summary["skipped"] = len(skipped)
    return {
        "rows": rows,
        "skipped": skipped,
        "summary": summary,
        "groups": {g: _error_summary(errs) for g, errs in groups.items()},
    }


def _error_summary(errors: list[float]) -> dict[str, Any]:
    err = np.asarray(errors, float)
    if not err.size:
        return {"runs": 0, "mean_abs_error": float("nan"), "median_abs_error": float("nan"),
                "max_abs_error": float("nan"), "mean_error": float("nan")}
    return {
        "runs": int(err.size),
        "mean_abs_error": float(np.abs(err).mean()),
        "median_abs_error": float(np.median(np.abs(err))),
        "max_abs_error": float(np.abs(err).max()),
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
    if layout.zero == 3 and layout.gather_bucket_params is not None:
        label += " (DeepSpeed ZeRO-3)"
    return label


def format_validation(results: dict) -> str:
    lines = [f"{'run':<50}{'predicted s':>12}{'published s':>12}{'error':>9}{'band s':>16}  "
             "chosen (unpublished knobs)"]
    for r in results["rows"]:
        chosen = " ".join(f"{k}={v}" for k, v in r["chosen"].items())
        band = f"{r['band_s'][0]:.2f}-{r['band_s'][1]:.2f}" if r["band_s"] else ("none fits" if r["chosen"] else "")
        lines.append(f"{r['id']:<50}{r['predicted_s']:12.2f}{r['published_s']:12.2f}{r['error'] * 100:8.1f}%"
                     f"{band:>16}  {chosen}{'' if r['fits'] else '  (does not fit HBM)'}")
    for r in results.get("skipped", []):
        lines.append(f"{r['id']:<50}{'skipped':>12}  {r['skipped']}")
    lines += ["", f"{'by publication':<58}{'runs':>5}{'mean |err|':>11}{'max |err|':>10}{'mean err':>10}"]
    for name, g in sorted(results.get("groups", {}).items(), key=lambda kv: kv[1]["mean_abs_error"]):
        lines.append(f"{name:<58}{g['runs']:>5}{g['mean_abs_error'] * 100:10.1f}%{g['max_abs_error'] * 100:9.1f}%"
                     f"{g['mean_error'] * 100:9.1f}%")
    s = results["summary"]
    if s.get("skipped"):
        lines += ["", f"{s['skipped']} of {s['runs'] + s['skipped']} runs could not be predicted (listed above)"]
    lines += ["", f"{s['runs']} runs: mean |error| {s['mean_abs_error'] * 100:.1f}%, "
                  f"median {s['median_abs_error'] * 100:.1f}%, max {s['max_abs_error'] * 100:.1f}%",
              f"band: the step times of every fitting choice of the unpublished knobs; the prediction takes "
              f"the fastest. The published time lies in the band for {s['published_within_band']} of the "
              f"{s['runs_with_unpublished_knobs']} runs with such knobs and a choice that fits."]
    return "\n".join(lines)
