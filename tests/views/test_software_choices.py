"""sweep, report and the notebook frames take the same framework choice as estimate and plan."""
import csv

import pytest

from parplan.views.frames import plan_frame
from tests.cli.test_bad_input import assert_one_line_error


def test_a_frame_searched_for_a_framework_can_be_sliced():
    """pandas deep-copies a frame's attrs (the search space, with its Software) on every slice."""
    frame = plan_frame("llama3-8b", "h100x8", global_batch=64, software="torchtitan")
    best = frame[frame["rank"] == 1]
    assert len(best) == 1 and best.attrs["space"].software.name == "torchtitan"


def test_sweep_and_report_search_with_the_framework_given(run_cli, tmp_path):
    code, out, err = run_cli("sweep", "--model", "llama3-8b", "--hw", "h100", "--vary", "devices=8",
                             "--framework", "torchtitan", "-o", str(tmp_path / "sweep"))
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [r["framework"] for r in rows] == ["torchtitan"]
    assert_one_line_error(run_cli("sweep", "--model", "llama3-8b", "--hw", "h100", "--vary", "devices=8",
                                  "--framework", "torchtitan", "--optimizer-states", "bf16", "-o",
                                  str(tmp_path / "s2")), match="keeps its optimizer state in fp32")
    code, out, err = run_cli("report", "--model", "llama3-8b", "--hw", "h100x8", "--no-scaling", "--top", "1",
                             "--framework", "torchtitan", "-o", str(tmp_path / "report"))
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "--framework torchtitan" in text and "validated torchtitan runs" in text


@pytest.mark.parametrize("command", ["sweep", "report"])
def test_an_unknown_framework_is_one_line(run_cli, tmp_path, command):
    args = ["--vary", "devices=8"] if command == "sweep" else []
    assert_one_line_error(run_cli(command, "--model", "llama3-8b", "--hw", "h100" if args else "h100x8", *args,
                                  "--framework", "torchtitn", "-o", str(tmp_path / "x")), match="did you mean")
