"""The cost model against published training runs: a regression gate on `parplan validate`.

Every record is predicted as `parplan plan` predicts it for a user who passes the record's
fields (published axes and knobs fixed, the rest searched, the framework's profile deciding
what the software does). The bounds below keep what is reached from getting worse; tighten
them as the model improves. Known misses: the DeepSpeed ZeRO-3 runs of Narayanan et al. 2021
Table 2 (predicted 35-58% fast), the 2019 V100 runs (~25% fast) and Nemotron-340B (35% slow; it fits
only since each pipeline stage holds its own parameters and activations, and then with full recompute).
"""
import json

import pytest

from parplan.validate.published import load_runs, record_setup, validate_runs


DENSE_FILES = ("published-runs.yaml", "modern-runs.yaml")


@pytest.fixture(scope="module")
def results():
    """The dense-model yardstick: the 2019-22 and 2023-24 files (the MoE runs have their own gate below)."""
    return validate_runs([r for r in load_runs() if r["_file"] in DENSE_FILES])


@pytest.fixture(scope="module")
def moe_results():
    return validate_runs([r for r in load_runs() if r["_file"] == "moe-runs.yaml"])


@pytest.fixture(scope="module")
def bridge_results():
    return validate_runs([r for r in load_runs() if r["_file"] == "bridge-dense-runs.yaml"])


@pytest.fixture(scope="module")
def tpu_results():
    return validate_runs([r for r in load_runs() if r["_file"] == "tpu-runs.yaml"])


def test_every_shipped_run_is_predicted(results, moe_results, tpu_results):
    files = results["files"]
    assert files["published-runs.yaml"]["runs"] == 51
    assert files["modern-runs.yaml"]["runs"] == 45
    assert results["summary"]["runs"] == 96 and results["summary"]["skipped"] == 0
    assert all(r["predicted_s"] > 0 for r in results["rows"])
    assert moe_results["files"]["moe-runs.yaml"]["runs"] == 14 and moe_results["summary"]["skipped"] == 0
    assert moe_results["summary"]["left_out"] == 1 and len(moe_results["rows"]) == 15
    assert tpu_results["files"]["tpu-runs.yaml"]["runs"] == 49 and tpu_results["summary"]["skipped"] == 0


def test_moe_runs_do_not_regress(moe_results):
    """Mixture-of-experts runs (validation/moe-runs.yaml), a regression gate at what is reached, not the 12%
    median aimed for. The records carry the knobs of the harness that produced each table (Megatron-Bridge's
    performance configs, the Model Zoo's commands): recompute none, norm-act or mla-up-proj where it ran them, the
    pipeline layouts, forced balanced routing, the all-to-all overlap, the DeepEP dispatcher. Four runs exceed the
    memory model with the plan's 10% headroom at the knobs they ran (their time is predicted at those knobs), and the signed mean is -21%: the small-expert
    Qwen3-30B and gpt-oss runs and every B200 run are predicted 10-35% fast; the cross-node EP 32 DeepEP run is
    7% fast without the all-to-all overlap and 23% fast with it (published 19.7 s and 17.6 s). The 25.11
    Qwen3-30B row (-65%) is predicted and shown but left out of the summary: a regression NVIDIA tracks,
    Megatron-Bridge issue 1998. The same DeepEP layout with the overlap on Megatron-Core v0.16 (the Megatron
    Core MoE report's Table 11) is 11% fast."""
    s = moe_results["summary"]
    assert s["median_abs_error"] <= 0.22
    assert s["mean_abs_error"] <= 0.23
    assert abs(s["mean_error"]) <= 0.22
    assert s["no_fitting_plan"] <= 6


def test_bridge_dense_runs_do_not_regress(bridge_results):
    """The dense Llama rows of the Megatron-Bridge tables that give the MoE file its Bridge rows (2025, FP8,
    H100, B200, GB200): a regression gate at what is reached. The Blackwell 8B runs are predicted 11-12% fast;
    the 70B and 405B runs ran their tensor-parallel collectives under Transformer Engine's userbuffers
    (--tp-overlap collective-matmul) and are predicted 4-18% fast, the overlap hiding more than it does in
    torchtitan's published on/off pairs (scripts/tp_overlap_check.py); every row keeps FP8 primary weights
    (--fp8-params), which nearly halve the distributed optimizer's parameter all-gather. The rows run the
    megatron-bridge profile's Transformer Engine cross-entropy (what Megatron-Bridge configures), cheaper than the
    fp32 vocab-parallel one they were predicted with before, which moved each 0.1-1.7 points faster: mean 10.3% ->
    11.1%, median 11.7% -> 12.8%. Pricing causal attention's tiles on each run's own grid then moved the H100 rows
    0.5-1.1 points slower and the B200/GB200 8B rows 0.6-0.7 faster (their micro-batches fill more of the GPU than the
    benchmark grid of FlashAttention-2's published rates): mean 10.9%, median 13.1%; the gate follows what is
    reached."""
    f = bridge_results["files"]["bridge-dense-runs.yaml"]
    assert f["runs"] == 12 and bridge_results["summary"]["skipped"] == 0
    s = bridge_results["summary"]
    assert s["median_abs_error"] <= 0.135 and s["mean_abs_error"] <= 0.12
    assert s["max_abs_error"] <= 0.18 and abs(s["mean_error"]) <= 0.12
    assert s["no_fitting_plan"] == 0


def test_summary_does_not_regress(results):
    """The dense GPU runs (the two files of GPU-era publications)."""
    s = results["summary"]
    assert s["mean_abs_error"] <= 0.15
    assert s["median_abs_error"] <= 0.12
    assert s["max_abs_error"] <= 0.60
    assert abs(s["mean_error"]) <= 0.14
    # Llama 2 13B without recompute (torchtitan, A100) ran with torchtitan's fused RMSNorm of April 2024,
    # which keeps less than the eager RMSNorm the v0.2.2 profile runs: the memory model finds no fit.
    assert s["no_fitting_plan"] <= 3


def test_tpu_runs_do_not_regress(tpu_results):
    """MaxText's v4, v5e and v5p tables, PaLM and the Trillium recipes: a group of their own, predicted on the
    slices' torus maps with the JAX profile, no per-run constant. Reached: median |error| 10.8% (the 10% aim
    is not met), predictions fast on the whole (-9.5%). Known misses: the slowdown MaxText's tables show
    from 1 to 32 slices (up to 25%) is not predicted (the cross-slice gradient reduction hides under the
    backward); the Trillium (v6e) runs are predicted 30% fast (its matmul efficiency is an assumption); the
    memory model refuses 18 runs that ran (it keeps more of MaxText's rematerialised activations than its
    remat policies do)."""
    f = tpu_results["files"]["tpu-runs.yaml"]
    assert f["median_abs_error"] <= 0.11 and f["mean_abs_error"] <= 0.12
    assert f["max_abs_error"] <= 0.32 and abs(f["mean_error"]) <= 0.10
    assert tpu_results["summary"]["no_fitting_plan"] <= 18


def group(results, prefix):
    rows = [r for r in results["rows"] if r["group"].startswith(prefix)]
    assert rows, prefix
    return rows


def mean_abs(rows):
    return sum(abs(r["error"]) for r in rows) / len(rows)


def test_korthikanti_runs_within_8_percent(results):
    """Korthikanti et al. 2022 Table 5: every knob published, Megatron-LM on Selene."""
    rows = group(results, "Korthikanti et al. 2022, Tables 3+5")
    assert len(rows) == 8
    assert max(abs(r["error"]) for r in rows) <= 0.08 and mean_abs(rows) <= 0.04


def test_megatron_table1_within_13_percent(results):
    rows = group(results, "Narayanan et al. 2021, Table 1")
    assert len(rows) == 10
    assert max(abs(r["error"]) for r in rows) <= 0.13 and mean_abs(rows) <= 0.09


def test_modern_stacks_within_20_percent_on_average(results):
    for prefix, bound in (("MegaScale", 0.09), ("NVIDIA NeMo 24.07", 0.20),
                          ("pytorch/torchtitan", 0.18), ("MosaicML llm-foundry", 0.15)):
        assert mean_abs(group(results, prefix)) <= bound, prefix


def test_bloom_runs_mean_within_15_percent(results):
    """12% before the pipeline split was modelled: the last stage was charged the rounded-up share of layers and
    the head. The published split of the 70-layer runs (5 | 6 x 10 | 5, --pp-partition-method
    'type:transformer|embedding') and DeepSpeed's front-filled default for 78 layers (7 x 11 | 1) moved those
    six rows 11-13% fast."""
    rows = group(results, "BigScience BLOOM pre-training topology")
    assert len(rows) == 20 and mean_abs(rows) <= 0.15


def test_the_framework_decides_the_kernels():
    """The 2019 runs ran Megatron-LM v1 (unfused); the FP8 NeMo runs run Transformer Engine."""
    for rec in load_runs():
        sw = record_setup(rec).software
        if rec["source"].startswith("Shoeybi et al. 2019"):
            assert sw.elementwise["norm"] == "eager", rec["id"]
        if rec["id"].startswith("nemo2407"):
            assert sw.framework.name == "megatron-core" and sw.fp8_recipe == "delayed", rec["id"]
        if rec["id"].startswith("torchtitan") and rec["id"].endswith("float8"):
            assert sw.fp8_recipe == "tensorwise", rec["id"]


def test_errors_are_summarised_by_publication(results, tpu_results):
    groups = results["groups"]
    assert sum(g["runs"] for g in groups.values()) == 96
    assert groups["Narayanan et al. 2021, Table 1 (megatron-lm)"]["runs"] == 10
    assert tpu_results["groups"]["MaxText README 'Runtime Performance Results' v5e tables (jax)"]["runs"] == 24
    assert groups["Narayanan et al. 2021, Table 2 (deepspeed)"]["runs"] == 6
    name = "Korthikanti et al. 2022, Tables 3+5 (megatron-lm)"
    rows = [r["error"] for r in results["rows"] if r["group"] == name]
    assert groups[name]["mean_abs_error"] == pytest.approx(sum(abs(e) for e in rows) / len(rows))
    assert groups[name]["mean_error"] == pytest.approx(sum(rows) / len(rows))


def test_the_prediction_is_the_fastest_of_the_band(results):
    banded = [r for r in results["rows"] if r["band_s"] is not None]
    assert len(banded) == results["summary"]["runs_with_unpublished_knobs"]
    for r in banded:
        lo, hi = r["band_s"]
        assert lo <= hi
        if r["fits"]:
            assert r["predicted_s"] == pytest.approx(lo)
    # Published interleaving and sequence-parallel settings are fixed, not searched: the bands are narrower.
    assert results["summary"]["published_within_band"] >= 22


def test_a_bad_record_is_a_row_with_its_reason_and_the_rest_are_predicted(tmp_path, run_cli):
    import yaml

    good = {k: v for k, v in load_runs()[0].items() if k != "_file"}
    typo = dict(good, id="typo", layout=dict(good["layout"], zeroo=0))
    wrong = dict(good, id="wrong-devices", layout=dict(good["layout"], tp=5))
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump([good, typo, wrong], sort_keys=False))
    results = validate_runs(load_runs(str(path)))
    assert [r["id"] for r in results["rows"]] == [good["id"]]
    reasons = {r["id"]: r["skipped"] for r in results["skipped"]}
    assert "unknown key 'zeroo' (did you mean 'zero'?)" in reasons["typo"]
    assert "does not match the 32 devices" in reasons["wrong-devices"]
    assert results["summary"]["skipped"] == 2 and results["summary"]["runs"] == 1
    code, out, err = run_cli("validate", str(path))
    assert code == 1 and "skipped" in out and good["id"] in out
    assert err.count("\n") == 1 and err.startswith("Error: 2 runs could not be predicted")


def test_a_left_out_run_is_shown_but_not_summarised(tmp_path, run_cli):
    """A run its publisher reports as a regression is predicted and listed, and kept out of every summary;
    a left_out without a reason is a one-line error for that record, the rest predicted."""
    import yaml

    good = {k: v for k, v in load_runs()[0].items() if k != "_file"}
    out = dict(good, id="regressed", reference_step_time_s=good["reference_step_time_s"] * 2,
               left_out="a regression its publisher tracks (issue 1)")
    bare = dict(good, id="bare", left_out="slow")
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump([good, out, bare], sort_keys=False))
    results = validate_runs(load_runs(str(path)))
    assert [r["id"] for r in results["rows"]] == [good["id"], "regressed"]
    assert results["summary"]["runs"] == 1 and results["summary"]["left_out"] == 1
    assert results["summary"]["mean_abs_error"] == pytest.approx(abs(results["rows"][0]["error"]))
    assert sum(g["runs"] for g in results["groups"].values()) == 1
    assert "left_out must say why" in results["skipped"][0]["skipped"]
    code, text, _ = run_cli("validate", str(path))
    assert code == 1 and "left out of every summary: regressed: a regression its publisher tracks" in text
    assert "1 of 3 runs could not be predicted" in text
    path.write_text(yaml.safe_dump([out], sort_keys=False))  # nothing left to summarise: still valid JSON
    code, text, _ = run_cli("validate", str(path), "--format", "json")
    assert code == 0 and json.loads(text)["summary"]["mean_abs_error"] is None
    code, text, _ = run_cli("validate", str(path))
    assert code == 0 and "0 runs: no error to summarise" in text


def test_the_shipped_error_bands_are_what_validate_gives_now(results, bridge_results, moe_results, tpu_results):
    """validation/error-bands.yaml (every interval's validation part) is regenerated, never typed: after a change
    to the predictions, run scripts/error_bands.py."""
    import yaml

    from parplan.plan.interval import BANDS_FILE, validation_errors
    from parplan.specs.registry import spec_dir
    from parplan.validate.bands import error_bands

    stored = yaml.safe_load((spec_dir("validation") / BANDS_FILE).read_text())
    every = {"rows": results["rows"] + bridge_results["rows"] + moe_results["rows"] + tpu_results["rows"]}
    assert stored == error_bands(every, load_runs()), \
        "validation/error-bands.yaml is stale: run scripts/error_bands.py"
    counted = [r for r in every["rows"] if not r["left_out"]]
    assert len(counted) == len(every["rows"]) - 1  # the 25.11 Qwen3-30B regression (Megatron-Bridge issue 1998)
    assert sum(len(v) for v in validation_errors().values()) == len(counted)


def test_error_bands_group_every_run_by_its_framework():
    from parplan.validate.bands import error_bands

    rows = [{"id": "a", "framework": "megatron-lm", "error": -0.123456},
            {"id": "b", "framework": "megatron-core (default)", "error": 0.05},
            {"id": "c", "framework": "megatron-lm", "error": 0.2},
            {"id": "d", "framework": "megatron-lm", "error": 0.4}]
    records = [{"id": "a", "model": {"layers": 2}}, {"id": "b", "model": {}}, {"id": "c", "model": {"experts": 0}},
               {"id": "d", "model": {"experts": 8}}]
    assert error_bands({"rows": rows}, records)["frameworks"] == {
        "megatron-core": {"dense": {"b": 0.05}},
        "megatron-lm": {"dense": {"a": -0.1235, "c": 0.2}, "moe": {"d": 0.4}}}
