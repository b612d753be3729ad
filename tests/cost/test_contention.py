"""Overlapped communication slows the compute beside it: the profile's measured table, the exposure
formula by hand, and its effect on an FSDP step."""
import pytest

import parplan
from parplan.cost.contention import class_seconds, exposed_s, op_class, slowdown
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.contention import contention_from_dict
from parplan.specs.hardware import load_hardware


@pytest.mark.parametrize("link_s, window_s, floor_s, slow, expected", [
    (2.0, 4.0, 0.0, 0.25, 0.4),    # hidden: the compute pays L s/(1+s) = 2 * 0.2
    (6.0, 4.0, 0.0, 0.25, 2.0),    # outlasts the slowed compute (4 * 1.25 = 5 < 6): L - W
    (5.0, 4.0, 0.0, 0.25, 1.0),    # the boundary L = W (1 + s): both branches give W s
    (2.0, 4.0, 0.5, 0.25, 0.8),    # the unhideable 0.5 whole, the other 1.5 at 0.2
    (2.0, 4.0, 0.0, 0.0, 0.0),     # no contention: perfect overlap
    (3.0, 0.0, 0.0, 0.25, 3.0),    # nothing to hide under
])
def test_exposed_time_by_hand(link_s, window_s, floor_s, slow, expected):
    assert float(exposed_s(link_s, window_s, floor_s, slow)) == pytest.approx(expected)


def test_slowdown_interpolates_the_measured_table_at_the_sms_held():
    h200 = load_hardware("h200")  # 24 of 132 SMs = 0.1818, a measured point: GEMMs 0.265 over NVLink
    assert float(slowdown(h200, "scale_up", {"gemm": 1.0})) == pytest.approx(0.265, rel=1e-3)
    # Half GEMM, half memory-bound time: the time-weighted mean of 0.265 and 0.042.
    assert float(slowdown(h200, "scale_up", {"gemm": 1.0, "memory": 1.0})) == pytest.approx((0.265 + 0.042) / 2,
                                                                                             rel=1e-3)
    # A100: 24 of 108 = 0.2222, between the measured 0.1818 (0.265) and 0.2424 (0.418).
    a100 = load_hardware("a100")
    frac = (24 / 108 - 24 / 132) / (32 / 132 - 24 / 132)
    assert float(slowdown(a100, "scale_up", {"gemm": 1.0})) == pytest.approx(0.265 + frac * (0.418 - 0.265), rel=1e-3)
    # 16 SMs held across nodes, without HBM traffic: attention's 0.079.
    assert float(slowdown(h200, "network", {"attention": 2.0})) == pytest.approx(0.079, rel=1e-3)


def test_a_profile_without_measurements_charges_no_slowdown():
    v100 = load_hardware("v100-32gb")
    assert v100.contention is None
    assert float(slowdown(v100, "scale_up", {"gemm": 1.0})) == 0.0


def test_op_classes_and_their_seconds():
    model = parplan.load_model("gpt3-1.3b")
    est = parplan.estimate(model, parplan.load_cluster("h100x8"), Layout(dp=8, global_batch=8, zero=3))
    classes = {op_class(o) for o in est.ops}
    assert {"gemm", "attention", "memory"} <= classes
    fwd = class_seconds(est.ops, est.op_times, 0)
    assert sum(float(v) for v in fwd.values()) == pytest.approx(float(est.layer_forward_s), rel=1e-6, abs=1e-6)


def _table(**over):
    data = {"collective_sms": {"scale_up": 24, "network": 16}, "sm_fraction": [0.1, 0.2],
            "slowdown": {k: {"gemm": [0.1, 0.2], "attention": [0.1, 0.2], "memory": [0.0, 0.0]}
                         for k in ("scale_up", "network")}}
    data.update(over)
    return data


@pytest.mark.parametrize("over, message", [
    ({"sm_fraction": [0.2, 0.1]}, "increasing"),
    ({"sm_fraction": [0.1, 1.5]}, "increasing"),
    ({"collective_sms": {"scale_up": 24}}, "network"),
    ({"slowdown": {"scale_up": {"gemm": [0.1], "attention": [0.1, 0.2], "memory": [0, 0]}}}, "gemm"),
    ({"collective_smz": 3}, "collective_sms"),
])
def test_bad_overlap_tables_are_one_line_errors(over, message):
    with pytest.raises(ParplanError, match=message):
        contention_from_dict(_table(**over), "test: overlap")
    assert contention_from_dict(_table(), "ok") is not None
