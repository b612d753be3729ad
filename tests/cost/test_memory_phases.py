"""Peak memory by phase: gradients freed between steps, the loss's backward, eager autocast's fp32 tensors."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import software

from parplan.cost.elementwise import loss_memory_bytes_per_logit
from parplan.cost.memory import layer_activation_bytes
from parplan.cost.ops import LocalDims
from parplan.layouts.layout import Layout
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model
from parplan.step.peak_memory import STEP_STATES, freed_gradients_at_peak
from parplan.step.train import estimate


def test_freed_gradients_add_only_what_exceeds_the_activations():
    """Peak = states + max(activations and the like, gradients): the gradients add max(G - rest, 0)."""
    mem = {"weights": 4.0, "optimizer": 8.0, "gradients": 4.0, "activations": 10.0, "logits": 2.0}
    assert float(freed_gradients_at_peak(mem, 1, 1)) == 0.0
    assert float(freed_gradients_at_peak({**mem, "activations": 1.0, "logits": 0.0}, 1, 1)) == 3.0
    assert float(freed_gradients_at_peak(mem, 2, 1)) == 4.0   # accumulation: they exist beside micro-batch 2
    assert float(freed_gradients_at_peak(mem, 1, 2)) == 4.0   # a pipeline: beside the in-flight micro-batches
    assert np.allclose(freed_gradients_at_peak(mem, np.array([1, 4]), 1), [0.0, 4.0])


def test_one_micro_batch_step_peaks_at_states_plus_the_larger_phase():
    """Mistral 7B, one H200, compiled torchtitan, batch 1 x 2048: fp32 weights 4 + Adam 8 bytes per
    parameter and the larger of the forward's tensors and the gradients (4 per parameter). Megatron keeps
    its gradient buffer: the plain sum."""
    m, cl = load_model("mistral-7b"), load_cluster("h200x1")
    lay = Layout(global_batch=1, micro_batch=1, seq_len=2048)
    mem = {k: float(v) for k, v in estimate(m, cl, lay, software=software("torchtitan", compiled=True)).memory_bytes
           .items()}
    n = m.total_params()
    rest = sum(v for k, v in mem.items() if k not in STEP_STATES + ("total",))
    assert mem["total"] == pytest.approx(4 * n + 8 * n + max(rest, 4 * n))
    kept = estimate(m, cl, lay, software=software("megatron-core")).memory_bytes
    assert float(kept["total"]) == pytest.approx(sum(float(v) for k, v in kept.items() if k != "total"))
    assert float(kept["gradients"]) == pytest.approx(2 * n)


def test_loss_peak_bytes_per_logit():
    """At the start of the loss's backward: eager fp32 holds the log-softmax output, its gradient and the
    input gradient (3 x 4 bytes); a fused kernel its 16-bit logits and their 16-bit gradient (2 x 2); in an
    fp32 run the fp32 tensors stay 12 bytes and the fused kernel's two become 4 bytes each."""
    assert loss_memory_bytes_per_logit("eager-fp32", 2) == 12 and loss_memory_bytes_per_logit("fused", 2) == 4
    assert loss_memory_bytes_per_logit("vocab-parallel", 2) == 6
    assert loss_memory_bytes_per_logit("eager-fp32", 4) == 12 and loss_memory_bytes_per_logit("fused", 4) == 8


def test_eager_autocast_keeps_fp32_norm_inputs_and_one_cast_per_projection():
    """Per token, Llama-style: two norms keep fp32 inputs (+2 bytes each over 16 bits) and q, k, v and the
    gate and up projections cast the fp32 norm outputs once each (+3 more 16-bit copies of h)."""
    m = load_model("llama3.2-1b")
    d = LocalDims(batch=1, seq=1024, seq_kv=1024, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                  head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1)
    eager = {op: "eager" for op in ("norm", "rope", "activation", "residual")}
    args = (m, d, "bf16", True, False, "none", eager)
    plain = float(layer_activation_bytes(*args))
    assert float(layer_activation_bytes(*args, False, True, "separate")) - plain == pytest.approx(
        1024 * m.hidden * (2 * 2 + 3 * 2))
    assert float(layer_activation_bytes(*args, False, True, "fused")) - plain == pytest.approx(1024 * m.hidden * 4)
    compiled = {op: "fused" for op in eager}  # compiled: the casts are one, the measured block matches 16 bits
    assert float(layer_activation_bytes(m, d, "bf16", True, False, "none", compiled, False, True, "separate")) == \
        pytest.approx(float(layer_activation_bytes(m, d, "bf16", True, False, "none", compiled)))


def test_compiled_torchao_keeps_fp8_inputs_and_eager_keeps_16_bits():
    """torchao's autograd function saves its high-precision input; the compiled partitioner the FP8 cast."""
    m, cl = load_model("llama3.2-1b"), load_cluster("h100x1")

    def acts(dtype, **choices):
        lay = Layout(global_batch=2, micro_batch=2, seq_len=8192, dtype=dtype)
        sw = software("torchtitan", dtype=dtype, **choices)
        return float(estimate(m, cl, lay, software=sw).memory_bytes["activations"])

    assert acts("fp8", compiled=True, fp8_recipe="tensorwise") < acts("bf16", compiled=True)
    assert acts("fp8", compiled=False, fp8_recipe="tensorwise") == pytest.approx(acts("bf16", compiled=False))


def test_save_dots_keeps_the_input_and_every_weight_matmuls_output():
    """MaxText's remat_policy minimal, per token (16-bit): the layer input h, q/k/v (q + 2 kv), the two
    output projections' results (h each) and the MLP's up and gate outputs (2 ffn for SwiGLU); its
    recompute FLOPs are the attention core's, as selective's."""
    from parplan.cost.flops import recompute_flops_per_step

    m = load_model("llama3.1-8b")
    s = 2048
    d = LocalDims(batch=1, seq=s, seq_kv=s, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                  head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1)
    want = s * 2 * (m.hidden + m.heads * m.head_dim + 2 * m.kv_heads * m.head_dim + 2 * m.hidden + 2 * m.ffn_hidden)
    assert float(layer_activation_bytes(m, d, "bf16", True, False, "save-dots")) == pytest.approx(want)
    assert float(recompute_flops_per_step(m, s, 4, "save-dots")) == pytest.approx(
        float(recompute_flops_per_step(m, s, 4, "selective")))


def test_gradient_accumulation_without_a_pipeline_holds_one_micro_batch():
    """GPipe holds every micro-batch of its pipeline; with no pipeline each backward runs before the next
    forward, so accumulating eight micro-batches holds one."""
    from parplan.cost.memory import inflight_microbatches

    assert float(inflight_microbatches(1, 1, 8, "gpipe")) == 1.0
    assert float(inflight_microbatches(4, 1, 8, "gpipe")) == 8.0
    assert np.allclose(inflight_microbatches(np.array([1, 2]), 1, 8, "gpipe"), [1.0, 8.0])


def test_fp32_runs_cast_no_weights():
    """Autocast's 16-bit weight copies and fp32 residual terms exist only when the run computes in 16 bits."""
    m, cl = load_model("llama3.2-1b"), load_cluster("h100x1")
    mem = {dt: estimate(m, cl, Layout(global_batch=1, seq_len=2048, dtype=dt),
                        software=software("pytorch", dtype=dt)).memory_bytes for dt in ("bf16", "fp32")}
    assert float(mem["bf16"]["weight_copies"]) > 0 and "weight_copies" not in mem["fp32"]


def test_save_dots_is_refused_on_moe_models():
    from parplan.errors import ParplanError

    with pytest.raises(ParplanError, match="save-dots"):
        estimate(load_model("mixtral-8x7b"), load_cluster("tpu-v5px64"),
                 Layout(dp=64, zero=3, global_batch=64, seq_len=4096, recompute="save-dots"),
                 software=software("jax"))


def test_fp8_linears_take_no_autocast_weight_copies():
    """torchao's Float8Linear casts its fp32 weight straight to FP8 and saves the parameter itself, so
    autocast keeps 16-bit copies of the other weights only: Llama 3.2 1B's embedding table (tied to the LM
    head) and its norms, 2 bytes each, against every parameter in bf16."""
    m, cl = load_model("llama3.2-1b"), load_cluster("h100x1")
    lay = dict(global_batch=1, seq_len=2048)
    bf16 = estimate(m, cl, Layout(dtype="bf16", **lay), software=software("torchtitan", dtype="bf16")).memory_bytes
    fp8 = estimate(m, cl, Layout(dtype="fp8", **lay), software=software("torchtitan", dtype="fp8")).memory_bytes
    n = m.total_params()
    linears = m.layers * (m.hidden * (m.heads + 2 * m.kv_heads) * m.head_dim + m.heads * m.head_dim * m.hidden
                          + 3 * m.hidden * m.ffn_hidden)
    assert float(bf16["weight_copies"]) == pytest.approx(2 * n)
    assert float(fp8["weight_copies"]) == pytest.approx(2 * (n - linears), rel=1e-3)


def test_a_wrapper_that_casts_every_weight_keeps_every_copy_and_bf16_experts_keep_theirs():
    """llm-foundry's FSDP1 mixed precision casts the flat parameters to bf16 before Transformer Engine's FP8
    linears see them, so its copies stay whole; torchtitan's float8 converter leaves an MoE's routed experts in
    bf16 (fp8.experts false), so their copies stay while the attention and router linears' go."""
    cl = load_cluster("h100x1")
    m = load_model("llama3.2-1b")
    lay = dict(global_batch=1, seq_len=2048)
    foundry = {dt: estimate(m, cl, Layout(dtype=dt, **lay), software=software("llm-foundry", dtype=dt)).memory_bytes
               for dt in ("bf16", "fp8")}
    assert float(foundry["fp8"]["weight_copies"]) == pytest.approx(float(foundry["bf16"]["weight_copies"]))
    moe = load_model("qwen3-30b-a3b")
    assert moe.moe_layers == moe.layers
    mem = estimate(moe, cl, Layout(dtype="fp8", **lay), software=software("torchtitan", dtype="fp8")).memory_bytes
    routed = moe.layers * moe.expert_params()
    outside = moe.total_params() - moe.layers * moe.moe_layer_params()  # embedding and LM head
    assert float(mem["weight_copies"]) == pytest.approx(2 * (outside + routed), rel=1e-3)
