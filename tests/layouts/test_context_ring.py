"""Ring attention's merge passes: what a ring rank adds to each layer beyond its attention kernels."""
import numpy as np
import pytest

import parplan
from parplan.cost.ops import LocalDims
from parplan.layouts.layout import Layout
from parplan.layouts.strategies.context import ContextParallel


def _dims(seq, heads=32, kv_heads=8, head_dim=128):
    return LocalDims(batch=1, seq=seq, seq_kv=seq * 4, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads,
                     head_dim=head_dim, ffn=14336, vocab=128256, norm_shard=1)


def test_ring_merges_by_hand():
    model = parplan.load_model("llama3.1-8b")
    lay = Layout(cp=4, cp_mode="ring", global_batch=1)
    (op,) = ContextParallel().layer_ops(_dims(8192), model, lay, "bf16")
    rows = 0.75 * 8192  # 3 later steps, each over 3/4 of the 8192 local rows on average
    q, kv = rows * 32 * 128, rows * 2 * 8 * 128
    assert float(op.fwd_bytes) == pytest.approx(3 * (3 * 2 * q + 3 * 4 * rows * 32))
    assert float(op.bwd_bytes) == pytest.approx(3 * 3 * 2 * (q + kv))
    assert [int(k) for k in op.kernels] == [6, 9]


def test_no_merges_without_a_ring():
    model = parplan.load_model("llama3.1-8b")
    assert ContextParallel().layer_ops(_dims(8192), model, Layout(cp=4, cp_mode="allgather", global_batch=1),
                                       "bf16") == []
    assert ContextParallel().layer_ops(_dims(8192), model, Layout(cp=1, global_batch=1), "bf16") == []


def test_the_ring_costs_its_merges_in_the_step():
    model = parplan.load_model("llama3.1-8b")
    cluster = parplan.load_cluster("h100x8")
    lay = Layout(cp=8, cp_mode="ring", global_batch=1, seq_len=65536, recompute="none")
    est = parplan.estimate(model, cluster, lay)
    merges = [t for o, t in zip(est.ops, est.op_times) if o.name == "cp_ring_merges"]
    assert len(merges) == 1 and all(np.asarray(x) > 0 for x in merges[0])
