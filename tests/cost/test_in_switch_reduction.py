"""A cluster file's ``in_switch_reduction: false``: all-reduce inside a node without NVLink SHARP.

Hand-derived on the shipped H100 SXM profile (hardware/h100-sxm.yaml): 8 GPUs of one node, a
1 GiB all-reduce. Ring latency: collective_overhead_s + 2 (n - 1) x latency_s = 8.4 us + 14 x 1.9 us
= 35.0 us. Ring: 35 us + 2^30 x 2 x 7/8 / (450 GB/s x 0.822) = 5.1147 ms. In-switch (NVLS):
35 us + 2^30 / (450 GB/s x 0.61) = 3.9466 ms.
"""
import pytest

from parplan.cost.collectives import collective_time_s, place
from parplan.errors import ParplanError
from parplan.specs.cluster import load_cluster

GIB = 2**30
ALPHA_S = 8.4e-6 + 2 * 7 * 1.9e-6
RING_S = ALPHA_S + GIB * 2 * 7 / 8 / (450e9 * 0.822)
NVLS_S = ALPHA_S + GIB / (450e9 * 0.61)


def _cluster_file(tmp_path, body: str) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(body)
    return str(path)


def test_eight_gpu_all_reduce_with_and_without_in_switch_reduction(tmp_path):
    on = load_cluster(_cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\n"))
    off = load_cluster(_cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\nin_switch_reduction: false\n"))
    assert on.intra_node.in_switch_reduction and not off.intra_node.in_switch_reduction
    assert RING_S == pytest.approx(5.1147e-3, rel=1e-4) and NVLS_S == pytest.approx(3.9466e-3, rel=1e-4)
    assert float(collective_time_s("all_reduce", GIB, place(8, 1, on), on)) == pytest.approx(NVLS_S, rel=1e-9)
    assert float(collective_time_s("all_reduce", GIB, place(8, 1, off), off)) == pytest.approx(RING_S, rel=1e-9)
    # The key touches only all-reduce: an all-gather is the same ring either way.
    for cl in (on, off):
        ag = ALPHA_S - 7 * 1.9e-6 + GIB * 7 / 8 / (450e9 * 0.822)
        assert float(collective_time_s("all_gather", GIB, place(8, 1, cl), cl)) == pytest.approx(ag, rel=1e-9)


def test_two_gpus_take_the_ring_either_way(tmp_path):
    """Over 2 GPUs the ring (bus factor 1) beats NVLS's 0.61 of line rate: the key changes nothing."""
    on = load_cluster(_cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\n"))
    off = load_cluster(_cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\nin_switch_reduction: false\n"))
    ring = 8.4e-6 + 2 * 1.9e-6 + GIB / (450e9 * 0.822)
    for cl in (on, off):
        assert float(collective_time_s("all_reduce", GIB, place(2, 1, cl), cl)) == pytest.approx(ring, rel=1e-9)


def test_in_switch_reduction_key_is_checked(tmp_path):
    with pytest.raises(ParplanError, match="true or false"):
        load_cluster(_cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\nin_switch_reduction: maybe\n"))
    with pytest.raises(ParplanError, match="no in-switch reduction"):
        load_cluster(_cluster_file(tmp_path, "hardware: a100-80gb\ndevices: 8\nin_switch_reduction: true\n"))
    with pytest.raises(ParplanError, match="did you mean 'in_switch_reduction'"):
        load_cluster(_cluster_file(tmp_path, "hardware: h100-sxm\ndevices: 8\nin_switch_reductions: false\n"))
    # false on a switch that has none is allowed and changes nothing.
    a100 = load_cluster(_cluster_file(tmp_path, "hardware: a100-80gb\ndevices: 8\nin_switch_reduction: false\n"))
    assert not a100.intra_node.in_switch_reduction
