"""Tensor-parallel collectives run as collective matmuls (Megatron-Core --tp-comm-overlap, torchtitan's async
TP): what they expose, what the GEMMs beside them pay, and what a framework lets a run choose."""
import numpy as np
import pytest

from parplan.cost.contention import copy_exchange_slowdown
from parplan.cost.ops import MATMUL
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.layouts.rules import check_layout
from parplan.specs.cluster import load_cluster
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate


def _pass_links(est):
    """Per layer and pass: the link seconds of the all-gathers and of the reduce-scatters run as collective
    matmuls, and the seconds of the pass's GEMMs."""
    hidden = [c for c in est.collectives if c.collective.hidden_by == "matmul"]
    out = {}
    for phase, which in (("forward", 0), ("backward", 1)):
        links = {op: sum(float(c.time_s) * float(np.asarray(c.collective.count)) for c in hidden
                         if c.collective.phase == phase and c.collective.op == op)
                 for op in ("all_gather", "reduce_scatter")}
        gemm = sum(float(t[which]) for o, t in zip(est.ops, est.op_times) if o.kind == MATMUL)
        out[phase] = (links["all_gather"], links["reduce_scatter"], gemm)
    return out


def _ring_extra(est, cl, backward):
    """What Transformer Engine's ring-exchange all-gathers add to the GEMMs they chunk, per layer and pass:
    forward the column-parallel GEMMs (qkv, MLP up), backward the row-parallel ones' data gradients (half of
    their backward), times the profile's measured bf16 ratio less one."""
    names = ("out_proj", "mlp_down") if backward else ("qkv_proj", "mlp_gate_up")
    gemms = sum(float(t[1]) / 2 if backward else float(t[0]) for o, t in zip(est.ops, est.op_times)
                if o.name in names)
    return (cl.hardware.contention.ring_exchange["all_gather"]["bf16"] - 1) * gemms


def test_megatron_core_exposes_what_the_reduce_scatters_sms_cost_the_gemms():
    """Llama 3.1 70B at TP 8 on one H100 node: each pass's TP traffic (about 0.7 ms) fits in 7/8 of its GEMMs
    (2.5 ms forward), so what shows is the forward reduce-scatters' last chunk of 4 (Transformer Engine's
    pipelined reduce-scatter) and the GEMMs' slowdown beside its reduce-scatter kernels on 16 SMs (the
    profile's measured GEMM slowdown at 16/132 SMs held, scale-up link); the all-gathers' copy-engine
    transfers cost what the profile measured beside copies (nothing where it measured none):
    exposed = F + E + (L_rs - F) s / (1 + s) + L_ag c / (1 + c) per pass, F = L_rs / 4 forward, 0 backward,
    E what the ring exchange adds to the GEMMs the all-gathers feed (the profile's measured ratio)."""
    model, cl = load_model("llama3.1-70b"), load_cluster("h100x8")
    lay = check_layout(Layout(tp=8, dp=1, sp=True, global_batch=8, seq_len=8192), model, cl)
    sw = resolve_software(load_framework("megatron-core"), tp_overlap="collective-matmul")
    plain = estimate(model, cl, lay, software=resolve_software(load_framework("megatron-core")))
    est = estimate(model, cl, lay, software=sw)
    s, c = _gemm_slowdown(cl, 16), float(copy_exchange_slowdown(cl.hardware))
    assert 0.2 < s < 0.3
    exposed = 0.0
    for phase, (ag, rs, gemm) in _pass_links(est).items():
        assert ag + rs < gemm * 7 / 8  # the window holds the traffic
        tail = rs / 4 if phase == "forward" else 0.0
        extra = _ring_extra(est, cl, phase == "backward")
        assert 0 < extra < 0.1 * gemm
        exposed += max(ag + rs - gemm * 7 / 8 + extra / 8,
                       tail + extra + (rs - tail) * s / (1 + s) + ag * c / (1 + c))
    layers_mb = model.layers * 8  # 8 micro-batches of one sequence (global batch 8, dp 1)
    hidden = [c for c in est.collectives if c.collective.hidden_by == "matmul"]
    assert sum(float(c.exposed_s) for c in hidden) == pytest.approx(exposed * layers_mb, rel=1e-9)
    assert float(est.step_time_s) < float(plain.step_time_s)
    assert float(est.breakdown_s["tp_comm"]) < 0.25 * float(plain.breakdown_s["tp_comm"])


def test_traffic_longer_than_the_window_shows_beyond_it():
    """A small model at TP 8 (Llama 3.2 1B, 2048 hidden, 4096 tokens): the forward's traffic (0.25 ms)
    outlasts 7/8 of its GEMMs (0.12 ms), so L - 7/8 W shows; the backward's GEMMs are twice as long, and
    there what the exchange kernels slow them by is the larger term."""
    model, cl = load_model("llama3.2-1b"), load_cluster("h100x8")
    lay = check_layout(Layout(tp=8, dp=1, sp=True, global_batch=8, seq_len=4096), model, cl)
    est = estimate(model, cl, lay, software=resolve_software(load_framework("megatron-core"),
                                                             tp_overlap="collective-matmul"))
    s, c = _gemm_slowdown(cl, 16), float(copy_exchange_slowdown(cl.hardware))
    (ag_f, rs_f, gemm_f), (ag_b, rs_b, gemm_b) = _pass_links(est).values()
    e_f, e_b = _ring_extra(est, cl, False), _ring_extra(est, cl, True)
    floor_f = rs_f / 4 + e_f + rs_f * 3 / 4 * s / (1 + s) + ag_f * c / (1 + c)
    floor_b = rs_b * s / (1 + s) + e_b + ag_b * c / (1 + c)
    assert ag_f + rs_f - gemm_f * 7 / 8 + e_f / 8 > floor_f
    assert ag_b + rs_b - gemm_b * 7 / 8 + e_b / 8 < floor_b
    exposed = ag_f + rs_f - gemm_f * 7 / 8 + e_f / 8 + floor_b
    hidden = [c for c in est.collectives if c.collective.hidden_by == "matmul"]
    assert sum(float(c.exposed_s) for c in hidden) == pytest.approx(exposed * model.layers * 8, rel=1e-9)


def _gemm_slowdown(cl, sms):
    """The profile's measured GEMM slowdown beside a kernel holding ``sms`` SMs and streaming HBM."""
    c = cl.hardware.contention
    return float(np.interp(sms / cl.hardware.compute_units, (0.0,) + c.sm_fraction,
                           (0.0,) + c.slowdown["scale_up"]["gemm"]))


def test_one_rank_and_no_overlap_expose_as_before():
    """--tp-overlap none keeps every sequence-parallel collective on the critical path, at the step time the
    framework's default gives; at tp 1 there is nothing to overlap and collective-matmul changes nothing."""
    model, cl = load_model("llama3.1-8b"), load_cluster("h100x8")
    lay = check_layout(Layout(tp=4, dp=2, sp=True, global_batch=8, seq_len=4096), model, cl)
    none = resolve_software(load_framework("megatron-core"), tp_overlap="none")
    est = estimate(model, cl, lay, software=none)
    assert not [c for c in est.collectives if c.collective.hidden_by == "matmul"]
    assert float(est.step_time_s) == float(estimate(model, cl, lay).step_time_s)
    on = resolve_software(load_framework("megatron-core"), tp_overlap="collective-matmul")
    assert float(estimate(model, cl, lay, software=on).step_time_s) < float(est.step_time_s)
    one = check_layout(Layout(tp=1, dp=8, global_batch=8, seq_len=4096), model, cl)
    assert float(estimate(model, cl, one, software=on).step_time_s) == \
        float(estimate(model, cl, one, software=none).step_time_s)


def test_groups_beyond_the_node_and_moe_blocks_stay_exposed():
    """TP 16 over two 8-GPU nodes: the peer copies of userbuffers and symmetric memory reach no other node, so
    the overlap changes nothing. An MoE block's gather and scatter are its dispatcher's, no linear layer's:
    in an all-MoE model (Qwen3-30B-A3B) half of each layer's sequence-parallel collectives stay exposed."""
    on = resolve_software(load_framework("megatron-core"), tp_overlap="collective-matmul")
    off = resolve_software(load_framework("megatron-core"))
    model, cl = load_model("llama3.1-70b"), load_cluster("h100x16")
    lay = check_layout(Layout(tp=16, dp=1, sp=True, global_batch=16, seq_len=8192), model, cl)
    assert float(estimate(model, cl, lay, software=on).step_time_s) == \
        pytest.approx(float(estimate(model, cl, lay, software=off).step_time_s), rel=1e-12)
    moe = load_model("qwen3-30b-a3b")
    lay = check_layout(Layout(tp=4, dp=2, sp=True, global_batch=8, seq_len=4096, axes=(("ep", 2), ("etp", 1))),
                       moe, load_cluster("h100x8"))
    est = estimate(moe, load_cluster("h100x8"), lay, software=on)
    count = {c.collective.name: float(np.asarray(c.collective.count)) for c in est.collectives}
    assert count["sp_ag_fwd"] == pytest.approx(1.0) and count["sp_ag_moe_forward"] == pytest.approx(1.0)
    assert next(c for c in est.collectives if c.collective.name == "sp_rs_moe_backward").collective.hidden_by == "none"


def test_what_a_framework_lets_a_run_choose():
    with pytest.raises(ParplanError, match="overlaps none; not 'collective-matmul'"):
        resolve_software(load_framework("pytorch"), tp_overlap="collective-matmul")
    with pytest.raises(ParplanError, match="only compiled: add --compile"):
        resolve_software(load_framework("torchtitan"), tp_overlap="collective-matmul", compiled=False)
    sw = resolve_software(load_framework("torchtitan"), tp_overlap="collective-matmul", compiled=True)
    assert sw.tp_overlap == "collective-matmul" and "TP collective-matmul" in sw.describe()
    assert resolve_software(load_framework("megatron-core")).tp_overlap == "none"
    # Megatron-LM refuses --tp-comm-overlap without --sequence-parallel, and so does the layout check.
    model, cl = load_model("llama3.1-8b"), load_cluster("h100x8")
    sw = resolve_software(load_framework("megatron-core"), tp_overlap="collective-matmul")
    with pytest.raises(ParplanError, match="needs --sp"):
        check_layout(Layout(tp=4, dp=2, sp=False, global_batch=8), model, cl, sw)
    check_layout(Layout(tp=1, dp=8, global_batch=8), model, cl, sw)  # nothing to overlap at tp 1: allowed


@pytest.mark.parametrize("block,message", [
    ("tp_overlap_sms: {all_gathr: 2}", "all_gather"),
    ("tp_overlap_sms: {reduce_scatter: -1}", "reduce_scatter"),
    ("tp_overlap_sms: {reduce_scatter: 2.5}", "reduce_scatter"),
    ("tp_overlap: collective-matmul\n  tp_overlaps: [none]", "not one of its tp_overlaps"),
    ("tp_overlaps: [none, windowed]", "windowed"),
    ("tp_overlap_compiled: maybe", "true or false"),
    ("tp_overlap_ring: [all_gather, ring]", "takes all_gather, reduce_scatter; got 'ring'"),
])
def test_bad_tp_overlap_fields_are_one_line(tmp_path, block, message):
    from pathlib import Path

    text = Path(load_framework("megatron-core").path).read_text()
    text = text.replace("name: megatron-core", "name: mc-bad").replace("  tp_overlap: none\n", "") \
        .replace("  tp_overlaps: [none, collective-matmul]\n", "") \
        .replace("  tp_overlap_ring: [all_gather]\n", "") \
        .replace("  tp_overlap_sms: {all_gather: 0, reduce_scatter: 16}\n", f"  {block}\n")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("aliases:"))
    path = tmp_path / "mc-bad.yaml"
    path.write_text(text)
    with pytest.raises(ParplanError, match=message) as info:
        load_framework(str(path))
    assert "\n" not in str(info.value)


def test_torchtitans_async_tp_leaves_the_backward_reduce_scatters_exposed():
    """PyTorch's micro-pipeline pass fuses no backward reduce-scatter (its input is a sum of matmuls): under
    torchtitan's async TP those stay on the critical path, every other sequence-parallel collective hides."""
    model, cl = load_model("llama3.1-70b"), load_cluster("h100x8")
    lay = check_layout(Layout(tp=8, dp=1, sp=True, global_batch=8, seq_len=8192), model, cl)
    sw = resolve_software(load_framework("torchtitan"), compiled=True, tp_overlap="collective-matmul")
    est = estimate(model, cl, lay, software=sw)
    by_name = {c.collective.name: c for c in est.collectives}
    assert by_name["sp_rs_bwd"].collective.hidden_by == "none"
    assert float(by_name["sp_rs_bwd"].exposed_s) == pytest.approx(float(by_name["sp_rs_bwd"].link_s))
    assert {n for n, c in by_name.items() if c.collective.hidden_by == "matmul"} >= {"sp_ag_fwd", "sp_rs_fwd",
                                                                                       "sp_ag_bwd"}


def test_a_copy_engine_exchange_costs_what_its_hbm_share_does():
    """A profile that measured GEMMs beside paced copies prices the all-gather side's copy-engine exchange at
    its share of the copy rate: 2 x 370 GB/s of NVLink over 0.9 x 3.35 TB/s on an H100, 0.245."""
    from dataclasses import replace

    from parplan.specs.hardware import load_hardware

    hw = load_hardware("h100-sxm")
    assert float(copy_exchange_slowdown(hw)) == 0.0  # measured nowhere yet: priced as none
    hw = replace(hw, contention=replace(hw.contention, copy_slowdown=((0.125, 0.5), (0.02, 0.10))))
    share = 2 * hw.intra_node.bandwidth * hw.intra_node.efficiency / (hw.hbm_bandwidth * hw.hbm_efficiency)
    assert 0.2 < share < 0.3
    assert float(copy_exchange_slowdown(hw)) == pytest.approx(0.02 + (share - 0.125) / 0.375 * 0.08)


@pytest.mark.parametrize("block,message", [
    ("copy_slowdown: {copy_share: [0.5, 0.25], gemm: [0.1, 0.2]}", "increasing"),
    ("copy_slowdown: {copy_share: [0.25, 0.5], gemm: [0.1]}", "one per copy_share"),
    ("copy_slowdown: {copy_shares: [0.25, 0.5], gemm: [0.1, 0.2]}", "copy_share"),
    ("ring_exchange: {all_gather: {bf16: 0.9, fp8: 1.0}, reduce_scatter: {bf16: 1.0, fp8: 1.0}}", "1 or more"),
    ("ring_exchange: {all_gather: {bf16: 1.1}, reduce_scatter: {bf16: 1.0, fp8: 1.0}}", "fp8"),
    ("ring_exchange: {all_gathr: {bf16: 1.1, fp8: 1.0}}", "all_gather"),
])
def test_bad_copy_and_ring_costs_are_one_line(block, message):
    import yaml

    from parplan.specs.contention import contention_from_dict

    data = {"collective_sms": {"scale_up": 24, "network": 16}, "sm_fraction": [0.1, 0.2],
            "slowdown": {link: {op: [0.1, 0.2] for op in ("gemm", "attention", "memory")}
                         for link in ("scale_up", "network")}}
    data.update(yaml.safe_load(block))
    with pytest.raises(ParplanError, match=message) as info:
        contention_from_dict(data, "h100.yaml: overlap")
    assert "\n" not in str(info.value)


def test_a_ring_exchange_costs_its_gemms_the_measured_ratio():
    """torchtitan runs both collectives as ring exchanges (PyTorch's fused all-gather-matmul and matmul-
    reduce-scatter), Megatron-Core only the all-gathers: by hand, from the per-op times, what the
    profile's ratios add per layer and pass; a profile that measured none adds nothing."""
    from dataclasses import replace

    from parplan.step.overlap import chunked_gemm_s, ring_extra_s

    model, cl = load_model("llama3.1-70b"), load_cluster("h100x8")
    lay = check_layout(Layout(tp=8, dp=1, sp=True, global_batch=8, seq_len=8192), model, cl)
    est = estimate(model, cl, lay, software=resolve_software(load_framework("megatron-core"),
                                                             tp_overlap="collective-matmul"))
    chunked = chunked_gemm_s(est.ops, est.op_times)
    by_name = {o.name: t for o, t in zip(est.ops, est.op_times)}
    assert float(chunked[("all_gather", False)][0]) == pytest.approx(
        float(by_name["qkv_proj"][0] + by_name["mlp_gate_up"][0]))
    assert float(chunked[("reduce_scatter", True)][0]) == pytest.approx(
        float(by_name["qkv_proj"][1] + by_name["mlp_gate_up"][1]) / 2)
    assert chunked[("all_gather", False)][1] == 0.0  # bf16: no FP8 GEMM
    ratio = cl.hardware.contention.ring_exchange
    mcore = load_framework("megatron-core").parallelism.tp_overlap
    titan = load_framework("torchtitan").parallelism.tp_overlap
    assert mcore.ring == ("all_gather",) and set(titan.ring) == {"all_gather", "reduce_scatter"}
    rs_fwd = float(by_name["out_proj"][0] + by_name["mlp_down"][0])
    assert float(ring_extra_s(cl.hardware, titan, chunked, "reduce_scatter", False)) == pytest.approx(
        (ratio["reduce_scatter"]["bf16"] - 1) * rs_fwd)
    assert float(ring_extra_s(cl.hardware, mcore, chunked, "reduce_scatter", False)) == 0.0
    bare = replace(cl.hardware, contention=replace(cl.hardware.contention, ring_exchange=None))
    assert float(ring_extra_s(bare, titan, chunked, "all_gather", False)) == 0.0


def test_a_ring_beyond_the_node_adds_nothing_and_a_reduce_scatter_ring_comes_after_its_chunks():
    """A TP group spanning nodes runs no ring (its collectives stay exposed), so the measured ratio changes
    nothing there; inside a node, torchtitan's reduce-scatter ring adds its whole cost after the chunks
    (the sum of the partials waits for the last exchange), so the step grows by at least that much."""
    from dataclasses import replace

    from parplan.specs.cluster import make_cluster
    from parplan.step.overlap import chunked_gemm_s, ring_extra_s

    model = load_model("llama3.1-70b")
    titan = resolve_software(load_framework("torchtitan"), compiled=True, tp_overlap="collective-matmul")
    cross = load_cluster("h100x16")
    bare_hw = replace(cross.hardware, contention=replace(cross.hardware.contention, ring_exchange=None))
    lay = check_layout(Layout(tp=16, dp=1, sp=True, global_batch=8, seq_len=8192), model, cross)
    bare = make_cluster(bare_hw, 16)
    assert float(estimate(model, cross, lay, software=titan).step_time_s) == \
        pytest.approx(float(estimate(model, bare, lay, software=titan).step_time_s), rel=1e-12)
    node = load_cluster("h100x8")
    lay8 = check_layout(Layout(tp=8, dp=1, sp=True, global_batch=8, seq_len=8192), model, node)
    est = estimate(model, node, lay8, software=titan)
    without = estimate(model, make_cluster(replace(node.hardware, contention=replace(
        node.hardware.contention, ring_exchange=None)), 8), lay8, software=titan)
    rs = float(ring_extra_s(node.hardware, titan.framework.parallelism.tp_overlap,
                            chunked_gemm_s(est.ops, est.op_times), "reduce_scatter", False))
    per_step = rs * model.layers * 8  # forward reduce-scatters, 8 micro-batches
    assert rs > 0 and float(est.step_time_s) - float(without.step_time_s) >= per_step * (1 - 1e-9)
