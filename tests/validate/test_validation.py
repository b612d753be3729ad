"""The cost model against published training runs: a regression gate on `parplan validate`.

The issue's targets (mean <= 5%, max <= 12% over all 51 runs) are not met yet: the DeepSpeed
ZeRO-3 runs of Narayanan et al. 2021 Table 2 are predicted 32-58% too fast, the 2019 V100 runs
12-25% and one BLOOM snapshot 31%. These bounds keep what is reached from getting worse; tighten
them as the model improves.
"""
import pytest

from parplan.validate.published import load_runs, record_setup, validate_runs


@pytest.fixture(scope="module")
def results():
    return validate_runs(load_runs())


def test_every_published_run_is_predicted(results):
    assert results["summary"]["runs"] == 51
    assert all(r["predicted_s"] > 0 for r in results["rows"])


def test_summary_does_not_regress(results):
    s = results["summary"]
    assert s["mean_abs_error"] <= 0.115
    assert s["max_abs_error"] <= 0.60
    assert s["median_abs_error"] <= 0.07


def by_prefix(results, prefix):
    return [r for r in results["rows"] if r["id"].startswith(prefix)]


def test_korthikanti_runs_within_8_percent(results):
    """Korthikanti et al. 2022 Table 5: every knob published, Megatron-LM on Selene."""
    rows = by_prefix(results, "korthikanti2022")
    assert len(rows) == 9
    assert max(abs(r["error"]) for r in rows) <= 0.08
    assert sum(abs(r["error"]) for r in rows) / len(rows) <= 0.04


def test_megatron_table1_within_10_percent(results):
    rows = by_prefix(results, "megatron2021-t1")
    assert len(rows) == 10
    assert max(abs(r["error"]) for r in rows) <= 0.10


def test_bloom_runs_mean_within_8_percent(results):
    rows = by_prefix(results, "bloom")
    assert len(rows) == 21
    assert sum(abs(r["error"]) for r in rows) / len(rows) <= 0.08


def test_only_the_2019_runs_use_unfused_kernels():
    """Megatron-LM's fused kernels arrived with Narayanan et al. 2021 (Sec. 4.2)."""
    for rec in load_runs():
        layout = record_setup(rec)[2]
        assert layout.fused_kernels == (not rec["source"].startswith("Shoeybi et al. 2019")), rec["id"]


def test_errors_are_summarised_by_publication(results):
    groups = results["groups"]
    assert sum(g["runs"] for g in groups.values()) == 51
    assert groups["Narayanan et al. 2021, Table 1"]["runs"] == 10
    assert groups["Narayanan et al. 2021, Table 2 (DeepSpeed ZeRO-3)"]["runs"] == 6
    assert groups["Narayanan et al. 2021, Table 2"]["runs"] == 3
    k = groups["Korthikanti et al. 2022, Tables 3+5"]
    rows = [r["error"] for r in results["rows"] if r["group"] == "Korthikanti et al. 2022, Tables 3+5"]
    assert k["mean_abs_error"] == pytest.approx(sum(abs(e) for e in rows) / len(rows))
    assert k["mean_error"] == pytest.approx(sum(rows) / len(rows))


def test_2019_v100_runs_within_20_percent_on_average(results):
    g = results["groups"]["Shoeybi et al. 2019, Table 2 (GPT-2 training)"]
    assert g["runs"] == 2 and g["mean_abs_error"] <= 0.20


def test_band_spans_the_fitting_choices_of_unpublished_knobs(results):
    banded = [r for r in results["rows"] if r["band_s"] is not None]
    assert len(banded) == results["summary"]["runs_with_unpublished_knobs"] == 23
    for r in banded:
        lo, hi = r["band_s"]
        assert lo <= hi
        if r["fits"]:
            assert r["predicted_s"] == pytest.approx(lo)  # the prediction takes the fastest choice
    # Regression gate: Table 1's pipelined runs (interleaving degree and micro-batch unpublished)
    # fall inside the band of their plausible configurations.
    t1 = [r for r in banded if r["id"].startswith("megatron2021-t1") and r["chosen"].get("vpp")]
    assert len(t1) == 6 and all(r["within_band"] for r in t1)
    assert results["summary"]["published_within_band"] >= 8


def test_a_bad_record_is_a_row_with_its_reason_and_the_rest_are_predicted(tmp_path, run_cli):
    import yaml

    from parplan.validate.published import load_runs
    good = load_runs()[0]
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
