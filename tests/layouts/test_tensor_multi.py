"""2D (Optimus/SUMMA) and 3D tensor parallelism against formulas derived independently here.

Communication is counted per device per layer per micro-batch as
``sum(size_bytes * busbw_factor * count)`` in the nccl-tests convention (broadcast
and reduce factor 1, all-gather and reduce-scatter (n-1)/n). For the Colossal-AI
documentation's per-linear tables (2D "O(6(q-1)/q)", 3D "O(6(q-1)/q^3)", 1D
"O(2(P-1)/P)"; hpcaitech/ColossalAI docs/source/en/features/*_tensor_parallel.md)
the 2D broadcasts and reduces are counted with the table's factor (q-1) instead.
"""
import numpy as np
import pytest

from tests.helpers import software

from parplan.cost import ops as ops_mod
from parplan.cost.collectives import bus_factor
from parplan.errors import ParplanError
from parplan.step.train import estimate
from parplan.specs.cluster import load_cluster
from parplan.layouts.layout import Layout
from parplan.layouts.rules import check_layout
from parplan.specs.model import model_from_dict
from parplan.layouts.strategies import strategies_for, tensor
from parplan.layouts.strategies.tensor_multi import TensorParallel2D, TensorParallel3D

CASES = [("2d", 4, 2), ("2d", 16, 4), ("2d", 64, 8), ("3d", 8, 2), ("3d", 64, 4)]
MB = 16  # divisible by q (2D) and q^2 (3D) for every case: whole sequences per device
BPE = 2
LINEARS = ("qkv", "proj", "mlp_up", "mlp_down")


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """Register the plug-ins (harmless once tensor.py registers them itself)."""
    monkeypatch.setitem(tensor.TENSOR_PARALLEL, "2d", TensorParallel2D)
    monkeypatch.setitem(tensor.TENSOR_PARALLEL, "3d", TensorParallel3D)


def gpt(hidden=2048, heads=64, ffn=8192, seq=512, layers=4, vocab=51200, **extra):
    spec = {"name": "toy-gpt", "layers": layers, "hidden": hidden, "heads": heads, "ffn_hidden": ffn,
            "activation": "gelu", "vocab": vocab, "seq_len": seq, "position": "learned"}
    spec.update(extra)
    return model_from_dict(spec, "toy-gpt")


# Colossal-AI is the framework whose code runs 2D and 3D tensor parallelism; these layers use unfused attention.
SOFTWARE = software("colossalai", flash_attention=False)


def run(model, mode, P, mb=MB, **kw):
    lay = Layout(tp=P, tp_mode=mode, micro_batch=mb, global_batch=mb, **kw)
    return estimate(model, load_cluster(f"a100x{lay.devices}"), lay, software=SOFTWARE)


def local_dims(model, layout):
    """The per-device shapes, built the way the estimator builds them."""
    seq = layout.seq_len or model.seq_len
    fields = dict(batch=np.asarray(layout.micro_batch), seq=np.asarray(seq, float), seq_kv=np.asarray(seq, float),
                  hidden=model.hidden, heads=model.heads, kv_heads=model.kv_heads, head_dim=model.head_dim,
                  ffn=model.ffn_hidden, vocab=model.vocab, norm_shard=1, hidden_shard=1, causal=True)
    for s in strategies_for(layout):
        fields = s.local_dims(fields, model, layout)
    return ops_mod.LocalDims(**fields)


def tp_records(est, per="layer", phases=("forward", "backward"), prefix=""):
    return [c.collective for c in est.collectives
            if c.collective.axis == "tp" and c.collective.per == per and c.collective.phase in phases
            and c.collective.name.startswith(prefix)]


def nccl_bytes(records):
    return sum(float(c.size_bytes) * bus_factor(c.op, int(c.group)) * float(c.count) for c in records)


def table_bytes(records):
    """The documentation tables' convention: a broadcast/reduce of n over q ranks moves (q-1) n."""
    total = 0.0
    for c in records:
        q = int(c.group)
        factor = (q - 1) if c.op in ("broadcast", "reduce") else bus_factor(c.op, q)
        total += float(c.size_bytes) * factor * float(c.count)
    return total


def calls(records):
    return sum(float(c.count) for c in records)


def linears(h, f):
    """(K, N) of a GPT layer's QKV, output projection, MLP up and MLP down."""
    return [(h, 3 * h), (h, h), (h, f), (f, h)]


# --------------------------------------------------------------------------- communication


@pytest.mark.parametrize("mode,P,q", CASES)
def test_layer_communication_matches_the_algorithms(mode, P, q):
    m = gpt()
    est = run(m, mode, P)
    M, h, f = MB * m.seq_len, m.hidden, m.ffn_hidden
    if mode == "2d":
        # SUMMA: q broadcasts of X and of W blocks forward; backward q broadcasts of W and of X,
        # q reduces of dX and of dW blocks. nccl factor 1: forward (MK + KN)/q per linear.
        fwd = sum((M * K + K * N) / q for K, N in linears(h, f)) * BPE
        bwd = 2 * fwd
        prefix = tuple(f"summa_{lin}_" for lin in LINEARS)
    else:
        # 3D: all-gather X (MK/q^2) and W (KN/q^2), reduce-scatter Y (MN/q^2) forward; backward
        # all-gather dY, reduce-scatter dX and dW. Ring factor (q-1)/q each.
        fwd = sum((q - 1) / q * (M * K + K * N + M * N) / q**2 for K, N in linears(h, f)) * BPE
        bwd = fwd
        prefix = tuple(f"tp3d_{lin}_" for lin in LINEARS)
    assert nccl_bytes(tp_records(est, phases=("forward",), prefix=prefix)) == pytest.approx(fwd, rel=1e-12)
    assert nccl_bytes(tp_records(est, phases=("backward",), prefix=prefix)) == pytest.approx(bwd, rel=1e-12)
    # Every collective spans one mesh dimension of q devices.
    assert {int(c.group) for c in tp_records(est, per="layer") + tp_records(est, per="microbatch")} == {q}
    assert all(c.hidden_by == "none" for c in tp_records(est))


@pytest.mark.parametrize("mode,P,q", CASES)
def test_square_linear_reproduces_the_documented_table(mode, P, q):
    """M = K = N = S: 2D moves 6(q-1)/q * S, 3D 6(q-1)/q^3 * S per linear (forward + backward)."""
    S = 1024
    m = gpt(hidden=S, heads=16, ffn=S, seq=S // MB, vocab=1024)
    est = run(m, mode, P)
    for lin in ("mlp_up", "mlp_down"):
        prefix = f"summa_{lin}_" if mode == "2d" else f"tp3d_{lin}_"
        recs = tp_records(est, prefix=prefix)
        if mode == "2d":
            assert table_bytes(recs) == pytest.approx(6 * (q - 1) / q * S * S * BPE, rel=1e-12)
            assert calls(recs) == 6 * q
        else:
            assert nccl_bytes(recs) == pytest.approx(6 * (q - 1) / q**3 * S * S * BPE, rel=1e-12)
            assert calls(recs) == 6  # six ring collectives of q-1 steps: latency 6(q-1)


def test_1d_table_entry_for_comparison():
    """Megatron per linear: one all-reduce of the activation, 2(P-1)/P of it (the 1D table row)."""
    S, P = 1024, 8
    m = gpt(hidden=S, heads=16, ffn=S, seq=S // MB, vocab=1024)
    est = run(m, "1d", P)
    per_layer = nccl_bytes(tp_records(est))
    assert per_layer == pytest.approx(4 * 2 * (P - 1) / P * S * S * BPE, rel=1e-12)  # 4 linears


def test_communication_per_device_shrinks_with_q_but_not_in_1d():
    m = gpt()
    two_d = [nccl_bytes(tp_records(run(m, "2d", P))) for P in (4, 16, 64)]
    three_d = [nccl_bytes(tp_records(run(m, "3d", P))) for P in (8, 64)]
    one_d = [nccl_bytes(tp_records(run(m, "1d", P))) for P in (4, 16, 64)]
    assert two_d[0] > two_d[1] > two_d[2]
    assert three_d[0] > three_d[1]
    assert one_d[0] < one_d[1] < one_d[2]
    assert three_d[1] < two_d[2] < one_d[2]  # at P = 64: 3D < 2D < 1D


def test_more_collectives_per_layer_than_1d():
    m = gpt()
    one_d = calls(tp_records(run(m, "1d", 16)))
    assert one_d == 4
    counts = {P: calls(tp_records(run(m, "2d", P))) for P in (4, 16, 64)}
    for P, q in ((4, 2), (16, 4), (64, 8)):
        assert counts[P] == 4 * 6 * q + 8  # SUMMA calls of four linears + LayerNorm statistics
    assert counts[4] > one_d and counts[4] < counts[16] < counts[64]
    assert calls(tp_records(run(m, "3d", 64))) == 4 * 6 + 4 > one_d


def test_full_recompute_repeats_the_forward_collectives():
    m = gpt()
    for mode, P in (("2d", 16), ("3d", 8)):
        none = run(m, mode, P)
        full = run(m, mode, P, recompute="full")
        assert calls(tp_records(none, phases=("recompute",))) == 0
        fwd = tp_records(full, phases=("forward",))
        rec = tp_records(full, phases=("recompute",))
        assert calls(rec) == calls(fwd) and nccl_bytes(rec) == pytest.approx(nccl_bytes(fwd))


def test_sub_axis_strides():
    """Rows of the 2D mesh lie along the tp axis's stride, columns q times further; 3D uses S, Sq, Sq^2."""
    m = gpt()

    def inside_dp(mode, P):  # two data-parallel replicas innermost: the tp axis's stride is 2
        lay = Layout(tp=P, tp_mode=mode, dp=2, micro_batch=MB, global_batch=2 * MB, order=("dp", "tp", "cp", "pp"))
        return estimate(m, load_cluster(f"a100x{lay.devices}"), lay, software=SOFTWARE)
    for mode, P, expected in (("2d", 16, {2, 8}), ("3d", 8, {2, 4, 8})):
        est = inside_dp(mode, P)
        assert {int(c.stride) for c in tp_records(est, per="layer")} == expected
    est = inside_dp("2d", 16)
    rec = {c.name: c for c in tp_records(est)}
    assert int(rec["summa_qkv_bcast_x_fwd"].stride) == 2      # activation blocks along a row
    assert int(rec["summa_qkv_bcast_w_fwd"].stride) == 8      # weight blocks along a column


# --------------------------------------------------------------------------- compute


@pytest.mark.parametrize("mode,P,q", CASES)
def test_per_device_flops_are_one_over_p(mode, P, q):
    m = gpt()
    est, single = run(m, mode, P), run(m, "1d", 1)
    for field in ("fwd_flops", "bwd_flops"):
        assert float(ops_mod.total(est.ops, field)) * P == pytest.approx(float(ops_mod.total(single.ops, field)),
                                                                         rel=1e-12)
    lay = Layout(tp=P, tp_mode=mode, micro_batch=MB, global_batch=MB)
    d, d1 = local_dims(m, lay), local_dims(m, Layout(micro_batch=MB, global_batch=MB))
    head, head1 = ops_mod.head_ops(m, d), ops_mod.head_ops(m, d1)
    assert float(ops_mod.total(head, "fwd_flops")) * P == pytest.approx(float(ops_mod.total(head1, "fwd_flops")),
                                                                        rel=1e-3)  # vocab padded to q


@pytest.mark.parametrize("mode,P,q", CASES)
def test_gemm_shapes_follow_the_algorithm(mode, P, q):
    m = gpt()
    est = run(m, mode, P)
    M, h, f = MB * m.seq_len, m.hidden, m.ffn_hidden
    gemm = {o.name: tuple(float(x) for x in o.gemm) for o in est.ops if o.gemm is not None}
    fields = {fld for fld in ops_mod.LocalDims.__dataclass_fields__}
    if mode == "2d" and "gemm_steps" in fields:
        assert gemm["qkv_proj"] == (M / q, h / q, 3 * h / q, q)   # q SUMMA block products
        assert gemm["mlp_down"] == (M / q, f / q, h / q, q)
    elif mode == "3d" and "gemm_row_gather" in fields:
        assert gemm["qkv_proj"] == (M / q, h / q, 3 * h / q, 1)   # one product on gathered rows
        assert gemm["mlp_down"] == (M / q, f / q, h / q, 1)
    else:  # the same FLOPs as one GEMM
        for name, (K, N) in zip(("qkv_proj", "out_proj", "mlp_up", "mlp_down"), linears(h, f)):
            mm, k, n, b = gemm[name]
            assert mm * k * n * b == pytest.approx(M * K * N / P, rel=1e-12)


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("mode,P,q", CASES)
def test_weights_and_activations_are_one_over_p(mode, P, q):
    m = gpt()
    est = run(m, mode, P)
    assert float(est.memory_bytes["weights"]) == pytest.approx(m.total_params() * BPE / P, rel=1e-12)
    # Korthikanti et al. 2022 eq. 1 (16-bit, dropout, no FlashAttention): s b h (34 + 5 a s / h) per
    # layer on one device; 2D/3D shard every term (table: activations O(1/q^2), O(1/q^3)).
    s, b, h, a = m.seq_len, MB, m.hidden, m.heads
    per_layer = s * b * h * (34 + 5 * a * s / h)
    assert float(est.memory_bytes["activations"]) == pytest.approx(m.layers * per_layer / P, rel=1e-12)
    assert float(est.memory_bytes["logits"]) == pytest.approx(b * s * m.vocab / P * (BPE + 4), rel=1e-12)


def test_memory_shrinks_faster_with_p_than_1d():
    m = gpt()
    s, b, h, a = m.seq_len, MB, m.hidden, m.heads
    for mode, P in (("2d", 16), ("2d", 64), ("3d", 8), ("3d", 64)):
        multi, one_d = run(m, mode, P), run(m, "1d", P)
        # Korthikanti eq. 2: 1D keeps s b h (10 + 24/t + 5 a s/(h t)) per layer.
        assert float(one_d.memory_bytes["activations"]) == pytest.approx(
            m.layers * s * b * h * (10 + 24 / P + 5 * a * s / (h * P)), rel=1e-12)
        assert float(multi.memory_bytes["activations"]) < float(one_d.memory_bytes["activations"])
        assert float(multi.memory_bytes["weights"]) == pytest.approx(float(one_d.memory_bytes["weights"]))


def test_state_divisors_are_p():
    m = gpt()
    for mode, P in (("2d", 16), ("3d", 64)):
        est = run(m, mode, P)
        params = m.total_params()
        assert float(est.memory_bytes["gradients"]) == pytest.approx(params * 4 / P)   # fp32 main grads
        assert float(est.memory_bytes["optimizer"]) == pytest.approx(params * 12 / P)


# --------------------------------------------------------------------------- layouts


def test_non_square_and_non_cube_are_refused():
    m = gpt()
    with pytest.raises(ParplanError, match="square"):
        check_layout(Layout(tp=8, tp_mode="2d"), m, load_cluster("a100x8"))
    with pytest.raises(ParplanError, match="cube"):
        check_layout(Layout(tp=16, tp_mode="3d"), m, load_cluster("a100x16"))
    with pytest.raises(ParplanError, match="cube"):
        check_layout(Layout(tp=4, tp_mode="3d"), m, load_cluster("a100x4"))
    check_layout(Layout(tp=16, tp_mode="2d", micro_batch=4), m, load_cluster("a100x16"))
    check_layout(Layout(tp=64, tp_mode="3d", micro_batch=16), m, load_cluster("a100x64"))
    with pytest.raises(ParplanError, match="splits the micro-batch 4 ways"):
        check_layout(Layout(tp=16, tp_mode="2d", micro_batch=2), m, load_cluster("a100x16"))


def test_vectorised_layouts_match_scalar_ones():
    m = gpt()
    tps = np.array([4, 16, 64])
    lay = Layout(tp=tps, tp_mode="2d", micro_batch=MB, global_batch=MB)
    est = estimate(m, load_cluster("a100x64"), lay, check=False, software=SOFTWARE)
    vec = sum(np.asarray(c.size_bytes, float) * np.where(np.asarray(c.group) > 1, 1.0, 0.0) * np.asarray(c.count)
              for c in tp_records(est) if c.op in ("broadcast", "reduce"))
    for i, P in enumerate(tps):
        scalar = nccl_bytes(tp_records(run(m, "2d", int(P)), prefix="summa_"))
        assert vec[i] == pytest.approx(scalar, rel=1e-12)
