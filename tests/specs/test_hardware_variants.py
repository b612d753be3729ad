"""The hardware variants people rent and published runs used: each profile loads with a source for every value,
its derived ratios match a hand computation, and its clocks reproduce its peak."""
import pytest

from parplan.specs.cluster import load_cluster
from parplan.specs.hardware import hardware_names, load_hardware
from tests.specs.test_specs import SOURCED_FIELDS

# name: (bf16 FLOP/s, HBM B/s, scale-up B/s, network B/s) and the three ratios worked by hand.
HAND = {
    # 989.4e12 / 2.4e12 = 412.25; / 450e9 = 2198.67; / 50e9 = 19788
    "h100-sxm-96gb": (412.25, 2198.67, 19788.0),
    # 989.4e12 / 3.35e12 = 295.34; / 200e9 = 4947; / 50e9 = 19788
    "h800": (295.34, 4947.0, 19788.0),
    # 148e12 / 4e12 = 37; / 450e9 = 328.89; / 50e9 = 2960
    "h20": (37.0, 328.89, 2960.0),
    # 989.4e12 / 4e12 = 247.35; / 450e9 = 2198.67; / 25e9 = 39576
    "gh200": (247.35, 2198.67, 39576.0),
    # 989.4e12 / 4.8e12 = 206.125; / 450e9 = 2198.67; / 25e9 = 39576
    "gh200-144gb": (206.125, 2198.67, 39576.0),
    # 2.25e15 / 8e12 = 281.25; / 900e9 = 2500; / 100e9 = 22500
    "b300": (281.25, 2500.0, 22500.0),
    # 2.5e15 / 8e12 = 312.5; / 900e9 = 2777.78; / 50e9 = 50000
    "gb200-nvl72": (312.5, 2777.78, 50000.0),
    # 2.5e15 / 8e12 = 312.5; / 900e9 = 2777.78; / 100e9 = 25000
    "gb300-nvl72": (312.5, 2777.78, 25000.0),
}
NEW = sorted(HAND)


def test_every_variant_is_shipped():
    names = hardware_names()
    assert all(n in names for n in NEW)
    assert load_hardware("h100-96gb").name == "h100-sxm-96gb"
    assert load_hardware("gb200").name == "gb200-nvl72"


@pytest.mark.parametrize("name", NEW)
def test_every_value_names_its_source(name):
    hw = load_hardware(name)
    missing = [f for f in SOURCED_FIELDS if not hw.sources.get(f)]
    assert not missing, f"{name} lacks sources for {missing}"
    if hw.clocks is not None:
        assert hw.sources.get("clocks.peak_mhz") and hw.sources.get("clocks.boost_mhz")
    if hw.scale_up_domain != hw.devices_per_node:
        assert hw.sources.get("scale_up_domain")


@pytest.mark.parametrize("name", NEW)
def test_derived_ratios_match_hand_computation(name):
    r = load_hardware(name).ratios("bf16")
    hbm, intra, inter = HAND[name]
    assert r["flops_per_hbm_byte"] == pytest.approx(hbm, rel=1e-4)
    assert r["flops_per_intra_node_byte"] == pytest.approx(intra, rel=1e-4)
    assert r["flops_per_inter_node_byte"] == pytest.approx(inter, rel=1e-4)


# SMs x bf16 FLOP per SM per clock (Ampere 4 tensor cores x 512, Hopper 4 x 1024, Blackwell 4 x 2048) x the
# listed peak clock.
@pytest.mark.parametrize("name, flop_per_sm_clock", [("h100-sxm-96gb", 4096), ("h800", 4096), ("gh200", 4096),
                                                    ("gh200-144gb", 4096), ("b300", 8192), ("gb200-nvl72", 8192),
                                                    ("gb300-nvl72", 8192), ("h100-sxm", 4096), ("h200", 4096),
                                                    ("b200", 8192), ("a100-80gb", 2048)])
def test_clock_reproduces_the_bf16_peak(name, flop_per_sm_clock):
    hw = load_hardware(name)
    assert hw.compute_units * flop_per_sm_clock * hw.clocks.peak_mhz * 1e6 == pytest.approx(hw.peak("bf16"), rel=1e-3)


def test_h20_lists_no_clocks_its_rate_is_capped():
    """78 SMs x 4096 x 1830 MHz would be 585 TFLOP/s: the H20's 148 is a cap, not a clock, so nothing scales it."""
    hw = load_hardware("h20")
    assert hw.clocks is None and hw.peak("bf16") == 148e12


def test_h800_is_an_h100_with_the_nvlink_cut():
    h800, h100 = load_hardware("h800"), load_hardware("h100-sxm")
    assert dict(h800.peak_flops) == dict(h100.peak_flops)
    assert h800.intra_node.bandwidth == 2e11 and h100.intra_node.bandwidth == 4.5e11  # 400 GB/s bidirectional


def test_nvl72_is_a_72_gpu_domain_of_4_gpu_trays():
    for name in ("gb200-nvl72", "gb300-nvl72"):
        hw = load_hardware(name)
        assert (hw.devices_per_node, hw.scale_up_domain) == (4, 72)
        c = load_cluster(f"{name}x144")
        assert (c.nodes, c.scale_up_domain, c.fast_domain) == (36, 72, 72)
        assert load_cluster(f"{name}x16").fast_domain == 16


@pytest.mark.parametrize("name", NEW)
def test_list_and_show(run_cli, name):
    rc, out, err = run_cli("show", name)
    assert rc == 0 and out.startswith(f"{name}:") and "sources:" in out, err
    hw = load_hardware(name)
    assert ("SM clock" in out) == (hw.clocks is not None)


def test_list_hardware_names_every_variant(run_cli):
    rc, out, _ = run_cli("list", "hardware")
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert rc == 0 and set(NEW) <= listed
