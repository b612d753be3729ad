"""Layouts on a mesh: ZeRO stages, pipeline bubbles, FSDP x TP, placement and link sharing."""
import numpy as np
import pytest

from tests.helpers import software

from parplan.cost.collectives import bus_factor, collective_time_s, place
from parplan.step.train import estimate
from parplan.specs.cluster import load_cluster
from parplan.layouts.layout import Layout
from parplan.specs.model_loader import load_model
from parplan.layouts.strategies.pipeline import pipeline_time


@pytest.mark.parametrize("zero,per_param", [(0, 2 + 4 + 12), (1, 2 + 4 + 12 / 8), (2, 2 + (4 + 12) / 8),
                                            (3, (2 + 4 + 12) / 8)])
def test_zero_bytes_per_parameter(zero, per_param):
    """ZeRO (Rajbhandari et al. 2019, Fig. 1) with fp32 gradient accumulation, 8-way data parallel
    (a framework with fp32 main gradients under bf16 and all four stages: Colossal-AI's profile)."""
    m = load_model("gpt3-1.3b")
    est = estimate(m, load_cluster("a100x8"), Layout(dp=8, zero=zero, global_batch=8), software=software("colossalai"))
    states = sum(float(est.memory_bytes[k]) for k in ("weights", "gradients", "optimizer"))
    assert states == pytest.approx(per_param * m.total_params(), rel=1e-9)


def test_zero_traffic_per_stage():
    """Bytes each rank moves per step (nccl bus bytes), 8-way DP, 2 micro-batches, N parameters:
    gradients in fp32 (their accumulation precision), weights gathered in bf16.
    stage 0: all-reduce 2(7/8)4N; 1: reduce-scatter (7/8)4N + gather (7/8)2N; 2: the reduce-scatter
    after each micro-batch; 3: per micro-batch a gather forward and backward and a reduce-scatter."""
    m, cl = load_model("gpt3-1.3b"), load_cluster("a100x8")

    def wire(zero, fp32=True):
        # Colossal-AI's profile keeps fp32 gradients under bf16 and 16-bit ones under fp16.
        dtype = "bf16" if fp32 else "fp16"
        est = estimate(m, cl, Layout(dp=8, zero=zero, global_batch=16, dtype=dtype),
                       software=software("colossalai", dtype=dtype))
        return sum(float(c.collective.size_bytes) * bus_factor(c.collective.op, 8) * float(c.calls_per_step)
                   for c in est.collectives if c.collective.axis == "dp")
    n, f = m.total_params(), 7 / 8
    assert wire(0) == pytest.approx(2 * f * 4 * n)
    assert wire(0, fp32=False) == pytest.approx(2 * f * 2 * n)
    assert wire(1) == pytest.approx(f * 4 * n + f * 2 * n)
    assert wire(2) == pytest.approx(2 * f * 4 * n + f * 2 * n)
    assert wire(3) == pytest.approx(2 * f * (2 * n + 2 * n + 4 * n))


def test_bubble_fractions():
    """Eight equal stages of 1 s, 64 micro-batches: the bubble is (p-1)/(v m) of the m t ideal (Narayanan 2021,
    eqs. 1-2)."""
    total, bubble = pipeline_time(1.0, 8.0, 64)
    assert float(bubble) / 64 == pytest.approx(7 / 64) and float(total) == pytest.approx(64 + 7)   # 1F1B
    _, bubble = pipeline_time(1.0, 8.0, 64, vpp=3)
    assert float(bubble) / 64 == pytest.approx(7 / (3 * 64))                                          # interleaved


def test_bubble_in_the_step_breakdown():
    m, cl = load_model("gpt3"), load_cluster("a100x64")
    plain = estimate(m, cl, Layout(tp=8, pp=8, global_batch=64, recompute="full"))
    inter = estimate(m, cl, Layout(tp=8, pp=8, global_batch=64, recompute="full", vpp=3))
    b_plain, b_inter = float(plain.breakdown_s["bubble"]), float(inter.breakdown_s["bubble"])
    assert b_inter == pytest.approx(b_plain / 3, rel=0.05)
    p2p = lambda e: float(e.breakdown_s["pp_comm"])
    assert p2p(inter) > 2.5 * p2p(plain)  # v times the sends


def test_fsdp4_x_tp4_on_16_devices():
    """The brief's mesh: FSDP gathers each TP shard (2 E^2 / 4 bytes per E x E matrix) over 4 ranks 4 apart."""
    m = load_model("gpt3-6.7b")
    cl = load_cluster("h100x16")
    est = estimate(m, cl, Layout(tp=4, dp=4, zero=3, global_batch=4))
    gathers = [c for c in est.collectives if c.collective.name == "fsdp_allgather_fwd"]
    assert len(gathers) == 1
    g = gathers[0].collective
    assert int(g.group) == 4 and int(g.stride) == 4
    stage_params = m.total_params()
    # One gather per layer; together they move every TP shard of the model in bf16.
    assert float(g.count) == m.layers
    assert float(g.size_bytes) * m.layers == pytest.approx(stage_params * 2 / 4)
    # Its TP all-reduces stay inside a node, the FSDP gathers span two nodes (8 GPUs per node).
    assert not bool(place(4, 1, cl).spans_nodes) and bool(place(4, 4, cl).spans_nodes)


def test_placement_strided_versus_contiguous():
    """DP across nodes (stride 8) rides one NIC per rank; a contiguous group of 16 uses all 8 NICs of a node."""
    cl = load_cluster("a100x64")
    strided, contiguous = place(8, 8, cl), place(16, 1, cl)
    assert (int(strided.local), int(strided.nodes)) == (1, 8)
    assert (int(contiguous.local), int(contiguous.nodes)) == (8, 2)
    size = 1e9
    t_strided = float(collective_time_s("all_reduce", size, strided, cl))
    t_contig = float(collective_time_s("all_reduce", size, contiguous, cl))
    assert t_strided > 5 * t_contig
    # Bus bandwidth: the strided ring sees one NIC (25 GB/s x 0.96); the contiguous one 8 NICs, capped by NVLink.
    assert bus_factor("all_reduce", 8) * size / t_strided == pytest.approx(24e9, rel=0.02)


def test_in_switch_reduction_speeds_up_node_all_reduce():
    h100 = load_cluster("h100x8")
    p = place(8, 1, h100)
    ring = 2 * 7 / 8 * 1e9 / h100.intra_node.effective_bandwidth
    assert float(collective_time_s("all_reduce", 1e9, p, h100)) < ring


def test_placement_trades_tp_traffic_against_dp_traffic():
    """Swapping which axis sits inside the node: TP across nodes costs far more than it saves DP."""
    m, cl = load_model("gpt3-6.7b"), load_cluster("a100x64")
    own_links = estimate(m, cl, Layout(tp=8, dp=8, global_batch=64, zero=1))
    shared = estimate(m, cl, Layout(tp=8, dp=8, global_batch=64, zero=1, order=("dp", "cp", "tp", "pp")))

    def dp_link(e):
        return sum(float(c.link_s) for c in e.collectives if c.collective.axis == "dp")
    # With TP across nodes and DP inside a node, DP runs over NVLink and TP over the network: DP is cheaper,
    # but TP becomes far more expensive.
    assert float(shared.breakdown_s["tp_comm"]) > 5 * float(own_links.breakdown_s["tp_comm"])
    assert dp_link(shared) < dp_link(own_links)


def test_context_parallel_allgather_kv():
    """CP all-gathers K and V (2 x kv_heads x head_dim per token) once per layer forward, reduce-scatters backward."""
    m = load_model("llama3.1-8b")
    cl = load_cluster("h100x8")
    est = estimate(m, cl, Layout(cp=8, global_batch=1, seq_len=32768))
    ag = {c.collective.name: c for c in est.collectives}["cp_kv_allgather_fwd"]
    assert float(ag.collective.size_bytes) == pytest.approx(32768 * 2 * m.kv_heads * m.head_dim * 2)
    assert float(ag.calls_per_step) == m.layers
    ring = estimate(m, cl, Layout(cp=8, global_batch=1, seq_len=32768, cp_mode="ring"))
    # Ring attention hides its KV passes behind attention compute at this length.
    assert float(ring.breakdown_s["cp_comm"]) < float(est.breakdown_s["cp_comm"])


def test_axis_summary_reports_bandwidth_to_hide():
    from parplan.views.records import axis_rows

    m, cl = load_model("gpt3-6.7b"), load_cluster("a100x64")
    rows = {r["axis"]: r for r in axis_rows(estimate(m, cl, Layout(tp=8, dp=8, global_batch=64)))}
    assert rows["tp"]["note"] == "critical path" and rows["tp"]["bandwidth_to_hide"] is None
    assert rows["dp"]["bandwidth_to_hide"] > 0
    assert rows["dp"]["exposed_s"] <= rows["dp"]["link_s"]


def test_overlapped_dp_pays_for_pipeline_sends_on_the_same_nics():
    m, cl = load_model("gpt3-6.7b"), load_cluster("a100x64")
    est = estimate(m, cl, Layout(tp=8, pp=2, dp=4, global_batch=64, zero=1))
    rs = {c.collective.name: c for c in est.collectives}["zero_grad_reduce_scatter"]
    alone = float(rs.time_s) * float(rs.calls_per_step)
    assert bool(rs.spans_nodes)
    assert float(rs.link_s) > alone  # the backward's pipeline sends take part of the NICs
    no_pp = estimate(m, load_cluster("a100x32"), Layout(tp=8, dp=4, global_batch=64, zero=1))
    rs1 = {c.collective.name: c for c in no_pp.collectives}["zero_grad_reduce_scatter"]
    assert float(rs1.link_s) == pytest.approx(float(rs1.time_s) * float(rs1.calls_per_step))


def test_bucketed_zero3_pays_ring_latency_per_call():
    """DeepSpeed-style 5e7-parameter gather buckets: many more calls than layers, each paying the ring's
    latency, so the same bytes take longer over a large group than FSDP's one gather per layer."""
    m, cl = load_model("gpt3"), load_cluster("a100x1536")
    lay = Layout(dp=1536, zero=3, global_batch=1536, recompute="full")
    per_layer = estimate(m, cl, lay, software=software("colossalai"))   # one gather per layer
    buckets = estimate(m, cl, lay, software=software("deepspeed"))      # stage3_prefetch_bucket_size 5e7
    g1 = {c.collective.name: c for c in per_layer.collectives}["fsdp_allgather_fwd"]
    g2 = {c.collective.name: c for c in buckets.collectives}["fsdp_allgather_fwd"]
    assert float(g1.calls_per_step) == 96
    assert float(g2.calls_per_step) == pytest.approx(np.ceil(m.total_params() / 5e7), rel=0.01)
    bytes1 = float(g1.collective.size_bytes) * float(g1.calls_per_step)
    assert float(g2.collective.size_bytes) * float(g2.calls_per_step) == pytest.approx(bytes1)
    assert float(g2.link_s) > 5 * float(g1.link_s)
