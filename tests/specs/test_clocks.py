"""A sustained SM clock scales a profile's rates by its ratio to the clock the part held when its
efficiencies were measured (rates are proportional to the SM clock), and bad clocks are one-line errors."""
import pytest

from parplan.errors import ParplanError
from parplan.specs.clocks import at_clock, clocks_from_dict
from parplan.specs.cluster import load_cluster
from parplan.specs.hardware import load_hardware
from tests.cli.test_bad_input import assert_one_line_error


def cluster_file(tmp_path, body: str) -> str:
    f = tmp_path / "cluster.yaml"
    f.write_text(body)
    return str(f)


def test_sustained_clock_scales_every_rate_from_the_measured_clock(tmp_path):
    c = load_cluster(cluster_file(tmp_path, "hardware: h100-sxm-96gb\ndevices: 16\nsustained_clock_mhz: 1050\n"))
    hw = c.hardware
    base = load_hardware("h100-sxm-96gb")
    # the efficiencies correspond to about 1400 MHz (an H100 loaded at 700 W): 1050 MHz runs at 3/4 of them
    assert base.clocks.loaded_mhz == 1400
    for dtype in ("bf16", "fp8", "fp32"):
        assert hw.peak(dtype) == pytest.approx(0.75 * base.peak(dtype), rel=1e-12)
    assert hw.hbm_bandwidth == base.hbm_bandwidth and c.intra_node == base.intra_node
    assert hw.clocks.sustained_mhz == 1050 and base.clocks.sustained_mhz is None
    assert c.label == "16 x h100-sxm-96gb at 1050 MHz"
    assert load_cluster("h100-sxm-96gbx16").hardware.peak("bf16") == base.peak("bf16")


def test_the_clock_a_loaded_h100_reports_is_about_the_profiles(tmp_path):
    """nvidia-smi reads ~1380 MHz on an H100 loaded with GEMMs at 700 W, where layer GEMMs run 1.7% below the
    profile (about 1400 MHz); the profile's own clock changes nothing."""
    base = load_hardware("h100-sxm")
    held = load_cluster(cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\nsustained_clock_mhz: 1380\n"))
    assert held.hardware.peak("bf16") / base.peak("bf16") == pytest.approx(1 / 1.017, rel=5e-3)  # 1400: rounded
    same = load_cluster(cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\nsustained_clock_mhz: 1400\n"))
    assert same.hardware.peak_flops == base.peak_flops


def test_clocks_compose_and_return():
    hw = load_hardware("gh200")
    back = at_clock(at_clock(hw, 1200), 1400)
    for dtype in ("bf16", "fp32"):
        assert back.peak_flops[dtype] == pytest.approx(hw.peak_flops[dtype])


def test_a_profile_without_a_measured_loaded_clock_cannot_be_clocked(tmp_path):
    for name in ("b200", "a100-80gb"):
        with pytest.raises(ParplanError, match="loaded_mhz"):
            load_cluster(cluster_file(tmp_path, f"hardware: {name}\ndevices: 8\nsustained_clock_mhz: 1000\n"))


def test_a_compute_bound_gemm_runs_at_the_clock_and_a_copy_does_not():
    from parplan.cost.roofline import matmul_time_s, memory_time_s

    hw = load_hardware("h100-sxm-96gb")
    slow = at_clock(hw, 700)  # half the 1400 MHz of the part as measured
    o = hw.kernel_overhead_s
    gemm = (matmul_time_s(hw, 8192, 8192, 8192) - o, matmul_time_s(slow, 8192, 8192, 8192) - o)
    assert gemm[1] == pytest.approx(2 * gemm[0], rel=1e-9)
    assert memory_time_s(slow, 1e9) == memory_time_s(hw, 1e9)


def test_half_clock_doubles_a_compute_bound_step(tmp_path):
    """Only the compute scales with the clock: the step's compute term doubles, its HBM-bound parts do not."""
    from parplan.layouts.layout import Layout
    from parplan.specs.model_loader import load_model
    from parplan.step.train import estimate

    model = load_model("llama3-8b")
    layout = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=3)
    full = estimate(model, load_cluster("h100-sxm-96gbx8"), layout)
    half = estimate(model, load_cluster(cluster_file(tmp_path, "hardware: h100-sxm-96gb\ndevices: 8\n"
                                                               "sustained_clock_mhz: 700\n")), layout)
    ratio = half.breakdown_s["compute"] / full.breakdown_s["compute"]
    assert 1.5 < ratio <= 2.0 + 1e-9
    assert half.step_time_s > full.step_time_s


@pytest.mark.parametrize("value, match", [(-1500, "must be positive"), (0, "must be positive"),
                                          ("fast", "must be a number"),
                                          (2000, "above the 1980 MHz boost clock of h100-sxm-96gb")])
def test_bad_clock_is_a_one_line_error(tmp_path, value, match):
    path = cluster_file(tmp_path, f"hardware: h100-sxm-96gb\ndevices: 8\nsustained_clock_mhz: {value}\n")
    with pytest.raises(ParplanError, match=match):
        load_cluster(path)


def test_bad_clock_through_the_cli(tmp_path, run_cli):
    path = cluster_file(tmp_path, "hardware: h100-sxm-96gb\ndevices: 8\nsustained_clock_mhz: 2500\n")
    assert_one_line_error(run_cli("estimate", "--model", "llama3-8b", "--hw", path), match="boost clock")
    path = cluster_file(tmp_path, "hardware: h100-sxm-96gb\ndevices: 8\nsustained_clock: 1500\n")
    assert_one_line_error(run_cli("estimate", "--model", "llama3-8b", "--hw", path),
                          match="did you mean 'sustained_clock_mhz'")


def test_a_profile_without_clocks_cannot_be_clocked(tmp_path):
    for name in ("h20", "mi300x"):
        with pytest.raises(ParplanError, match="lists no SM clocks"):
            load_cluster(cluster_file(tmp_path, f"hardware: {name}\ndevices: 8\nsustained_clock_mhz: 1000\n"))


def test_clocks_block_is_checked():
    assert clocks_from_dict({"peak_mhz": 1830, "boost_mhz": 1980}, "p").power_limit_w is None
    with pytest.raises(ParplanError, match="loaded_mhz 2000 is above boost_mhz"):
        clocks_from_dict({"peak_mhz": 1830, "boost_mhz": 1980, "loaded_mhz": 2000}, "p")
    with pytest.raises(ParplanError, match="below peak_mhz"):
        clocks_from_dict({"peak_mhz": 1830, "boost_mhz": 1500}, "p")
    with pytest.raises(ParplanError, match="did you mean 'peak_mhz'"):
        clocks_from_dict({"peak_mz": 1830, "boost_mhz": 1980}, "p")
    with pytest.raises(ParplanError, match="missing field 'boost_mhz'"):
        clocks_from_dict({"peak_mhz": 1830}, "p")
