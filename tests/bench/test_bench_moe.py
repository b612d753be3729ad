"""The bench's MoE block (router, top-k, sort-based permute, experts, weighted unpermute, shared experts) against
a token-by-token reference, and its rows through ``compare``: an MoE model is timed as one, never as dense."""
import subprocess
import sys

import pytest

from parplan.calibrate.compare import layer_row_ops, layer_spec
from parplan.calibrate.rows import Row
from parplan.cost.flops import layer_forward_flops
from parplan.specs.model_loader import model_from_dict

torch = pytest.importorskip("torch")

TINY = {"name": "tiny-moe", "layers": 3, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn_hidden": 128,
        "activation": "swiglu", "vocab": 100, "seq_len": 16, "norm": "rmsnorm", "position": "rope",
        "bias": False, "experts": 4, "top_k": 2, "expert_ffn": 32}


def _spec(**over):
    return model_from_dict(dict(TINY, **over), "test")


def _reference(block, x):
    """Each token through its top-k experts, weighted by its gate scores, one token at a time."""
    s = block.spec
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = block.router(x[t]).float()
        scores = torch.softmax(logits, -1) if s.router == "softmax" else torch.sigmoid(logits)
        probs, chosen = torch.topk(scores, s.top_k)
        for p, e in zip(probs, chosen):
            u = x[t] @ block.w_up[e] + (0 if block.b_up is None else block.b_up[e])
            gate, up = u.chunk(2)
            y = (torch.nn.functional.silu(gate) * up) @ block.w_down[e]
            y = y + (0 if block.b_down is None else block.b_down[e])
            out[t] += p * y
        if block.shared_up is not None:
            gate, up = block.shared_up(x[t]).chunk(2)
            out[t] += block.shared_down(torch.nn.functional.silu(gate) * up)
    return out


def _grouped_runs_here() -> bool:
    try:
        torch._grouped_mm(torch.ones(4, 16), torch.ones(2, 16, 16), offs=torch.tensor([2, 4], dtype=torch.int32))
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("launch", ["loop", "grouped"])
@pytest.mark.parametrize("over", [{}, {"router": "sigmoid"}, {"shared_experts": 1}, {"experts": 2, "top_k": 2},
                                  {"bias": True, "shared_experts": 1}])
def test_moe_block_matches_a_token_by_token_reference(over, launch):
    from parplan.bench.moe import MoeFeedForward

    if launch == "grouped" and not _grouped_runs_here():
        pytest.skip("torch._grouped_mm does not run on this device")
    torch.manual_seed(0)
    block = MoeFeedForward(_spec(**over), launch)
    with torch.no_grad():   # biases start at zero: give them values the reference must add
        for p in (block.b_up, block.b_down):
            if p is not None:
                p.normal_()
    x = torch.randn(2, 8, 64)
    got = block(x)
    assert got.shape == x.shape
    assert torch.allclose(got.view(-1, 64), _reference(block, x.view(-1, 64)), atol=1e-5)
    got.sum().backward()
    assert block.w_up.grad is not None and block.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bias", [False, True])
def test_bench_models_hold_experts_in_the_moe_layers_only(bias):
    """A spec with a first dense layer: its step model has a dense MLP there and experts after, and exactly the
    parameters parplan counts for the spec (router, experts and shared experts with their biases)."""
    from parplan.bench.model import Transformer, parameter_count

    spec = _spec(moe_first_dense=1, shared_experts=1, bias=bias)
    model = Transformer(spec, 16)
    assert [b.moe is None for b in model.layers] == [True, False, False]
    assert parameter_count(model) == spec.total_params()


def test_layer_row_of_an_moe_model_is_predicted_as_moe():
    """The shape the bench writes for an MoE layer reads back into the same experts, and compare prices the
    experts at tokens x top-k rows over all of them, eager permutes (a hand count for 2 x 8 tokens)."""
    from parplan.bench.layer import shape_text

    spec = _spec(shared_experts=1)
    text = shape_text(spec, 2, 8, "fp32", "loop")
    back, b, s = layer_spec(text, "tiny-moe")
    assert (b, s) == (2, 8)
    assert (back.experts, back.top_k, back.expert_width, back.shared_experts, back.router) == (4, 2, 32, 1, "softmax")
    row = Row(kind="layer", op="forward", dtype="fp32", model="tiny-moe", shape=text, time_s=1e-3)
    ops = {o.name: o for o in layer_row_ops(row)}
    assert "mlp_up" not in ops and {"router", "moe_permute", "expert_down", "shared_down"} <= set(ops)
    up = ops["expert_gate_up"]
    # 16 tokens x 2 copies over 4 experts: 8 rows each, 64 -> 2 x 32, in one launch per expert (a loop).
    assert up.fwd_flops == pytest.approx(2 * 16 * 2 * 64 * 64)
    # (rows per expert: 32 over the experts 16 tokens are expected to touch, 4 (1 - (1/2)^16) of 4)
    assert up.grouped == "" and up.kind == "matmul"
    assert [float(x) for x in up.gemm[:3]] == pytest.approx([32 / (4 * (1 - 0.5 ** 16)), 64, 64])
    grouped = {o.name: o for o in layer_row_ops(Row(kind="layer", op="forward", dtype="fp32", model="m",
                                                       shape=text.replace("=loop", "=grouped"), time_s=1e-3))}
    gate_up = grouped["expert_gate_up"]
    assert gate_up.grouped == "grouped" and float(gate_up.gemm[3]) == pytest.approx(4 * (1 - 0.5 ** 16))
    # The eager permute as the bench runs it: 2.8 fused passes over the 16 tokens and their 32 copies, fp32.
    assert ops["moe_permute"].fwd_bytes == pytest.approx(2.8 * (16 + 32) * 64 * 4)
    assert ops["expert_activation"].streaming and ops["expert_activation"].family
    biased = Row(kind="layer", op="forward", dtype="fp32", model="b", time_s=1e-3,
                 shape=shape_text(_spec(bias=True), 2, 8, "fp32", "loop"))
    assert "expert_biases" in {o.name for o in layer_row_ops(biased)} and "expert_biases" not in ops
    from parplan.errors import ParplanError

    with pytest.raises(ParplanError, match="expert_gemms"):
        layer_row_ops(Row(kind="layer", op="forward", dtype="fp32", model="m", shape=text.replace("=loop", "=bmm"),
                          time_s=1e-3))
    # Parseable but impossible experts are refused as a model spec's are, in one line.
    for bad, why in (("top_k=2", "top_k=9"), ("router=softmax", "router=foo"), ("experts=4", "experts=-4")):
        with pytest.raises(ParplanError):
            layer_spec(text.replace(bad, why), "m")


def test_layer_flops_of_an_moe_model_count_its_moe_layer():
    """Forward matmul FLOPs of one MoE layer of 16 tokens, by hand: q, k, v, o projections, causal attention
    (the ops' convention), router, the routed experts at top-k, no dense MLP."""
    spec = _spec()
    t, h, q, kv, f, e, k = 16, 64, 64, 32, 32, 4, 2
    proj = 2 * t * h * (q + 2 * kv) + 2 * t * q * h
    experts = 2 * t * k * h * (2 * f) + 2 * t * k * f * h
    router = 2 * t * h * e
    dense = model_from_dict({k: v for k, v in TINY.items() if k not in ("experts", "top_k", "expert_ffn")}, "t")
    attention = layer_forward_flops(dense, 1, t) - proj - 2 * t * h * 2 * 128 - 2 * t * 128 * h
    assert layer_forward_flops(spec, 1, t) == pytest.approx(proj + attention + experts + router)


def test_bench_refuses_latent_attention_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "parplan.cli", "bench", "--suite", "layer", "--model",
                           "deepseek-v3", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "multi-head latent attention" in lines[0], proc.stderr


def test_a_layer_row_is_priced_with_the_attention_kernel_it_ran():
    """A layer row records the kernel SDPA chose; compare prices its attention with that kernel's table (on an
    H100, cuDNN's runs faster than FlashAttention-2's at 4096 tokens), every other op alike; a row without one
    takes FlashAttention-2, and SDPA's math path is priced unfused (no flash-attention op)."""
    from parplan.calibrate.compare import predict_layer
    from parplan.cost.kernels import KernelEnv, op_times
    from parplan.specs.hardware import load_hardware
    from parplan.bench.layer import shape_text

    hw = load_hardware("h100-sxm")
    text = shape_text(_spec(hidden=4096, heads=32, kv_heads=8, head_dim=128), 1, 4096, "bf16", "grouped")

    def row(attention):
        return Row(kind="layer", op="backward", dtype="bf16", model="m", shape=text, time_s=1e-3, attention=attention)
    (flash, _), (cudnn, _), (plain, _) = (predict_layer(row(a), hw) for a in ("flash2", "cudnn", ""))
    attn = next(o for o in layer_row_ops(row("cudnn")) if o.attention_core and o.kind == "flash_attention")
    expected = [float(op_times(hw, attn, "bf16", env=KernelEnv(attention=(k,)))[1]) for k in ("flash2", "cudnn")]
    assert cudnn < flash == plain
    assert flash - cudnn == pytest.approx(expected[0] - expected[1], rel=1e-9)
    assert not any(o.kind == "flash_attention" for o in layer_row_ops(row("math")))
