"""One path for everyone: a validation record predicted through the command line, its fields passed as flags
and its model as a spec file (``parplan.validate.cli_args``), gives the step time ``validate`` gives it.

The records checked are a set that together set every record key and layout key the shipped files use (and
both values of each true/false key), and one record of each file's publications; ``scripts/validate_via_cli.py``
runs every record the same way."""
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from parplan.cli import cli
from parplan.validate.cli_args import CLUSTER_FIELDS, LAYOUT_FLAGS, SOFTWARE_FLAGS, SWITCHES, record_cli_args
from parplan.validate.published import RUN_KEYS, RUN_LAYOUT_KEYS, load_runs, predict_record

SKIP = {"id", "source", "confidence", "model", "published", "reference_step_time_s", "reference_derivation", "notes",
        "_file", "left_out"}


def _features(rec):
    """What a record exercises: its file and publication, each key it sets (a true/false one with its value)."""
    out = {("file", rec["_file"], rec["id"].split("-")[0])}
    out |= {("key", k, str(v) if isinstance(v, bool) else "") for k, v in rec.items() if v is not None and k not in SKIP}
    out |= {("layout", k, str(v) if isinstance(v, bool) else "") for k, v in rec["layout"].items() if v is not None}
    return out


def _covering_records():
    runs = load_runs()
    want, chosen = set().union(*map(_features, runs)), []
    while want:
        best = max(runs, key=lambda r: len(_features(r) & want))
        chosen.append(best)
        want -= _features(best)
    return chosen


RECORDS = _covering_records()


def test_every_record_key_becomes_a_flag_or_a_spec():
    """A key added to the record schema must reach the command line (or be one the arguments always carry)."""
    always = {"hardware", "devices", "precision", "global_batch", "layout", "model", "flash_attention",
              "fused_kernels"}
    described = {"network"}  # prose about the fabric; inter_node_bandwidth is its number
    mapped = set(SOFTWARE_FLAGS) | set(SWITCHES) | set(CLUSTER_FIELDS) | always | described
    assert set(RUN_KEYS) - SKIP <= mapped
    assert set(RUN_LAYOUT_KEYS) - {"sequence_parallel"} <= set(LAYOUT_FLAGS)


def test_the_checked_records_are_a_sample():
    assert len(RECORDS) < len(load_runs()) / 4  # the script runs them all


@pytest.mark.parametrize("rec", RECORDS, ids=[r["id"] for r in RECORDS])
def test_the_command_line_gives_validates_step_time(rec, tmp_path):
    args = record_cli_args(rec, tmp_path)
    est, _, how, _ = predict_record(rec)
    command = ["plan", *args, "--top", "1", "--format", "json"] if how == "plan" else ["estimate", *args,
                                                                                         "--format", "json"]
    out = CliRunner().invoke(cli, command)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    step_s = (data[0] if how == "plan" else data)["step_time_s"]
    assert step_s == pytest.approx(float(est.step_time_s), rel=1e-9)
    if how != "plan":  # validate falls back to estimate exactly where plan finds no fitting layout
        refused = CliRunner().invoke(cli, ["plan", *args, "--top", "1"])
        assert refused.exit_code != 0 and "does not fit" in refused.output


def test_the_arguments_carry_the_published_knobs(tmp_path):
    rec = next(r for r in load_runs() if r["id"] == "bridge2511-h100-llama3-8b-8gpu")
    args = record_cli_args(rec, tmp_path)
    pairs = dict(zip(args, args[1:]))
    assert pairs["--recompute-layers"] == "5" and pairs["--recompute"] == "full"
    assert pairs["--fp8-recipe"] == rec["fp8_recipe"] and "--fp8-params" in args
    assert (tmp_path / f"{rec['id']}-model.yaml").is_file()
    cluster = yaml.safe_load(Path(pairs["--hw"]).read_text())  # the record states its node size: a cluster file
    assert cluster == {"hardware": "h100-sxm", "devices": 8, "devices_per_node": 8}
