"""A scale-up domain wider than a node (GB200 NVL72: 4-GPU trays in one 72-GPU NVLink domain) is where placement,
the training search and the serving search put tensor and other NVLink traffic."""
import numpy as np
import pytest

from parplan.cost.collectives import bus_bandwidth, collective_time_s, place
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.plan.candidates import SearchSpace, candidates
from parplan.plan.serve_search import serve_splits
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate


def cluster_file(tmp_path, body: str) -> str:
    f = tmp_path / "cluster.yaml"
    f.write_text(body)
    return str(f)


def trays_only(tmp_path, devices=144):
    """The same GB200 hardware with its NVLink domain cut to the 4-GPU tray: what a node-bound model would see."""
    return load_cluster(cluster_file(tmp_path, f"hardware: gb200-nvl72\ndevices: {devices}\nscale_up_domain: 4\n"))


def test_groups_inside_the_rack_stay_on_nvlink(tmp_path):
    nvl = load_cluster("gb200-nvl72x144")
    assert nvl.devices_per_node == 4 and nvl.scale_up_domain == 72
    p = place(16, 1, nvl)  # 16 contiguous GPUs: four trays of one rack
    assert (int(p.local), int(p.nodes)) == (16, 1)
    assert float(bus_bandwidth(p, nvl)) == pytest.approx(900e9 * 0.756)
    # Two racks: a group of 2 ranks 72 apart crosses the network, one NIC each.
    across = place(2, 72, nvl)
    assert (int(across.local), int(across.nodes)) == (1, 2)
    assert float(bus_bandwidth(across, nvl)) == pytest.approx(50e9 * 0.94)
    # 144 contiguous ranks: 72 per rack, each rack driving its 72 NICs.
    whole = place(144, 1, nvl)
    assert (int(whole.local), int(whole.nodes)) == (72, 2)
    # The same group on 4-GPU domains spans four of them over the NICs.
    trays = trays_only(tmp_path)
    assert (int(place(16, 1, trays).local), int(place(16, 1, trays).nodes)) == (4, 4)
    t_nvl = float(collective_time_s("all_gather", 1e9, p, nvl))
    t_trays = float(collective_time_s("all_gather", 1e9, place(16, 1, trays), trays))
    # 1 GB x 15/16 over 680.4 GB/s, against min(NVLink, 4 NICs x 47 GB/s) = 188 GB/s
    assert t_nvl == pytest.approx(1e9 * 15 / 16 / (900e9 * 0.756) + 8.4e-6 + 15 * 1.9e-6, rel=1e-6)
    assert t_trays > 3 * t_nvl


def test_tensor_parallel_is_searched_across_the_rack(tmp_path):
    model = load_model("llama3-70b")
    space = SearchSpace(global_batch=512, seq_len=8192, dtype="bf16")
    tps = set(np.unique(candidates(model, load_cluster("gb200-nvl72x144"), space)["tp"]).tolist())
    assert {8, 16} <= tps  # the divisors of 144 that divide 64 heads, beyond the 4-GPU tray
    assert max(np.unique(candidates(model, trays_only(tmp_path), space)["tp"])) == 4
    with pytest.raises(ParplanError, match="more than the 4 devices of one NVLink node or domain"):
        candidates(model, trays_only(tmp_path), SearchSpace(global_batch=512, seq_len=8192, fixed={"tp": 8}))


def test_tp8_across_trays_is_as_cheap_as_tp8_in_an_hgx_node():
    """tp=8 on NVL72 spans two trays but one NVLink domain: its all-reduces run on NVLink, not the NICs."""
    model = load_model("llama3-70b")
    layout = Layout(tp=8, pp=1, dp=18, micro_batch=1, global_batch=144, zero=1, sp=True)
    est = estimate(model, load_cluster("gb200-nvl72x144"), layout)
    tp = [c for c in est.collectives if c.collective.axis == "tp"]
    assert tp and not any(np.any(c.spans_nodes) for c in tp)


def test_serving_splits_tensor_parallel_up_to_the_domain(tmp_path):
    model = load_model("llama3-405b")
    tps = {tp for tp, _, _ in serve_splits(model, load_cluster("gb200-nvl72x144"))}
    assert {8, 16} <= tps  # divisors of 144 the 128 heads allow, past the 4-GPU tray
    assert max(tp for tp, _, _ in serve_splits(model, trays_only(tmp_path, 144))) == 4


def test_cluster_file_domain_rules(tmp_path):
    # An NVLink partition of 64 GPUs (the NVL partition guide steps in fours: 72, 68, 64).
    part = load_cluster(cluster_file(tmp_path, "hardware: gb200-nvl72\ndevices: 128\nscale_up_domain: 64\n"))
    assert (part.scale_up_domain, part.fast_domain, part.nodes) == (64, 64, 32)
    # NVLink across two 4-GPU hosts of an H100 cluster file.
    pair = load_cluster(cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 16\ndevices_per_node: 4\n"
                                               "scale_up_domain: 8\n"))
    assert (pair.devices_per_node, pair.scale_up_domain) == (4, 8)
    for body, match in (("scale_up_domain: 6\n", "whole number of nodes of 4"),
                        ("devices_per_node: 5\n", "whole number of nodes of 5"),
                        ("scale_up_domain: 2\n", "whole number of nodes of 4"),
                        ("scale_up_domian: 64\n", "did you mean 'scale_up_domain'")):
        with pytest.raises(ParplanError, match=match):
            load_cluster(cluster_file(tmp_path, "hardware: gb200-nvl72\ndevices: 144\n" + body))


def test_node_bound_hardware_keeps_its_node_as_the_domain(tmp_path):
    assert load_cluster("h100x64").scale_up_domain == 8
    four = load_cluster(cluster_file(tmp_path, "hardware: a100-80gb\ndevices: 64\ndevices_per_node: 4\n"))
    assert (four.scale_up_domain, four.fast_domain) == (4, 4)
    tpu = load_cluster("tpu-v4x64")
    assert (tpu.devices_per_node, tpu.fast_domain) == (4, 64)
