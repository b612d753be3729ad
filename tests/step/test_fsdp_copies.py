"""FSDP2's copy-in/copy-out around each layer's gathers and reduce-scatter, against hand-derived bytes."""
import numpy as np
import pytest

from parplan.layouts.layout import Layout
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model_loader import load_model
from parplan.step.software import _fsdp_copies


def test_fsdp2_copies_move_each_gathered_weight_twice_and_pack_gradients_in_fp32():
    model = load_model("llama3-8b")
    params = model.layer_params()
    # q and o 4096 x 4096, k and v 4096 x 1024 (8 KV heads of 128), three 4096 x 14336 MLP weights, two norms
    assert params == 4096 * (4096 + 2 * 1024 + 4096) + 3 * 4096 * 14336 + 2 * 4096
    sharded = Layout(dp=1, zero=3, micro_batch=1, global_batch=1, seq_len=4096, dtype="bf16")
    op = _fsdp_copies(model, None, sharded, "bf16")
    # forward: the gathered bf16 weights read from the flat buffer and written into each parameter
    assert np.isclose(op.fwd_bytes, 2 * params * 2)
    # backward: the same for the backward's gather, and the bf16 gradients read and written as fp32
    assert np.isclose(op.bwd_bytes, 2 * params * 2 + params * (2 + 4))
    whole = _fsdp_copies(model, None, Layout(dp=1, micro_batch=1, global_batch=1, seq_len=4096), "bf16")
    assert whole.fwd_bytes == 0 and whole.bwd_bytes == 0
    # tensor parallelism divides what each rank copies (the layer's weights are split tp ways)
    tp2 = _fsdp_copies(model, None, Layout(dp=1, tp=2, zero=3, micro_batch=1, global_batch=1, seq_len=4096), "bf16")
    assert np.isclose(tp2.fwd_bytes, params * 2)


def test_only_per_parameter_sharding_under_zero3_adds_the_copies():
    """FSDP2 (torchtitan: per-parameter sharding) copies around its collectives; DeepSpeed's flat buffers and
    an unsharded run do not."""
    from parplan.cost.ops import LocalDims
    from parplan.step.software import layer_ops

    model = load_model("llama3-8b")
    d = LocalDims(batch=1, seq=4096, seq_kv=4096, hidden=model.hidden, heads=model.heads, kv_heads=model.kv_heads,
                  head_dim=model.head_dim, ffn=model.ffn_hidden, vocab=model.vocab, norm_shard=1)

    def copied(framework, zero):
        lay = Layout(dp=8, zero=zero, micro_batch=1, global_batch=8, seq_len=4096, dtype="bf16")
        sw = resolve_software(load_framework(framework), dtype="bf16")
        return sum(float(o.fwd_bytes + o.bwd_bytes) for o in layer_ops(model, d, lay, sw, False, 1)
                   if o.name == "fsdp_copies")

    params = model.layer_params()
    assert copied("torchtitan", 3) == pytest.approx(params * (2 * 2 + 2 * 2 + 2 + 4))
    assert copied("deepspeed", 3) == 0.0
    assert copied("torchtitan", 0) == 0.0
