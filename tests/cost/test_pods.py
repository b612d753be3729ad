"""Pods of full bisection under an oversubscribed layer: the collective cost of groups that span pods."""
import numpy as np
import pytest

from parplan.cost.collectives import collective_time_s, latency_s, place
from parplan.errors import ParplanError
from parplan.specs.cluster import cluster_from_dict, load_cluster

GIB = 2**30


def _clusters(oversubscription=2.0):
    flat = load_cluster("a100x64")
    pods = cluster_from_dict({"hardware": "a100-80gb", "devices": 64, "pod_devices": 32,
                              "oversubscription": oversubscription}, "pods.yaml")
    return flat, pods


def test_a_ring_across_pods_runs_at_the_uplink_share():
    """64 ranks, 8 per node over 8 nodes, 2 pods of 32 under 2:1: the all-reduce's bandwidth term doubles
    (8 NICs per node at half their rate), the latency does not change."""
    flat, pods = _clusters()
    p_flat, p_pods = place(64, 1, flat), place(64, 1, pods)
    assert int(p_pods.per_pod) == 32 and int(p_pods.local) == 8
    size = GIB
    alpha = float(latency_s("all_reduce", p_flat, flat))
    beta_flat = float(collective_time_s("all_reduce", size, p_flat, flat)) - alpha
    beta_pods = float(collective_time_s("all_reduce", size, p_pods, pods)) - alpha
    assert beta_pods == pytest.approx(2 * beta_flat, rel=1e-9)


def test_a_group_inside_one_pod_keeps_the_full_network():
    flat, pods = _clusters()
    for size, stride in ((32, 1), (4, 8), (2, 16)):  # 4 nodes; 4 ranks 8 apart; 2 ranks 16 apart: one pod
        p = place(size, stride, pods)
        assert int(np.max(p.per_pod)) == size
        assert float(collective_time_s("all_gather", GIB, p, pods)) == \
            pytest.approx(float(collective_time_s("all_gather", GIB, place(size, stride, flat), flat)))


def test_all_to_all_over_pods_is_bound_by_the_traffic_that_leaves_the_pod():
    """64 ranks: each sends 56/64 of its buffer off its node at the NIC rate B, 32/64 of it to the other pod
    at B/4 (4:1): the pod-bound part, 32/64 x 4 / B = 2/B, outlasts the NIC part, 0.875/B."""
    flat, pods = _clusters(oversubscription=4.0)
    p = place(64, 1, pods)
    bw = pods.inter_node.effective_bandwidth
    alpha = float(latency_s("all_to_all", p, pods))
    assert float(collective_time_s("all_to_all", GIB, p, pods)) - alpha == pytest.approx(GIB * 0.5 * 4 / bw)
    flat_t = float(collective_time_s("all_to_all", GIB, place(64, 1, flat), flat)) - alpha
    assert flat_t == pytest.approx(GIB * 56 / 64 / bw)


def test_a_pipeline_send_between_pods_runs_at_the_uplink_share():
    flat, pods = _clusters()
    p = place(2, 32, pods)
    assert float(collective_time_s("send_recv", GIB, p, pods)) - float(latency_s("send_recv", p, pods)) == \
        pytest.approx(GIB / (pods.inter_node.effective_bandwidth / 2))


@pytest.mark.parametrize("data,words", [
    ({"pod_devices": 20}, "whole number of nodes of 8 that divides the 64 devices"),
    ({"pod_devices": 24}, "whole number of nodes of 8 that divides the 64 devices (such as 8, 16, 32, 64)"),
    ({"pod_devices": 32, "oversubscription": 0.5}, "between 1 (full bisection) and 64"),
    ({"pod_devices": 8, "hardware": "tpu-v5p", "slice": "4x4x4"}, "TPU"),
    ({"oversubscription": 2.0}, "oversubscription applies above pods: give pod_devices too"),
])
def test_bad_pods_are_one_line(data, words):
    with pytest.raises(ParplanError, match=words.replace("(", r"\(").replace(")", r"\)")):
        cluster_from_dict({"hardware": "a100-80gb", "devices": 64, **data}, "pods.yaml")


def test_the_step_interval_keeps_the_pods():
    """The sensitivity clusters (one profile value moved 15%) are the same pods under the same taper."""
    from parplan.plan.trust import scaled_cluster
    _, pods = _clusters()
    scaled = scaled_cluster(pods, "network bandwidth", 1.15)
    assert (scaled.pod_devices, scaled.oversubscription) == (32, 2.0)
