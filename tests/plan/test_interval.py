"""Every prediction carries an interval: the validation errors of its framework and the [assumed] profile values."""
import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from parplan.layouts.layout import Layout
from parplan.plan import interval as iv
from parplan.plan.planner import make_plan
from parplan.plan.trust import SWING
from parplan.specs.cluster import load_cluster, make_cluster
from parplan.specs.hardware import load_hardware
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate
from tests.helpers import REPO, software


@pytest.fixture
def errors(monkeypatch):
    """Stand-in validation errors: five dense megatron-core runs, one dense DeepSpeed run, two MoE runs."""
    table = {("megatron-core", "dense"): (-0.2, -0.1, 0.0, 0.1, 0.2), ("deepspeed", "dense"): (-0.5,),
             ("megatron-core", "moe"): (0.3, 0.5)}
    monkeypatch.setattr(iv, "validation_errors", lambda: table)
    return {"megatron-core": table[("megatron-core", "dense")], "deepspeed": table[("deepspeed", "dense")]}


def test_the_band_is_the_middle_of_the_frameworks_errors(errors):
    lo, hi, runs, note = iv.error_band("megatron-core")
    # numpy's linear quantiles of five points: 10% lies 0.4 of the way from -0.2 to -0.1
    assert (lo, hi, runs, note) == (pytest.approx(-0.16), pytest.approx(0.16), 5, "")
    lo, hi, runs, note = iv.error_band("torchtitan")  # no run of its own: every dense run's errors
    assert runs == 6 and note == "no torchtitan run is validated"
    assert lo == pytest.approx(np.quantile([-0.5, -0.2, -0.1, 0.0, 0.1, 0.2], 0.1))
    # a mixture-of-experts model takes the MoE runs, of its framework or else of every framework
    assert iv.error_band("megatron-core", moe=True) == (pytest.approx(0.32), pytest.approx(0.48), 2, "")
    assert iv.error_band("torchtitan", moe=True)[2:] == (2, "no MoE torchtitan run is validated")


def test_a_step_predicted_fast_by_e_took_t_over_1_plus_e(errors):
    model, cluster = load_model("gpt3-13b"), load_cluster("a100x8")  # no [assumed] a100-80gb value
    sw = software("megatron-lm")  # no [assumed] framework value either
    lay = Layout(tp=8, global_batch=64, recompute="full")
    est = estimate(model, cluster, lay, software=sw)
    (got,) = iv.intervals(model, cluster, [est.layout], [float(est.step_time_s)], sw, est.headroom)
    t = float(est.step_time_s)
    lo, hi = np.quantile([-0.5, -0.2, -0.1, 0.0, 0.1, 0.2], [0.1, 0.9])
    assert got.assumed == () and got.not_varied == ()
    assert (got.low_s, got.high_s) == (pytest.approx(t / (1 + hi)), pytest.approx(t / (1 + lo)))


def test_an_assumed_value_widens_the_interval_by_its_swing(tmp_path, errors):
    """A profile whose large kernel overhead is [assumed]: the interval widens by what 15% more overhead costs the
    step; the same value with a measured source widens nothing."""
    text = (REPO / "hardware" / "h100-sxm.yaml").read_text().replace("kernel_overhead_s: 4.0e-06",
                                                                   "kernel_overhead_s: 4.0e-04")
    assert '  kernel_overhead_s: "[assumed]' in text
    (tmp_path / "assumed.yaml").write_text(text)
    (tmp_path / "measured.yaml").write_text(text.replace('  kernel_overhead_s: "[assumed] ', '  kernel_overhead_s: "'))
    model, sw, lay = load_model("gpt3-1.3b"), software("megatron-lm"), Layout(dp=8, global_batch=64)
    got = {}
    for name in ("assumed", "measured"):
        cluster = make_cluster(load_hardware(str(tmp_path / f"{name}.yaml")), 8)
        got[name] = iv.estimate_interval(estimate(model, cluster, lay, software=sw))
    assert [k for k, _, _ in got["assumed"].assumed] == ["kernel_overhead_s"] and got["measured"].assumed == ()
    cluster = make_cluster(load_hardware(str(tmp_path / "assumed.yaml")), 8)
    t = float(estimate(model, cluster, lay, software=sw).step_time_s)
    more = replace(cluster, hardware=replace(cluster.hardware, kernel_overhead_s=4e-4 * (1 + SWING)))
    rise = float(estimate(model, more, lay, software=sw).step_time_s) / t - 1
    (_, fall, up), = got["assumed"].assumed
    assert up == pytest.approx(rise) and rise > 0.01 and fall == pytest.approx(rise)  # the overhead is linear
    e10, e90 = np.quantile(errors["megatron-core"] + errors["deepspeed"], [0.1, 0.9])  # megatron-lm: every run's
    assert got["assumed"].high_s == pytest.approx(t / (1 + e10) * (1 + rise))
    assert got["assumed"].low_s == pytest.approx(t / (1 + e90) * (1 - rise))
    assert got["measured"].high_s == pytest.approx(t / (1 + e10))


def test_a_value_the_cluster_file_sets_is_not_assumed(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("hardware: mi300x\ndevices: 16\ninter_node_bandwidth: 2.5e+10\n")
    sw = software("megatron-core")
    varied, named = iv.assumed_values(load_cluster("mi300x16"), sw)
    assert "inter_node.bandwidth" in [k for k, _ in varied]
    varied, named = iv.assumed_values(load_cluster(str(path)), sw)
    assert "inter_node.bandwidth" not in [k for k, _ in varied] and "inter_node.bandwidth" in named
    # a flag a framework profile assumes is varied by setting it the other way
    data = yaml.safe_load((REPO / "frameworks" / "megatron-core.yaml").read_text())
    data["sources"]["data_parallel.reduce_every_microbatch"] = "[assumed] for this test"
    (tmp_path / "fw.yaml").write_text(yaml.safe_dump(data))
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    sw = resolve_software(load_framework(str(tmp_path / "fw.yaml")))
    varied, named = iv.assumed_values(load_cluster("a100x16"), sw)
    flag = dict(varied)["megatron-core: data_parallel.reduce_every_microbatch"]
    assert len(flag) == 1 and flag[0][1].framework.data_parallel.reduce_every_microbatch is not \
        sw.framework.data_parallel.reduce_every_microbatch


def test_overlaps():
    def span(lo, hi):
        return iv.Interval(step_time_s=(lo + hi) / 2, low_s=lo, high_s=hi, framework="x", moe=False, runs=1,
                           error_low=0,
                           error_high=0, group_note="", assumed=(), not_varied=())
    items = [span(10, 12), span(11, 13), span(12.5, 14), span(9, 10)]
    assert iv.overlapping(items) == [2, 4] and not items[0].overlaps(items[2])


def test_plan_shows_each_plans_interval_and_which_overlap_the_first(run_cli):
    code, out, err = run_cli("plan", "--model", "gpt3-13b", "--hw", "a100x64", "--top", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert "interval s" in lines[2]
    runs = len(iv.validation_errors()[("megatron-core", "dense")])
    assert any(ln.startswith(f"interval: the middle 80% of the errors of the {runs} validated megatron-core runs")
               for ln in lines)
    assert any(ln.startswith("#1's interval overlaps ") for ln in lines)
    code, out, err = run_cli("plan", "--model", "gpt3-13b", "--hw", "a100x64", "--top", "4", "--format", "json")
    plans = json.loads(out)
    for p in plans:
        low, high = p["step_time_interval_s"]
        e_lo, e_hi = p["interval"]["validation"]["errors"]  # the published time is t / (1 + error)
        assert low <= p["step_time_s"] / (1 + e_hi) < p["step_time_s"] / (1 + e_lo) <= high
        assert p["interval"]["validation"]["framework"] == "megatron-core"
    first = plans[0]["step_time_interval_s"]
    assert all(p["interval_overlaps_first"] == (p["step_time_interval_s"][0] <= first[1]) for p in plans)


def test_estimate_carries_the_interval_too(run_cli):
    code, out, err = run_cli("estimate", "--model", "gpt3-13b", "--hw", "a100x64", "--tp", "8", "--format", "json")
    d = json.loads(out)
    low, high = d["step_time_interval_s"]
    runs = len(iv.validation_errors()[("megatron-core", "dense")])
    e_lo, e_hi = d["interval"]["validation"]["errors"]
    assert code == 0 and low <= d["step_time_s"] / (1 + e_hi) < d["step_time_s"] / (1 + e_lo) <= high
    assert d["interval"]["validation"]["runs"] == runs
    code, out, err = run_cli("estimate", "--model", "gpt3-13b", "--hw", "a100x64", "--tp", "8",
                             "--framework", "deepspeed", "--zero", "1")
    runs = len(iv.validation_errors()[("deepspeed", "dense")])
    assert code == 0 and "interval " in out and f"{runs} validated deepspeed runs" in out


def test_plan_result_intervals_follow_the_plans():
    result = make_plan(load_model("gpt3-1.3b"), load_cluster("a100x8"), top=3, software=software("pytorch"))
    assert len(result.intervals) == 3 and result.intervals[0].group_note == "no pytorch run is validated"
    for est, got in zip(result.estimates, result.intervals):
        assert got.step_time_s == pytest.approx(float(est.step_time_s)) and got.low_s < got.high_s
