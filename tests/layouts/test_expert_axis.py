"""The expert axes: all-to-all bytes, expert state divisors, load imbalance, the MoE block's kernels, and the
dense path left exactly as it was."""
import numpy as np
import pytest

import parplan
from parplan.cost import moe as moe_mod
from parplan.cost import ops as ops_mod
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.model import model_from_dict
from parplan.step.serve import estimate_inference
from parplan.step.serve_layout import ServeLayout

# A Mixtral-like model small enough to count by hand: top-2 of 8 experts, hidden 1024, expert width 2048.
TOY = {"name": "toy-moe", "layers": 8, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn_hidden": 2048,
       "activation": "swiglu", "vocab": 32000, "seq_len": 2048, "norm": "rmsnorm", "position": "rope",
       "bias": False, "tied_embeddings": False, "experts": 8, "top_k": 2}


def _toy(**kw):
    return model_from_dict(dict(TOY, **kw), "toy")


def _est(model, cluster, **kw):
    kw.setdefault("global_batch", 16)
    return parplan.estimate(model, parplan.load_cluster(cluster), Layout(seq_len=2048, **kw))


def _calls(est, name):
    return [c for c in est.collectives if c.collective.name == name]


def test_dispatch_all_to_all_bytes_for_top2_of_8_experts_on_ep8():
    """Each device sends its micro-batch's b*s tokens k=2 times, hidden 1024 elements of 2 bytes each: the
    nccl-tests buffer of one call is 1*2048*2*1024*2 bytes; 4 calls per MoE layer (dispatch and combine, forward
    and backward), every layer MoE, once per micro-batch."""
    est = _est(_toy(), "h100x8", dp=8, micro_batch=1, axes=(("ep", 8), ("etp", 1)))
    for name in ("ep_dispatch_forward", "ep_combine_forward", "ep_dispatch_backward", "ep_combine_backward"):
        (c,) = _calls(est, name)
        assert float(c.collective.size_bytes) == 2048 * 2 * 1024 * 2
        assert int(c.collective.group) == 8 and c.collective.op == "all_to_all"
        assert float(c.calls_per_step) == 8 * est.layout.micro_batches
    assert float(_calls(est, "ep_dispatch_recompute")[0].calls_per_step) == 0
    assert float(est.breakdown_s["ep_comm"]) > 0


def test_no_all_to_all_without_expert_parallelism_and_tp_shrinks_the_buffer():
    one = _est(_toy(), "h100x8", dp=8, micro_batch=1)
    assert float(one.breakdown_s["ep_comm"]) == 0 and one.layout.size("ep") == 1  # check_layout named ep=1
    tp2 = _est(_toy(), "h100x8", tp=2, dp=4, sp=True, micro_batch=1, axes=(("ep", 4), ("etp", 1)))
    (c,) = _calls(tp2, "ep_dispatch_forward")
    assert float(c.collective.size_bytes) == 2048 / 2 * 2 * 1024 * 2  # each TP rank routes its sequence shard


def test_expert_states_are_divided_by_ep_and_the_dense_ones_are_not():
    """Weights in bf16 (2 B/param) without ZeRO: the dense part whole on every device, the experts / ep."""
    m = _toy()
    experts = m.layers * m.expert_params()
    dense = m.total_params() - experts
    for ep in (1, 2, 8):
        est = _est(m, "h100x8", dp=8, micro_batch=1, axes=(("ep", ep), ("etp", 1)))
        assert float(est.memory_bytes["weights"]) == pytest.approx(2 * (dense + experts / ep))
    # ZeRO-1 shards the optimizer state of both over all 8 ranks (12 B/param).
    z1 = _est(m, "h100x8", dp=8, zero=1, micro_batch=1, axes=(("ep", 8), ("etp", 1)))
    assert float(z1.memory_bytes["optimizer"]) == pytest.approx(12 * m.total_params() / 8)


def test_expert_gradients_reduce_over_the_expert_data_parallel_group():
    est = _est(_toy(), "h100x16", dp=16, micro_batch=1, axes=(("ep", 8), ("etp", 1)))
    (dense,) = _calls(est, "dp_grad_allreduce")
    (expert,) = _calls(est, "expert_dp_grad_allreduce")
    m = est.model
    assert int(dense.collective.group) == 16 and int(expert.collective.group) == 2
    grad = 2  # megatron-core (NeMo) reduces gradients in the weights' bf16 (grad_dtype: param)
    assert float(expert.collective.size_bytes) == pytest.approx(m.layers * m.expert_params() / 8 * grad)
    assert float(dense.collective.size_bytes) == pytest.approx((m.total_params() - m.layers * m.expert_params())
                                                               * grad)


def test_load_imbalance_capacity_factor_spec_value_or_the_uniform_bound():
    d = ops_mod.LocalDims(batch=1, seq=4096, seq_kv=4096, hidden=1024, heads=8, kv_heads=8, head_dim=128, ffn=2048,
                          vocab=32000, norm_shard=1, moe=moe_mod.MoeParallel(1, 8, 1))
    factor, how = moe_mod.imbalance(_toy(), d)
    assert float(factor) == pytest.approx(1 + np.sqrt(2 * np.log(8) / (4096 * 2)))  # Raab-Steger, 8192 rows
    assert "uniform-routing bound" in how
    assert moe_mod.imbalance(_toy(capacity_factor=1.25), d) == (1.25, "capacity factor 1.25 (tokens dropped)")
    assert moe_mod.imbalance(_toy(router_imbalance=1.1), d)[0] == 1.1
    ep1 = ops_mod.LocalDims(**{**d.__dict__, "moe": moe_mod.MoeParallel(1, 1, 1)})
    assert float(moe_mod.imbalance(_toy(), ep1)[0]) == 1.0
    est = _est(_toy(capacity_factor=1.25), "h100x8", dp=8, micro_batch=1, axes=(("ep", 8), ("etp", 1)))
    assert "capacity factor 1.25" in est.notes[0]


def test_expected_distinct_experts():
    assert moe_mod.distinct_experts(8, 2, 1) == pytest.approx(2)              # batch 1: its top-k
    assert moe_mod.distinct_experts(256, 8, 1) == pytest.approx(8)
    assert moe_mod.distinct_experts(8, 2, 2) == pytest.approx(8 * (1 - 0.75 ** 2))  # 3.5
    grows = moe_mod.distinct_experts(256, 8, np.array([1, 4, 16, 64, 256, 4096]))
    assert np.all(np.diff(grows) > 0) and grows[-1] == pytest.approx(256)


def test_moe_block_flops_equal_k_experts_per_token():
    """Forward FLOPs of the routed experts over a whole unsharded sequence: 2 * tokens * k * 3 * h * F."""
    m = _toy()
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                          ffn=2048, vocab=32000, norm_shard=1)
    ops = {o.name: o for o in ops_mod.layer_ops(m, d)}
    routed = ops["expert_gate_up"].fwd_flops + ops["expert_down"].fwd_flops
    assert float(routed) == pytest.approx(2 * 2048 * 2 * 3 * 1024 * 2048)
    assert "mlp_gate_up" not in ops and ops["router"].fwd_flops == 2 * 2048 * 1024 * 8


def test_dense_and_moe_layers_mix_by_their_share():
    """Maverick: half its layers MoE; the dense MLP's ops and the MoE block's each run in half of them."""
    m = parplan.load_model("llama4-maverick")
    d = ops_mod.LocalDims(batch=1, seq=1024, seq_kv=1024, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                          head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1)
    ops = {o.name: o for o in ops_mod.layer_ops(m, d)}
    assert ops["mlp_gate_up"].share == pytest.approx(0.5) and ops["expert_gate_up"].share == pytest.approx(0.5)


def test_bad_expert_layouts_are_one_line_errors():
    with pytest.raises(ParplanError, match="ep=3 does not divide the 8 routed experts"):
        _est(_toy(), "h100x24", dp=24, global_batch=24, micro_batch=1, axes=(("ep", 3),))
    with pytest.raises(ParplanError, match="dense model"):
        _est(parplan.load_model("llama3.2-1b"), "h100x8", dp=8, micro_batch=1, axes=(("ep", 2),))
    with pytest.raises(ParplanError, match="ep.etp = 16 must divide tp.cp.dp = 8"):
        _est(_toy(), "h100x8", tp=2, dp=4, micro_batch=1, axes=(("ep", 8), ("etp", 2)))
    with pytest.raises(ParplanError, match="runs expert tensor parallel 1 or tp=2, not etp=4"):
        parplan.estimate(_toy(), parplan.load_cluster("h100x8"),
                         Layout(tp=2, dp=4, global_batch=16, seq_len=2048, axes=(("ep", 2), ("etp", 4))),
                         software=parplan_software("torchtitan"))


def parplan_software(name):
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    return resolve_software(load_framework(name))


def _overlapped(mode):
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    return resolve_software(load_framework("megatron-core"), moe_overlap=mode)


def test_shared_expert_overlap_hides_the_all_to_all_under_the_shared_experts():
    m = _toy(shared_experts=2)
    overlap = _overlapped("shared-experts")
    plain = _est(m, "h100x16", dp=16, micro_batch=1, axes=(("ep", 8), ("etp", 1)))
    hidden = parplan.estimate(m, parplan.load_cluster("h100x16"),
                              Layout(dp=16, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1))),
                              software=overlap)
    link = sum(float(c.link_s) for c in hidden.collectives if c.collective.axis == "ep")
    assert float(plain.breakdown_s["ep_comm"]) == pytest.approx(link)
    # The forward's dispatch and the backward's combine each hide under that pass's shared-expert GEMMs.
    shared_f = sum(float(t[0]) for o, t in zip(hidden.ops, hidden.op_times) if o.name.startswith("shared_"))
    shared_b = sum(float(t[1]) for o, t in zip(hidden.ops, hidden.op_times) if o.name.startswith("shared_"))
    per_call = float(_calls(hidden, "ep_dispatch_forward")[0].time_s)
    per_layer = 2 * per_call + max(0.0, per_call - shared_f) + max(0.0, per_call - shared_b)
    calls = m.layers * hidden.layout.micro_batches
    assert float(hidden.breakdown_s["ep_comm"]) == pytest.approx(per_layer * calls)
    assert float(hidden.breakdown_s["ep_comm"]) < float(plain.breakdown_s["ep_comm"])


def test_micro_batch_overlap_hides_the_all_to_alls_of_paired_passes_under_the_other_micro_batch():
    """Without a pipeline and with m micro-batches, m - 1 forward/backward pairs run merged: their
    all-to-alls (L per layer) run under the layer's compute W (forward + backward); here L < W, so a
    paired layer exposes only the compute's slowdown, L s/(1+s), and the one unpaired forward and
    backward expose their all-to-alls whole: (m-1)/m of the calls hidden, 1/m exposed."""
    from parplan.cost.contention import class_seconds, slowdown
    m = _toy()
    cl = parplan.load_cluster("h100x16")
    lay = Layout(dp=16, micro_batch=1, global_batch=64, seq_len=2048, axes=(("ep", 8), ("etp", 1)))
    plain = parplan.estimate(m, cl, lay)
    merged = parplan.estimate(m, cl, lay, software=_overlapped("micro-batch"))
    mbs = merged.layout.micro_batches
    assert mbs == 4
    link = sum(float(c.time_s) * c.collective.count for c in merged.collectives if c.collective.axis == "ep"
               and c.collective.per == "layer" and float(c.calls_per_step) > 0)
    window = sum(float(t[0]) + float(t[1]) for t in merged.op_times)
    assert link < window
    mix = {k: v + w for (k, v), w in zip(class_seconds(merged.ops, merged.op_times, 0).items(),
                                          class_seconds(merged.ops, merged.op_times, 1).values())}
    s = float(slowdown(cl.hardware, "scale_up", mix))
    per_layer = (mbs - 1) / mbs * link * s / (1 + s) + link / mbs
    assert float(merged.breakdown_s["ep_comm"]) == pytest.approx(per_layer * m.layers * mbs, rel=1e-6)
    assert float(merged.breakdown_s["ep_comm"]) < float(plain.breakdown_s["ep_comm"]) / 2
    # Each all-to-all carries its share of the exposure; the compute is the same as without overlap.
    exposed = sum(float(c.exposed_s) for c in merged.collectives if c.collective.axis == "ep"
                  and c.collective.per == "layer")
    assert exposed == pytest.approx(float(merged.breakdown_s["ep_comm"]), rel=1e-6)
    assert float(merged.breakdown_s["compute"]) == pytest.approx(float(plain.breakdown_s["compute"]))


def test_micro_batch_overlap_pairs_fewer_passes_under_a_pipeline():
    """First pipeline rank, interleaved: 2(pp-1) + (vpp-1) pp + 1 chunks of m vpp run alone (the merged schedule
    warms up one more); without a pipeline the first forward and the last backward."""
    from parplan.step.moe_step import paired_share
    assert float(paired_share(Layout(pp=1, vpp=1), 8)) == pytest.approx(7 / 8)
    assert float(paired_share(Layout(pp=4, vpp=2), 16)) == pytest.approx(1 - (6 + 4 + 1) / 32)
    assert float(paired_share(Layout(pp=8, vpp=2), 4)) == 0.0


def test_micro_batch_overlap_needs_what_megatron_core_checks():
    m = _toy()
    cl = parplan.load_cluster("h100x16")
    sw = _overlapped("micro-batch")
    for lay, says in ((Layout(dp=16, global_batch=64, seq_len=2048, axes=(("ep", 1), ("etp", 1))), "ep > 1"),
                      (Layout(dp=16, global_batch=64, seq_len=2048, recompute="full", axes=(("ep", 8), ("etp", 1))),
                       "recompute other than full"),
                      (Layout(dp=8, pp=2, global_batch=64, seq_len=2048, axes=(("ep", 8), ("etp", 1))),
                       "interleaved")):
        with pytest.raises(ParplanError, match=says):
            parplan.estimate(m, cl, lay, software=sw)
    with pytest.raises(ParplanError, match="torchtitan.*micro-batch"):
        from parplan.specs.framework import resolve_software
        from parplan.specs.framework_loader import load_framework
        resolve_software(load_framework("torchtitan"), moe_overlap="micro-batch")


def test_serving_reads_more_experts_as_the_batch_grows_and_mla_caches_the_latent():
    mix = parplan.load_model("mixtral-8x7b")
    cl = parplan.load_cluster("h100x8")

    def gemm_s(b):
        est = estimate_inference(mix, cl, ServeLayout(tp=8, batch=b, input_len=512, output_len=64))
        return sum(float(t) for o, t in est.decode_ops if o.name.startswith("expert_"))
    assert gemm_s(1) < gemm_s(2) < gemm_s(8)
    v3 = parplan.load_model("deepseek-v3")
    est = estimate_inference(v3, parplan.load_cluster("h200x16"),
                             ServeLayout(tp=8, pp=2, batch=4, input_len=1000, output_len=24, dtype="fp8"))
    # ceil(61/2) = 31 layers of (512 + 64) bf16 elements per token, whole on every TP rank.
    assert float(est.kv_cache_bytes) == pytest.approx(4 * 1024 * 31 * 576 * 2)


# Step times, memory and MFU of dense layouts, and serving TTFT, TPOT and memory: the training values as
# the code printed them when mixture-of-experts support landed (after that release's overlap-contention,
# ring-merge and optimizer-rate changes to dense steps, and the per-stage pipeline), serving as the code printed them when the serving
# stacks (vLLM by default) landed, with the launch costs measured since (reports/inference/host-h100-2026-12-06) and
# the H100's own attention, FP8 GEMM and contention measurements (reports/gpu-checks/h100-2026-12-06c); Transformer
# Engine's FP8 weight cache holds the layers' linears only (the embedding and the LM head are not TE modules), and
# causal attention's tiles list-scheduled on the run's own grid (reports/gpu-checks/h100-2026-12-07d).
# Expert support must not move dense predictions; a deliberate change to the dense model updates these.
DENSE_BEFORE = [
    ("llama3.1-8b", "h100x8", dict(tp=2, dp=4, micro_batch=1, global_batch=64, zero=1, sp=True, recompute="selective"),
     (6.759597845572432, 49528322048.0, 0.5674951081554032)),
    ("llama3.1-70b", "h100x64", dict(tp=8, pp=4, dp=2, vpp=5, schedule="interleaved", micro_batch=1, global_batch=128,
                                     zero=1, sp=True), (16.65684608373971, 48582508544.0, 0.478622087471269)),
    ("gpt3-13b", "a100x64", dict(tp=2, dp=32, micro_batch=2, global_batch=512, zero=3, recompute="full"),
     (9.185393610065312, 6634662911.0, 0.4720683153130482)),
    ("llama3.1-8b", "h100x16", dict(tp=1, cp=2, dp=8, micro_batch=1, global_batch=64, cp_mode="ring", dtype="fp8"),
     (2.4064718544437516, 160376094720.0, 0.3984925957429492)),  # FP8 cache: the layers' linears, not the head
    ("mistral-7b", "a100x16", dict(tp=4, pp=2, dp=2, micro_batch=2, global_batch=64),
     (10.010831211150165, 45638746112.0, 0.582757514667606)),
]


@pytest.mark.parametrize("model,cluster,layout,before", DENSE_BEFORE)
def test_dense_training_predictions_are_unchanged(model, cluster, layout, before):
    e = parplan.estimate(parplan.load_model(model), parplan.load_cluster(cluster), Layout(**layout))
    assert (float(e.step_time_s), float(e.memory_bytes["total"]), float(e.mfu)) == pytest.approx(before, rel=1e-9)
    assert not e.notes and float(e.breakdown_s["ep_comm"]) == 0.0


@pytest.mark.parametrize("model,cluster,layout,before", [
    ("llama3.1-70b", "h100x8", dict(tp=8, batch=16, input_len=1024, output_len=256),
     (0.05725767645556057, 0.01678574052441458, 18552324864.0)),
    ("llama3.1-8b", "h100x8", dict(tp=2, pp=2, replicas=2, batch=64, input_len=2048, output_len=128, dtype="fp8"),
     (0.025746449337851016, 0.006205824705455689, 6722220544.0)),
])
def test_dense_serving_predictions_are_unchanged(model, cluster, layout, before):
    e = estimate_inference(parplan.load_model(model), parplan.load_cluster(cluster), ServeLayout(**layout))
    assert (float(e.ttft_s), float(e.tpot_s), float(e.memory_bytes["total"])) == pytest.approx(before, rel=1e-9)


def test_eager_permutes_cost_their_measured_passes():
    """The eager permute and unpermute move EAGER_PASSES times the bytes of the fused pass (the measured
    ratio of scripts/gpu_moe_ops.py); the GEMMs are untouched. torchtitan runs them eager, compiled fused;
    Megatron-Core fused."""
    from parplan.cost.moe import EAGER_PASSES
    m = _toy()
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                          head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1,
                          moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0)
    fused = {k.name: k for k in moe_mod.block_kernels(m, d, 2048, "fused")}
    eager = {k.name: k for k in moe_mod.block_kernels(m, d, 2048, "fused", permute="eager")}
    for name, passes in EAGER_PASSES.items():
        assert [float(x) for x in eager[name].args] == pytest.approx([passes * float(x) for x in fused[name].args])
    assert eager["expert_down"].args == fused["expert_down"].args
    cl = parplan.load_cluster("h100x8")
    lay = Layout(dp=8, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1)))

    def unpermute_bytes(framework, **choices):
        est = parplan.estimate(m, cl, lay, software=_software(framework, **choices))
        return sum(float(o.fwd_bytes) for o in est.ops if o.name == "moe_unpermute")
    fused_bytes = unpermute_bytes("megatron-core")
    assert unpermute_bytes("torchtitan") == pytest.approx(EAGER_PASSES["moe_unpermute"] * fused_bytes)
    assert unpermute_bytes("torchtitan", compiled=True) == pytest.approx(fused_bytes)


def _software(framework, **choices):
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    return resolve_software(load_framework(framework), **choices)


def test_norm_act_recompute_drops_the_norm_outputs_and_the_expert_activation():
    """--recompute norm-act keeps everything but the pre-MLP norm's output (the router's and experts' input,
    tokens x hidden x 2 bytes) and the routed experts' activation output (rows x expert width x 2 bytes), and
    spends that norm's and the activation's forward again; a dense model has nothing for it to drop."""
    from parplan.cost.memory import layer_activation_bytes
    m = _toy()
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                          head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1,
                          moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0)
    none = float(layer_activation_bytes(m, d, "bf16", True, False, "none"))
    norm_act = float(layer_activation_bytes(m, d, "bf16", True, False, "norm-act"))
    rows = 2048 * 2 * float(moe_mod.imbalance(m, d)[0])
    assert none - norm_act == pytest.approx(2048 * 1024 * 2 + rows * 2048 * 2)
    cl = parplan.load_cluster("h100x8")
    base = dict(dp=8, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1)))
    plain, rec = (parplan.estimate(m, cl, Layout(recompute=r, **base)) for r in ("none", "norm-act"))
    again = sum(float(t[0]) for o, t in zip(rec.ops, rec.op_times)
                if o.name in ("post_attn_norm", "expert_activation"))
    assert float(rec.breakdown_s["recompute"]) == pytest.approx(again * m.layers * rec.layout.micro_batches)
    assert float(rec.memory_bytes["activations"]) < float(plain.memory_bytes["activations"])
    with pytest.raises(ParplanError, match="recompute norm-act rebuilds an MoE layer's"):
        parplan.estimate(parplan.load_model("llama3.1-8b"), cl, Layout(dp=8, global_batch=16, recompute="norm-act"))


def test_fp8_saved_inputs_shrink_the_experts_inputs_as_they_shrink_the_dense_linears():
    """Where the linears keep their FP8-cast inputs (Transformer Engine), an MoE layer keeps 1 byte, not 2, of
    the QKV projection's input and the output projection's input (8 heads x 128); where the grouped expert GEMMs
    do too (TE's GroupedLinear, not torchao's), of the experts' routed rows (hidden 1024) and their down
    projections' inputs (width 2048). The pre-MLP norm's output stays 16-bit, as the router reads it; a shared
    expert (width 2048) keeps its first linear's 1-byte cast of it beside, and its down projection's input at
    1 byte. Under norm-act the norm output (2 bytes), the shared cast (1) and the routed down inputs go."""
    from parplan.cost.memory import layer_activation_bytes

    def kept(m, recompute, fp8, experts=False):
        d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                              head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1,
                              moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0)
        return float(layer_activation_bytes(m, d, "bf16", True, False, recompute, fp8_inputs=fp8,
                                            expert_fp8_inputs=experts))

    m = _toy()
    rows = 2048 * 2 * float(moe_mod.imbalance(m, ops_mod.LocalDims(
        batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128, ffn=2048, vocab=32000,
        norm_shard=1, moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0))[0])
    attention = 2048 * 1024 + 2048 * 1024
    assert kept(m, "none", False) - kept(m, "none", True) == pytest.approx(attention)
    assert kept(m, "none", False) - kept(m, "none", True, True) == pytest.approx(attention + rows * (1024 + 2048))
    assert kept(m, "none", True, True) - kept(m, "norm-act", True, True) == pytest.approx(2048 * 1024 * 2 + rows * 2048)
    shared = _toy(shared_experts=1)
    assert kept(shared, "none", True, True) - kept(m, "none", True, True) == pytest.approx(
        2048 * 2048 * (2 * 2 + 1) + 2048 * 1024)
    assert kept(shared, "none", True, True) - kept(shared, "norm-act", True, True) == pytest.approx(
        2048 * 1024 * (2 + 1) + rows * 2048)


def test_fp8_casts_cover_the_routed_experts_and_not_a_dense_mlp():
    """Top-2 of 8 experts, 2048 tokens, fused casts (2 bytes per input, 4 per output gradient and weight):
    the casts are the attention GEMMs' operands plus the experts' 4096 routed rows and all 8 experts' weights."""
    m = _toy()
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                          ffn=2048, vocab=32000, norm_shard=1, moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0)
    ops = {o.name: o for o in ops_mod.layer_ops(m, d, fp8=ops_mod.Fp8(recipe="tensorwise"))}
    inputs = 2048 * 1024 + 2048 * 1024 + 4096 * 1024 + 4096 * 2048          # qkv, out, expert gate/up, down
    grads = 2048 * 3072 + 2048 * 1024 + 4096 * 4096 + 4096 * 1024
    weights = 1024 * 3072 + 1024 * 1024 + 8 * 1024 * 4096 + 8 * 2048 * 1024
    casts = ops["fp8_casts"]
    assert float(casts.fwd_bytes) == pytest.approx(2 * inputs + 4 * weights)
    assert float(casts.bwd_bytes) == pytest.approx(4 * grads)
    assert casts.kernels == (4, 4) and not ops["router"].fp8   # qkv, out, the two grouped expert GEMMs
    # Transformer Engine's current scaling: each input read once more after its producer wrote it in 16 bits
    # (4 bytes), each output gradient and weight with an amax pass first (6 bytes).
    amax = {o.name: o for o in ops_mod.layer_ops(m, d, fp8=ops_mod.Fp8(recipe="tensorwise", casts="amax-fused"))}
    assert float(amax["fp8_casts"].fwd_bytes) == pytest.approx(4 * inputs + 6 * weights)
    assert float(amax["fp8_casts"].bwd_bytes) == pytest.approx(6 * grads)
    assert amax["fp8_casts"].kernels == (4, 8)   # backward: an amax pass, then the cast, for each gradient


@pytest.mark.parametrize("ep,passes", [(1, 0), (4, 4), (8, 0)])
def test_received_rows_are_sorted_by_local_expert_only_with_several_local_experts(ep, passes):
    """Under ep 4 each device holds 2 of the 8 experts and receives 8192 x 2 / 4 = 4096 rows (capacity factor
    1): copied into expert order after the dispatch and back before the combine, 4 passes of 4096 x 1024 each
    way; with one local expert (ep 8) or no dispatch (ep 1) there is nothing to sort."""
    m = _toy(capacity_factor=1.0)
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                          ffn=2048, vocab=32000, norm_shard=1, moe=moe_mod.MoeParallel(1, ep, 1), moe_share=1.0)
    sort = {k.name: k for k in moe_mod.block_kernels(m, d, 2048, "fused", dispatcher="alltoall")}["moe_sort_received"]
    rows = 2048 * max(ep, 1) * 2 / ep
    assert [float(x) for x in sort.args] == pytest.approx([passes * rows * 1024] * 2)
    plain = {k.name for k in moe_mod.block_kernels(m, d, 2048, "fused")}
    assert "moe_sort_received" not in plain


def test_torchtitan_float8_leaves_the_grouped_experts_in_bf16():
    """torchtitan's float8 converter swaps nn.Linear only: the attention and shared-expert linears run in FP8,
    the routed experts' grouped GEMMs in bf16 (so they take no FP8 cast and run at the bf16 rate); Megatron-Core
    runs them in FP8. Same model, layout and recipe otherwise."""
    m = _toy(shared_experts=1)
    cl = parplan.load_cluster("h100x8")

    def ops(framework):
        sw = _software(framework, dtype="fp8", fp8_recipe="tensorwise")
        est = parplan.estimate(m, cl, Layout(dp=8, micro_batch=1, global_batch=16, seq_len=2048, dtype="fp8",
                                             axes=(("ep", 8), ("etp", 1))), software=sw)
        return {o.name: o for o in est.ops}, est

    titan, titan_est = ops("torchtitan")
    core, _ = ops("megatron-core")
    for name in ("expert_gate_up", "expert_down"):
        assert core[name].fp8 and not titan[name].fp8
        assert titan[name].fwd_bytes > core[name].fwd_bytes  # 16-bit operands, not 1-byte ones
    for name in ("qkv_proj", "out_proj", "shared_gate_up", "shared_down"):
        assert titan[name].fp8 and core[name].fp8
    t = dict(zip([o.name for o in titan_est.ops], titan_est.op_times))
    plain = parplan.estimate(m, cl, Layout(dp=8, micro_batch=1, global_batch=16, seq_len=2048, dtype="bf16",
                                           axes=(("ep", 8), ("etp", 1))), software=_software("torchtitan"))
    b = dict(zip([o.name for o in plain.ops], plain.op_times))
    assert float(t["expert_gate_up"][0]) == pytest.approx(float(b["expert_gate_up"][0]))


def test_eager_expert_biases_are_a_gather_and_an_add_per_output():
    """A model with biases under a framework that adds its experts' biases apart (torchtitan's grouped experts):
    per output of R rows x C columns, forward 4 R C elements moved (gather written; add reads two, writes one),
    backward R C (the gather's per-expert sum reads the gradient). By hand for top-2 of 8 experts, 2048 tokens,
    hidden 1024, expert width 512, SwiGLU: R = 4096, C = 2 x 512 + 1024. Fused (Transformer Engine's epilogue),
    compiled, or a model without biases: no such op."""
    m = _toy(bias=True, expert_ffn=512)
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                          ffn=2048, vocab=32000, norm_shard=1, moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0)
    kernels = moe_mod.block_kernels(m, d, 2048, "fused", bias="eager")
    names = [k.name for k in kernels]
    assert names.index("expert_biases") == names.index("expert_down") + 1
    fwd, bwd, family, *launches = kernels[names.index("expert_biases")].args
    rows, cols = 2048 * 2, 2 * 512 + 1024
    assert (fwd, bwd, family, launches) == (4 * rows * cols, rows * cols, "residual", [4, 2])
    assert "expert_biases" not in {k.name for k in moe_mod.block_kernels(m, d, 2048, "fused")}
    assert "expert_biases" not in {k.name for k in moe_mod.block_kernels(_toy(expert_ffn=512), d, 2048, "fused",
                                                                         bias="eager")}
    cl = parplan.load_cluster("h100x8")
    lay = Layout(dp=8, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1)))

    def bias_ops(framework, **choices):
        est = parplan.estimate(m, cl, lay, software=_software(framework, **choices))
        return [o for o in est.ops if o.name == "expert_biases"]
    op, = bias_ops("torchtitan")
    assert op.streaming and op.family == "residual" and op.fwd_bytes == pytest.approx(4 * op.bwd_bytes)
    assert bias_ops("megatron-core") == [] and bias_ops("torchtitan", compiled=True) == []
