"""Parallel attention + MLP blocks (PaLM Sec. 2, GPT-J) against the sequential block they rewrite."""
from dataclasses import replace

import numpy as np
import pytest

from parplan.cost.flops import model_flops_per_step
from parplan.cost.memory import layer_activation_bytes
from parplan.cost.ops import LocalDims, layer_ops, total
from parplan.layouts.layout import Layout
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate

SEQ = load_model("llama3.1-8b")
PAR = replace(SEQ, parallel_layers=True, name="llama3.1-8b-parallel")


def dims(model, tp=1):
    return LocalDims(batch=2, seq=4096, seq_kv=4096, hidden=model.hidden, heads=model.heads / tp,
                     kv_heads=model.kv_heads / tp, head_dim=model.head_dim, ffn=model.ffn_hidden / tp,
                     vocab=model.vocab / tp, norm_shard=1)


def test_one_norm_fewer_per_layer():
    assert SEQ.layer_params() - PAR.layer_params() == SEQ.norm_params()


def test_fused_input_projection_keeps_the_flops_and_reads_the_input_once():
    seq_ops, par_ops = layer_ops(SEQ, dims(SEQ)), layer_ops(PAR, dims(PAR))
    by = {o.name: o for o in seq_ops}
    fused = next(o for o in par_ops if o.name == "qkv_mlp_proj")
    assert float(fused.fwd_flops) == pytest.approx(float(by["qkv_proj"].fwd_flops + by["mlp_gate_up"].fwd_flops))
    rows, h = 2 * 4096, SEQ.hidden
    assert float(fused.fwd_bytes) == pytest.approx(float(by["qkv_proj"].fwd_bytes + by["mlp_gate_up"].fwd_bytes)
                                                   - rows * h * 2)
    assert float(total(par_ops, "fwd_flops")) == pytest.approx(float(total(seq_ops, "fwd_flops")))
    names = [o.name for o in par_ops]
    assert "post_attn_norm" not in names and "attn_residual" not in names and "mlp_residual" in names
    assert model_flops_per_step(PAR, 4096, 8) == pytest.approx(model_flops_per_step(SEQ, 4096, 8), rel=1e-9)


def test_activations_keep_one_norm_input_and_one_shared_projection_input():
    d = dims(SEQ)
    outside = 2 * 4096 * SEQ.hidden
    saved = layer_activation_bytes(SEQ, d, "bf16", True, False, "none") - \
        layer_activation_bytes(PAR, d, "bf16", True, False, "none")
    assert float(saved) == pytest.approx(outside * (2 + 2))


def test_tensor_parallel_all_reduces_halve():
    cl = load_cluster("h100x8")
    lay = Layout(tp=8, global_batch=8)
    counts = {}
    for m in (SEQ, PAR):
        est = estimate(m, cl, lay)
        c = next(c for c in est.collectives if c.collective.name == "tp_allreduce_fwd")
        ends = next(c for c in est.collectives if c.collective.name == "tp_embedding_allreduce")
        counts[m.parallel_layers] = (float(np.asarray(c.collective.count)), float(np.asarray(ends.collective.count)))
    assert counts == {False: (2.0, 1.0), True: (1.0, 1.0)}
