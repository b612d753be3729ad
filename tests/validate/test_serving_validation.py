"""Serving records (validation/serving-runs.yaml) predicted exactly as `estimate --mode inference` predicts them.

The bounds below are a regression gate on what the model reaches now (see the report in
reports/inference/published-serving-errors.txt); tighten them as the model improves.
"""
import json

import pytest
import yaml

from tests.helpers import REPO
from parplan.validate.serving import (framework_split, load_serving_runs, predict_serving_record, serving_setup,
    split_runs, validate_serving)


@pytest.fixture(scope="module")
def records():
    return load_serving_runs()


@pytest.fixture(scope="module")
def results(records):
    return validate_serving(records)


def test_every_serving_record_is_predicted(records, results):
    assert len(records) == 41 and not results["skipped"]
    assert results["summary"]["runs"] == 44
    groups = results["groups"]
    assert {g for g in groups if g.startswith("parplan GPU check")} == {
        f"parplan GPU check on one NVIDIA {gpu} - {what}" for gpu in ("H100 80GB HBM3", "H200")
        for what in ("prefill, eager", "decode, CUDA graph", "decode, eager")}
    assert groups["NVIDIA NIM LLM Benchmarking guide (tensorrt-llm)"]["runs"] == 5


def test_serving_errors_do_not_regress(results):
    g = results["groups"]
    graphs = [r["error"] for r in results["rows"] if "CUDA graph" in r["group"] or "prefill" in r["group"]]
    assert max(abs(e) for e in graphs) < 0.15
    assert g["NVIDIA NIM LLM Benchmarking guide (tensorrt-llm)"]["mean_abs_error"] < 0.08
    assert g["parplan GPU check on one NVIDIA H100 80GB HBM3 - decode, CUDA graph"]["median_abs_error"] < 0.05


def test_a_record_is_predicted_as_the_command_line_predicts_it(records, run_cli, tmp_path):
    """The layer-stack record's model as a --model file, its fields as flags: the same decode_layers_s."""
    rec = next(r for r in records if r["id"] == "gpu-check-h200-llama3.1-8b-4layers-decode-b16-graph")
    est, setup = predict_serving_record(rec)
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump(dict(rec["model"])))
    code, out, err = run_cli("estimate", "--mode", "inference", "--model", str(model), "--hw", "h200", "--tp", "1",
                             "--batch", "16", "--input-len", "2048", "--output-len", "2", "--framework",
                             str(REPO / "validation" / "stacks" / "gpu-inference-check.yaml"), "--cuda-graphs",
                             "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["decode_layers_s"] == pytest.approx(float(est.decode_layers_s), rel=1e-12)
    assert d["cuda_graphs"] is True and setup.scope == "layers"


def test_a_published_record_is_predicted_as_the_library_call(records):
    from parplan.cli.serve_cmd import estimate_inference_command

    rec = next(r for r in records if r["id"].endswith("c25"))
    est, _ = predict_serving_record(rec)
    d = json.loads(estimate_inference_command("llama3.1-70b", "h100x2", 2, 1, 1, 25, 5000, 500, "fp8", "fp8",
                                              "json", framework="tensorrt-llm"))
    assert d["itl_s"] == pytest.approx(float(est.itl_s), rel=1e-12)
    assert d["tokens_per_s"] == pytest.approx(float(est.tokens_per_s), rel=1e-12)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(framework="vlm"), "unknown framework 'vlm' (did you mean 'vllm'?)"),
    (lambda r: r.update(scope="engine"), "scope must be one of serving, layers"),
    (lambda r: r["published"].update(decode_layers_s=1.0), "unknown key 'decode_layers_s'"),
    (lambda r: r.update(cuda_graph=True), "cuda_graph"),
])
def test_a_bad_record_is_skipped_with_one_line(records, change, message):
    rec = json.loads(json.dumps(next(r for r in records if r["id"].startswith("nim"))))
    change(rec)
    out = validate_serving([rec])
    assert not out["rows"] and len(out["skipped"]) == 1
    assert message in out["skipped"][0]["skipped"] and "\n" not in out["skipped"][0]["skipped"]


def test_validate_framework_applies_by_kind():
    assert framework_split("vllm") == (None, "vllm")
    assert framework_split("megatron-core") == ("megatron-core", None)
    assert framework_split("pytorch") == ("pytorch", "pytorch")
    assert framework_split(None) == (None, None)


def test_files_split_into_training_and_serving(tmp_path):
    training, serving, unreadable = split_runs([str(REPO / "validation" / "serving-runs.yaml")])
    assert unreadable == []
    assert not training and len(serving) == 41
    setup = serving_setup(serving[-1])
    assert setup.software.name == "gpu-inference-check" and setup.scope == "layers"


def test_validate_command_reports_the_serving_groups(run_cli):
    code, out, err = run_cli("validate", str(REPO / "validation" / "serving-runs.yaml"))
    assert code == 0, err
    assert out.startswith("serving:") and "decode, CUDA graph" in out and "signed mean" in out
    code, out, err = run_cli("validate", str(REPO / "validation" / "serving-runs.yaml"), "--format", "json")
    assert code == 0, err
    assert len(json.loads(out)["serving"]["rows"]) == 44


def test_validate_keeps_the_files_it_can_read_and_names_the_one_it_cannot(run_cli, tmp_path):
    """validation/*.yaml includes the error bands, which hold no runs: the runs still print, the band file is
    named in one line, and the exit says not everything ran."""
    bad = tmp_path / "notes.yaml"
    bad.write_text("just: a mapping\n")
    code, out, err = run_cli("validate", str(REPO / "validation" / "serving-runs.yaml"), str(bad))
    assert code == 1 and "44 serving metrics" in out
    assert err.strip().splitlines() == [f"Error: skipped {bad}: expected a non-empty list of validation run records"]
    code, out, err = run_cli("validate", str(bad))
    assert code == 1 and out == "" and "Traceback" not in err and f"{bad}: expected a non-empty list" in err
