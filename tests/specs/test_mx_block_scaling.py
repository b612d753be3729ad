"""The mxfp8 recipe runs only where a profile says its tensor cores apply MX block scales (Blackwell)."""
import pytest
import yaml
from click.testing import CliRunner

import parplan
from parplan.cli import cli
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.hardware import hardware_from_dict, load_hardware


def _estimate(hw: str, recipe: str):
    sw = resolve_software(load_framework("megatron-core"), dtype="fp8", fp8_recipe=recipe)
    lay = Layout(dp=8, micro_batch=1, global_batch=8, seq_len=4096, dtype="fp8")
    return parplan.estimate(parplan.load_model("llama3.1-8b"), parplan.load_cluster(hw), lay, software=sw)


@pytest.mark.parametrize("name,mx", [("b200", True), ("b300", True), ("gb200-nvl72", True), ("gb300-nvl72", True),
                                     ("h100-sxm", False), ("h200", False), ("mi300x", False), ("tpu-v5p", False)])
def test_shipped_profiles_say_which_tensor_cores_take_mx_scales(name, mx):
    assert load_hardware(name).mx_block_scaling is mx


def test_mxfp8_on_hopper_is_refused_with_the_recipes_that_would_run():
    with pytest.raises(ParplanError) as err:
        _estimate("h100x8", "mxfp8")
    msg = str(err.value)
    assert "\n" not in msg and "h100-sxm" in msg and "mx_block_scaling" in msg
    assert "choose --fp8-recipe delayed, tensorwise, blockwise" in msg  # megatron-core's recipes, mxfp8 left out


def test_mxfp8_runs_on_blackwell_and_other_recipes_run_on_hopper():
    assert float(_estimate("b200x8", "mxfp8").step_time_s) > 0
    assert float(_estimate("h100x8", "blockwise").step_time_s) > 0


def test_plan_refuses_it_before_searching():
    res = CliRunner().invoke(cli, ["plan", "--model", "llama3.1-8b", "--hw", "h200x8", "--dtype", "fp8",
                                   "--fp8-recipe", "mxfp8"])
    assert res.exit_code == 1 and "h200" in res.output and "MX block scales" in res.output


def test_the_key_must_be_true_or_false():
    data = yaml.safe_load(open(load_hardware("b200").path))
    data["mx_block_scaling"] = "yes"
    with pytest.raises(ParplanError, match="mx_block_scaling.*true or false"):
        hardware_from_dict(data, "b200")


def test_a_sweep_says_why_at_every_point_instead_of_finding_nothing_that_fits(tmp_path):
    res = CliRunner().invoke(cli, ["sweep", "--model", "llama3.1-405b", "--hw", "h100", "--vary", "devices=8",
                                   "--dtype", "fp8", "--fp8-recipe", "mxfp8", "-o", str(tmp_path)])
    assert res.exit_code == 0  # a batch job: it keeps the rows and says why in each
    rows = (tmp_path / "sweep.csv").read_text()
    assert "MX block scales" in rows and "no layout fits" not in rows
