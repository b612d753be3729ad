"""DeepEP's token dispatch (--moe-dispatcher deepep): each token sent once per rank and node holding one of
its experts, counted by hand on small cases."""
import numpy as np
import pytest

import parplan
from parplan.cost import moe as moe_mod
from parplan.cost.collectives import collective_time_s, dispatch_time_s, place
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework
from parplan.specs.model import model_from_dict

# Top-2 of 16 experts, hidden 1024: one expert per rank on ep 16.
TOY = {"name": "toy-moe16", "layers": 8, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn_hidden": 2048,
       "activation": "swiglu", "vocab": 32000, "seq_len": 2048, "norm": "rmsnorm", "position": "rope",
       "bias": False, "tied_embeddings": False, "experts": 16, "top_k": 2, "router_imbalance": 1.0}


def _deepep(**choices):
    return resolve_software(load_framework("megatron-core"), moe_dispatcher="deepep", **choices)


def test_hit_probability_is_hypergeometric():
    """Two of 8 experts miss one given expert with C(7,2)/C(8,2) = 21/28, and four given ones with 6/28."""
    assert float(moe_mod.hit_probability(8, 2, 1)) == pytest.approx(1 - 21 / 28)
    assert float(moe_mod.hit_probability(8, 2, 4)) == pytest.approx(1 - 6 / 28)
    assert float(moe_mod.hit_probability(8, 1, 2)) == pytest.approx(2 / 8)
    assert float(moe_mod.hit_probability(8, 2, 8)) == pytest.approx(1.0)


def test_dispatch_sends_tokens_once_per_node_and_rank():
    """16 ranks on 2 nodes, one of 16 experts each, top 2, 1 GB of tokens (2 GB of copies): a node is hit with
    1 - C(8,2)/C(16,2) = 92/120 and a rank with 1 - C(15,2)/C(16,2) = 1/8, so 92/120 GB leaves over the NIC
    (the all-to-all: 8/16 of the 2 GB) and 2 x 7 x 1/8 GB crosses NVLink."""
    cluster = parplan.load_cluster("h100x16")
    where = place(16, 1, cluster)
    nic, nvl = cluster.inter_node.effective_bandwidth, cluster.intra_node.effective_bandwidth
    t = float(dispatch_time_s(2e9, where, cluster, 2, 16))
    assert t == pytest.approx(max(1e9 * 92 / 120 / nic, 2 * 7 * 0.125e9 / nvl))
    a2a = float(collective_time_s("all_to_all", 2e9, where, cluster))
    assert float(collective_time_s("dispatch", 2e9, where, cluster, fanout=(2, 16))) < a2a
    # Inside one node only NVLink carries it: 7 other ranks, each hit with probability 1 - C(14,2)/C(16,2).
    inside = place(8, 1, cluster)
    p = 1 - 91 / 120
    assert float(dispatch_time_s(2e9, inside, cluster, 2, 16)) == pytest.approx(1e9 * 7 * p / nvl)
    # Expert tensor parallel 2 over 2 ranks (ep 1): both shards of every expert get every token.
    pair = place(2, 1, cluster)
    assert float(dispatch_time_s(2e9, pair, cluster, 2, 16, etp=2)) == pytest.approx(1e9 / nvl)
    with pytest.raises(ParplanError, match="top_k, experts, etp"):
        collective_time_s("dispatch", 2e9, where, cluster)


def test_deepep_issues_dispatches_over_ep_times_etp_and_no_expert_tp_gathers():
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x16")
    lay = Layout(dp=16, micro_batch=1, global_batch=32, seq_len=2048, axes=(("ep", 8), ("etp", 2)))
    est = parplan.estimate(m, cl, lay, software=_deepep())
    calls = {c.collective.name: c.collective for c in est.collectives}
    d = calls["ep_dispatch_forward"]
    assert (d.op, int(d.group), d.fanout) == ("dispatch", 16, (2, 16, 2))
    assert not [n for n, c in calls.items() if n.startswith("etp_") and float(np.sum(c.count)) > 0]
    plain = parplan.estimate(m, cl, lay, software=resolve_software(load_framework("megatron-core")))
    ops = {o.name for o in plain.ops}
    assert "moe_sort_received" in ops and "moe_sort_received" not in {o.name for o in est.ops}


def test_deepep_permutes_the_received_tokens():
    """On ep 16 each of 16 ranks' 2048 tokens reaches a rank with probability 1/8: 4096 received tokens are
    permuted into the 2048 x 16 x 2 / 16 = 4096 rows of the local expert."""
    m = model_from_dict(TOY, "toy")
    from parplan.cost import ops as ops_mod
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                          ffn=2048, vocab=32000, norm_shard=1, moe=moe_mod.MoeParallel(1, 16, 1), moe_share=1.0)
    k = {x.name: x for x in moe_mod.block_kernels(m, d, 2048, "fused", dispatcher="deepep")}
    assert float(moe_mod.received_tokens(m, d)) == pytest.approx(4096)
    assert float(k["moe_permute"].args[0]) == pytest.approx((4096 + 4096) * 1024)


def test_bad_deepep_choices_are_one_line_errors():
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x16")
    with pytest.raises(ParplanError, match="ep x etp > 1"):
        parplan.estimate(m, cl, Layout(dp=16, micro_batch=1, global_batch=32, seq_len=2048), software=_deepep())
    dropped = model_from_dict({**TOY, "router_imbalance": None, "capacity_factor": 1.0}, "toy")
    with pytest.raises(ParplanError, match="capacity"):
        parplan.estimate(dropped, cl, Layout(dp=16, micro_batch=1, global_batch=32, seq_len=2048,
                                             axes=(("ep", 8), ("etp", 1))), software=_deepep())
    with pytest.raises(ParplanError, match="dispatches MoE tokens with alltoall"):
        resolve_software(load_framework("torchtitan"), moe_dispatcher="deepep")

