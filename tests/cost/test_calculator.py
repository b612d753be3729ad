"""The calculator against hand-derivable cases and the primary sources' formulas."""
from dataclasses import replace

import numpy as np
import pytest

from tests.helpers import software

import parplan
from parplan.step.train import estimate
from parplan.cost.flops import model_flops_per_step
from parplan.specs.cluster import load_cluster
from parplan.specs.hardware import load_hardware
from parplan.layouts.layout import Layout
from parplan.cost.memory import layer_activation_bytes
from parplan.specs.model_loader import load_model
from parplan.specs.model import model_from_dict
from parplan.cost.ops import LocalDims, layer_ops, total
from parplan.cost.roofline import matmul_efficiency


def one_matmul_model(E):
    return model_from_dict({"name": "toy", "layers": 1, "hidden": E, "heads": 1, "ffn_hidden": E,
                            "activation": "relu", "vocab": 8, "seq_len": 1, "bias": False}, "toy")


def test_fsdp_interconnect_intensity_equals_per_device_batch():
    """FSDP on a model of E x E bf16 matmuls: forward GEMM FLOPs over the bytes the forward all-gather moves
    is the batch per device in tokens (brief, section 4), computed from the estimator's own op list and
    its fsdp_allgather_fwd collective."""
    E, layers = 4096, 4
    m = model_from_dict({"name": "toy", "layers": layers, "hidden": E, "heads": 1, "ffn_hidden": E,
                         "activation": "relu", "vocab": 8, "seq_len": 1, "bias": False, "position": "none"}, "toy")
    for tokens in (64, 1024, 8192):
        est = estimate(m, load_cluster("h100x8"), Layout(dp=8, zero=3, micro_batch=tokens, global_batch=8 * tokens,
                                                           seq_len=1))
        gemm_flops = sum(float(o.fwd_flops) for o in est.ops if o.kind == "matmul")
        gather = {c.collective.name: c for c in est.collectives}["fsdp_allgather_fwd"]
        assert float(gather.collective.count) == layers  # FSDP gathers layer by layer
        per_layer_bytes = float(gather.collective.size_bytes)
        assert gemm_flops / per_layer_bytes == pytest.approx(tokens, rel=0.01)


def _dims(tokens, E):
    return LocalDims(batch=1, seq=tokens, seq_kv=tokens, hidden=E, heads=1, kv_heads=1, head_dim=E, ffn=E,
                     vocab=8, norm_shard=1)


def test_fsdp_threshold_is_c_over_w_for_each_profile():
    """Per-device batch above which FSDP hides its gathers = peak FLOP/s over link bytes/s."""
    from parplan.specs.hardware import hardware_names

    for name in hardware_names():
        hw = load_hardware(name)
        dtype = "bf16" if hw.peak_flops.get("bf16") else "fp16"
        r = hw.ratios(dtype)
        assert r["flops_per_intra_node_byte"] == pytest.approx(hw.peak(dtype) / hw.intra_node.bandwidth)
        assert r["flops_per_inter_node_byte"] == pytest.approx(hw.peak(dtype) / hw.inter_node.bandwidth)
        # The network is the slower link, so hiding FSDP across nodes needs the larger batch per device.
        assert r["flops_per_inter_node_byte"] > r["flops_per_intra_node_byte"], name
    # H100 over NVLink at 450 GB/s per direction: ~2200 (scaling book, "GPUs").
    assert load_hardware("h100").ratios()["flops_per_intra_node_byte"] == pytest.approx(2199, rel=0.01)


def test_megatron_tp_does_two_allreduces_per_layer_each_way():
    m = load_model("gpt3")
    est = estimate(m, load_cluster("a100x8"), Layout(tp=8, micro_batch=1, global_batch=1))
    calls = {c.collective.name: float(c.calls_per_step) for c in est.collectives}
    assert calls["tp_allreduce_fwd"] == 2 * 96 == 192
    assert calls["tp_allreduce_bwd"] == 192
    assert calls["tp_allreduce_recompute"] == 0
    full = estimate(m, load_cluster("a100x8"), Layout(tp=8, micro_batch=1, global_batch=1, recompute="full"))
    assert {c.collective.name: float(c.calls_per_step) for c in full.collectives}["tp_allreduce_recompute"] == 192


def test_sequence_parallel_moves_the_same_bytes_but_shards_activations():
    m, cl = load_model("gpt3"), load_cluster("a100x8")
    plain = estimate(m, cl, Layout(tp=8, global_batch=1))
    sp = estimate(m, cl, Layout(tp=8, global_batch=1, sp=True))

    def wire_bytes(est):  # bytes each rank moves per step: buffer x nccl bus factor x calls
        from parplan.cost.collectives import bus_factor
        return sum(float(c.collective.size_bytes) * bus_factor(c.collective.op, 8) * float(c.calls_per_step)
                   for c in est.collectives if c.collective.axis == "tp")
    assert wire_bytes(sp) == pytest.approx(wire_bytes(plain))
    assert float(sp.memory_bytes["activations"]) < float(plain.memory_bytes["activations"])


def test_flops_match_narayanan_and_korthikanti():
    """Forward per layer 24 b s h^2 + 4 b s^2 h; model FLOPs 72 B L s h^2 (1 + s/6h + V/12hL)."""
    m = load_model("gpt3")
    h, s, L, V, B = m.hidden, m.seq_len, m.layers, m.vocab, 64
    d = LocalDims(batch=1, seq=s, seq_kv=s, hidden=h, heads=m.heads, kv_heads=m.kv_heads, head_dim=m.head_dim,
                  ffn=m.ffn_hidden, vocab=V, norm_shard=1, causal=False)
    assert total(layer_ops(m, d, "bf16", flash_attention=False), "fwd_flops") == 24 * s * h * h + 4 * s * s * h
    expected = 72 * B * L * s * h * h * (1 + s / (6 * h) + V / (12 * h * L))
    assert float(model_flops_per_step(m, s, B)) == pytest.approx(expected, rel=1e-12)


def test_activation_memory_matches_korthikanti():
    """s b h (10 + 24/t + 5 a s/(h t)) without SP; s b h/t (34 + 5 a s/h) with SP; 34 s b h / t selective+SP."""
    m = load_model("gpt3")
    s, b, h, a = m.seq_len, 1, m.hidden, m.heads
    for t in (1, 2, 8):
        for sp in (False, True):
            d = LocalDims(batch=b, seq=s, seq_kv=s, hidden=h, heads=a / t, kv_heads=a / t, head_dim=m.head_dim,
                          ffn=m.ffn_hidden / t, vocab=m.vocab / t, norm_shard=t if sp else 1)
            got = float(layer_activation_bytes(m, d, "fp16", False, True, "none"))
            want = s * b * h * (34 + 5 * a * s / h) / t if sp else s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
            assert got == pytest.approx(want)
            if sp:
                assert float(layer_activation_bytes(m, d, "fp16", False, True, "selective")) == pytest.approx(
                    34 * s * b * h / t)
    d = LocalDims(batch=b, seq=s, seq_kv=s, hidden=h, heads=a, kv_heads=a, head_dim=m.head_dim,
                  ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1)
    assert float(layer_activation_bytes(m, d, "fp16", False, True, "full")) == 2 * s * b * h
    assert float(layer_activation_bytes(m, d, "fp16", True, True, "none")) < \
        float(layer_activation_bytes(m, d, "fp16", False, True, "none")) - 4 * a * s * s * b


def test_model_state_bytes_per_parameter():
    """Mixed-precision Adam: 2 (weights) + 4 (fp32 grads) + 12 (optimizer) = 18 bytes/param unsharded
    (Megatron-LM with --bf16); fp32 parameters under autocast (torchtitan, plain PyTorch): 4 + 4 + 8, plus
    the 16-bit weight copies autocast keeps for the backward."""
    m = load_model("gpt3-1.3b")
    n = m.total_params()
    mem = estimate(m, load_cluster("a100x1"), Layout(global_batch=1), software=software("megatron-lm")).memory_bytes
    assert (float(mem["weights"]), float(mem["gradients"]), float(mem["optimizer"])) == \
        pytest.approx((2 * n, 4 * n, 12 * n))
    # Two micro-batches: the gradients PyTorch frees between steps live beside the second one's activations.
    mem = estimate(m, load_cluster("a100x1"), Layout(global_batch=2), software=software("pytorch")).memory_bytes
    assert (float(mem["weights"]), float(mem["gradients"]), float(mem["optimizer"])) == \
        pytest.approx((4 * n, 4 * n, 8 * n))
    assert float(mem["weight_copies"]) == pytest.approx(2 * n)
    # NeMo's launch scripts reduce and keep gradients in bf16 (grad_sync_dtype=bf16): 2 bytes.
    mem = estimate(m, load_cluster("a100x1"), Layout(global_batch=1), software=software("megatron-core")).memory_bytes
    assert float(mem["gradients"]) == pytest.approx(2 * n)


def test_tiny_matmul_runs_below_the_efficiency_of_a_huge_one():
    hw = load_hardware("a100")
    big = float(matmul_efficiency(hw, 8192, 8192, 8192))
    small = float(matmul_efficiency(hw, 256, 256, 256))
    assert big == pytest.approx(hw.matmul_efficiency * 8192 / (8192 + 128), rel=0.02)
    assert small < 0.1 * big  # 4 output tiles on 108 SMs, and a short k-loop
    rate = lambda m, k, n: 2 * m * k * n / parplan.matmul_time_s("a100", m, k, n)
    assert rate(64, 8192, 64) < 0.1 * rate(8192, 8192, 8192)  # thin: memory-bound
    t_big = parplan.matmul_time_s("a100", 8192, 8192, 8192)
    assert t_big == pytest.approx(2 * 8192 ** 3 / (312e12 * big) + hw.kernel_overhead_s, rel=1e-6)
    # A decode-like GEMV is memory-bound: time ~ bytes / bandwidth.
    t_gemv = parplan.matmul_time_s("a100", 1, 8192, 8192)
    bytes_moved = (8192 * 8192 + 2 * 8192) * 2
    assert t_gemv == pytest.approx(bytes_moved / (hw.hbm_bandwidth * hw.hbm_efficiency) + hw.kernel_overhead_s)


def test_estimate_broadcasts_over_candidate_arrays():
    """The same estimator evaluates many layouts at once (what the search relies on)."""
    m, cl = load_model("gpt3"), load_cluster("a100x64")
    scalar = [float(estimate(m, cl, Layout(tp=8, pp=8, micro_batch=mb, global_batch=64, recompute="full"))
                    .step_time_s) for mb in (1, 2, 4)]
    arr = estimate(m, cl, Layout(tp=8, pp=8, micro_batch=np.array([1, 2, 4]), global_batch=64,
                                 recompute="full", seq_len=2048), check=False).step_time_s
    assert np.allclose(arr, scalar, rtol=1e-9)


def test_gpt3_on_64_a100_within_15_percent_of_korthikanti():
    """Korthikanti et al. 2022 Table 5: GPT-3 175B, TP 8 x PP 8, full recompute: 18.13 s per iteration."""
    est = estimate(load_model("gpt3"), load_cluster("a100x64"),
                   Layout(tp=8, pp=8, dp=1, micro_batch=1, global_batch=64, recompute="full", vpp=3, dtype="fp16"),
                   software=software("megatron-lm", dtype="fp16"))
    assert abs(float(est.step_time_s) - 18.13) / 18.13 < 0.15
    br = {k: float(v) for k, v in est.breakdown_s.items()}
    assert sum(br.values()) == pytest.approx(float(est.step_time_s), rel=1e-9)
    assert br["bubble"] > 0 and br["tp_comm"] > 0 and br["recompute"] > 0


def test_unfused_layer_adds_the_2019_passes_and_nothing_else():
    """Megatron-LM 2019's eager layer: per forward, 3 extra passes over the b a s^2 scores (scale, mask
    multiply, mask subtract), bias adds and q/k/v/context transposes; the FLOPs do not change."""
    m = load_model("gpt2-2.5b")
    t, b, s = 2, 8, m.seq_len
    d = LocalDims(batch=b, seq=s, seq_kv=s, hidden=m.hidden, heads=m.heads // t, kv_heads=m.kv_heads // t,
                  head_dim=m.head_dim, ffn=m.ffn_hidden // t, vocab=m.vocab // t, norm_shard=1)
    fused = layer_ops(m, d, "fp16", flash_attention=False)
    unfused = layer_ops(m, d, "fp16", flash_attention=False, fused=False)
    assert total(unfused, "fwd_flops") == total(fused, "fwd_flops")
    ops = {o.name: o for o in unfused}
    scores = b * (m.heads // t) * s * s
    assert ops["scale_mask"].fwd_bytes == 6 * scores * 2 and ops["scale_mask"].bwd_bytes == 4 * scores * 2
    qkv = b * s * 3 * m.hidden // t
    assert ops["qkv_bias_transpose"].fwd_bytes == 4 * qkv * 2  # bias add + transposing copy
    # Backward: the bias gradient's read, copies of the q and v gradients, their concatenation.
    assert ops["qkv_bias_transpose"].bwd_bytes == pytest.approx((1 + 4 / 3 + 2) * qkv * 2)
    assert ops["context_transpose"].fwd_bytes == 2 * b * s * m.hidden // t * 2
    row = b * s * m.hidden
    assert ops["mlp_residual_adds"].fwd_bytes == 5 * row * 2  # bias add (r, w) + residual add (r, r, w)
    assert ops["mlp_bias_add"].fwd_bytes == 2 * b * s * m.ffn_hidden // t * 2
    # Nothing else: each residual's separate bias and residual adds cost 4 passes over what the fused
    # bias-dropout-add kernel reads and writes; the GeLU's own bytes are those of the fused kernel.
    extra = total(unfused, "fwd_bytes") - total(fused, "fwd_bytes")
    assert extra == (6 * scores + 4 * qkv + 2 * b * s * m.hidden // t + 2 * b * s * m.ffn_hidden // t
                     + 2 * 4 * row) * 2
    assert all(o.streaming for o in unfused if o.name in ("scale_mask", "qkv_bias_transpose", "context_transpose"))
    assert not any(o.streaming for o in fused)
    # A bias-free model (Llama) has no bias passes: its unfused flash layer differs only in the SwiGLU.
    ll = load_model("llama3.1-8b")
    dl = LocalDims(batch=1, seq=4096, seq_kv=4096, hidden=ll.hidden, heads=ll.heads, kv_heads=ll.kv_heads,
                   head_dim=ll.head_dim, ffn=ll.ffn_hidden, vocab=ll.vocab, norm_shard=1)
    plain = {o.name: o for o in layer_ops(ll, dl, "bf16", dropout=False)}
    eager = {o.name: o for o in layer_ops(ll, dl, "bf16", dropout=False, fused=False)}
    assert set(eager) - set(plain) == {"attn_residual_adds", "mlp_residual_adds", "context_transpose"}
    assert "qkv_bias_transpose" not in eager
    # Residual add: read two, write one; backward, the residual stream's two gradients summed.
    assert eager["mlp_residual_adds"].fwd_bytes == 3 * 4096 * ll.hidden * 2
    assert eager["mlp_residual_adds"].bwd_bytes == 3 * 4096 * ll.hidden * 2
    # SwiGLU eager: silu (read, write) then the product (read two, write one): 10 bytes per element.
    assert eager["swiglu"].fwd_bytes == 10 * 4096 * ll.ffn_hidden
    # RMSNorm eager: 36 bytes per element forward (the upcast, square, mean, scale, downcast, weight).
    assert eager["input_norm"].fwd_bytes == 36 * 4096 * ll.hidden and plain["input_norm"].fwd_bytes == 4 * 4096 * ll.hidden
    # RoPE eager on q and k: 20 bytes per element against a fused kernel's read and write.
    rot = 4096 * (ll.heads + ll.kv_heads) * ll.head_dim
    assert eager["rope"].fwd_bytes == 20 * rot and plain["rope"].fwd_bytes == 4 * rot


def test_unfused_kernels_slow_the_step_most_where_scores_are_large():
    """The score passes scale with b a s^2 / t and the rest with b s h: they cost a 2.5B GPT-2 (TP2, h=1920)
    over 1.5 times what they cost the 8.3B (TP8, h=3072)."""
    cl = load_cluster("v100x128")
    slow = {}
    for name, tp in (("gpt2-2.5b", 2), ("gpt2-8.3b", 8)):
        m = load_model(name)
        lay = Layout(tp=tp, dp=128 // tp, micro_batch=8, recompute="full", dtype="fp16")
        base = float(estimate(m, cl, lay, software=software("megatron-lm")).step_time_s)
        slow[name] = float(estimate(m, cl, lay, software=software("megatron-lm", fused_kernels=False))
                           .step_time_s) / base - 1
    assert slow["gpt2-2.5b"] > 1.5 * slow["gpt2-8.3b"] > 0.04


def test_alignment_bytes_of_rows():
    """A row's byte length, up to 16: 5120 bf16 elements are 16-byte aligned, GPT-3 13B's 5140 only 8."""
    from parplan.cost.roofline import alignment_bytes
    assert alignment_bytes(5120, 2) == 16 and alignment_bytes(5140, 2) == 8
    assert alignment_bytes(5122, 2) == 4 and alignment_bytes(5121, 2) == 2 and alignment_bytes(5121, 4) == 4
    assert list(alignment_bytes(np.array([5128, 5124, 5120 / 2]), 2)) == [16, 8, 16]


def test_misaligned_gemms_run_at_the_measured_fraction():
    """GEMMs whose feature sizes are not 16-byte multiples run at the profile's measured fraction;
    the token count never matters, and a profile that measured nothing charges nothing."""
    from parplan.cost.kernels import op_times
    from parplan.cost.ops import Op, MATMUL
    from parplan.cost.roofline import misalignment_fraction
    h200 = load_hardware("h200")
    table = h200.matmul_misaligned
    assert misalignment_fraction(h200, (5120, 20480), "bf16") == 1.0
    assert misalignment_fraction(h200, (5140, 15360), "bf16") == table[8]
    assert misalignment_fraction(h200, (5121, 8), "bf16") == table[2]
    assert misalignment_fraction(h200, (5121, 8), "fp8") == table[2]  # 1 byte: the finest measured
    assert misalignment_fraction(load_hardware("a100-80gb"), (5140, 15360), "bf16") == 1.0

    def gemm(m, k, n):
        return Op("g", MATMUL, 0, 0, 0, 0, (m, k, n, 1))
    aligned = replace(h200, matmul_misaligned={})
    for m in (4096, 4095):  # tokens: an odd count costs nothing extra
        slow, fast = op_times(h200, gemm(m, 5140, 20560), "bf16"), op_times(aligned, gemm(m, 5140, 20560), "bf16")
        over = h200.kernel_overhead_s
        for s, f in zip(slow, fast):
            n_kernels = 1 if s is slow[0] else 2
            assert (s - n_kernels * over) == pytest.approx((f - n_kernels * over) / table[8], rel=1e-9)
    # The same GEMM on 5136-wide rows (16-byte aligned) is not penalized.
    assert op_times(h200, gemm(4096, 5136, 20544), "bf16")[0] == op_times(aligned, gemm(4096, 5136, 20544), "bf16")[0]


def test_gpt3_13b_as_printed_runs_slower_than_at_5120_on_hopper_only():
    """d_model 5140 (Brown et al. Table 2.1) puts every weight GEMM on 8-byte rows: on H200 the layer
    is ~2.5x slower than a 5120-wide one; on A100, whose profile measured nothing, it is not."""
    m = load_model("gpt3-13b")
    m5120 = replace(m, hidden=5120, ffn_hidden=20480)
    lay = Layout(micro_batch=1, global_batch=1)
    ratio = {}
    for hw in ("h200x1", "a100-80gbx1"):
        c = load_cluster(hw)
        ratio[hw] = estimate(m, c, lay).layer_forward_s / estimate(m5120, c, lay).layer_forward_s
    assert 2.0 < ratio["h200x1"] < 2.8
    assert 1.0 < ratio["a100-80gbx1"] < 1.10  # the FLOPs (+0.8%) and a partial last tile column


def test_vocabulary_is_padded_as_megatron_pads_it():
    """Megatron pads the vocabulary to a multiple of 128 x tp: GPT-2's 50257 is 50304 at tp=1 and 51200
    at tp=8 (6400 rows per rank); the logits GEMM runs on the padded shard."""
    from parplan.specs.model import vocab_shard
    assert vocab_shard(50257, 1) == 50304 and vocab_shard(50257, 8) == 6400
    assert vocab_shard(50304, 1) == 50304 and vocab_shard(32000, 2) == 16000
    assert vocab_shard(50257, 4, multiple=64) == 12608  # vLLM pads to 64
    from parplan.layouts.strategies.tensor import TensorParallel1D
    m = load_model("gpt3-125m")
    assert TensorParallel1D().local_dims({}, m, Layout(tp=4, micro_batch=1, global_batch=1))["vocab"] == 12672


def test_non_causal_attention_computes_every_score():
    """A causal kernel computes half the s^2 scores (4 b a s^2 d / 2 forward); ``causal: false`` all of them."""
    m = load_model("llama3.1-8b")
    bidirectional = model_from_dict({"name": "enc", "layers": m.layers, "hidden": m.hidden, "heads": m.heads,
                                     "kv_heads": m.kv_heads, "ffn_hidden": m.ffn_hidden, "activation": "swiglu",
                                     "vocab": m.vocab, "seq_len": 4096, "norm": "rmsnorm", "position": "rope",
                                     "causal": False}, "enc")
    assert m.causal and not bidirectional.causal
    lay, cl = Layout(global_batch=1, seq_len=4096), load_cluster("h100x1")

    def flash_flops(model):
        ops = estimate(model, cl, lay, software=software("megatron-core")).ops
        return next(float(o.fwd_flops) for o in ops if o.name == "flash_attention")

    assert flash_flops(m) == pytest.approx(4 * 4096 * 4096 * m.heads * m.head_dim / 2)
    assert flash_flops(bidirectional) == pytest.approx(2 * flash_flops(m))
    est = estimate(bidirectional, cl, lay, software=software("megatron-core"))
    assert float(est.mfu_causal) == pytest.approx(float(est.mfu))  # the kernel runs every score
