"""The host's time to issue a layer, and the layer's time when the GPU outruns the host (parplan.cost.host)."""
from dataclasses import replace

import pytest

import parplan
from parplan.cost import host as host_mod, ops as ops_mod
from parplan.cost.moe import MoeParallel
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.framework import HostTimes, resolve_software
from parplan.specs.framework_loader import _shipped_data, framework_from_dict, load_framework
from parplan.specs.model_loader import model_from_dict

TOY = {"name": "toy", "layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn_hidden": 2048,
       "activation": "swiglu", "vocab": 32000, "seq_len": 2048, "norm": "rmsnorm", "position": "rope",
       "bias": False, "tied_embeddings": False}
MOE = dict(TOY, experts=8, top_k=2)
HOST = HostTimes(layer_s=(1e-3, 2e-3), moe_s=(3e-4, 5e-4), expert_s=(1e-4, 2e-4))


def _dims(ep):
    return ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                             ffn=2048, vocab=32000, norm_shard=1, moe=MoeParallel(1, ep, 1), moe_share=1.0)


def test_a_dense_layer_takes_the_layer_time_alone():
    f, b = host_mod.layer_host_s(model_from_dict(TOY, "toy"), _dims(1), HOST, "streams", 0.0)
    assert (float(f), float(b)) == pytest.approx((1e-3, 2e-3))


@pytest.mark.parametrize("ep,launch,share,fwd,bwd", [
    (2, "streams", 1.0, 1e-3 + 3e-4 + 4 * 1e-4, 2e-3 + 5e-4 + 4 * 2e-4),   # 8 experts over ep 2: 4 local
    (8, "loop", 1.0, 1e-3 + 3e-4 + 1 * 1e-4, 2e-3 + 5e-4 + 1 * 2e-4),      # one local expert
    (2, "grouped", 1.0, 1e-3 + 3e-4, 2e-3 + 5e-4),                          # one launch for all experts
    (2, "streams", 0.5, 1e-3 + 0.5 * 7e-4, 2e-3 + 0.5 * 1.3e-3),           # half the stage's layers are MoE
])
def test_an_moe_layer_adds_its_router_and_dispatch_and_each_expert_it_launches(ep, launch, share, fwd, bwd):
    f, b = host_mod.layer_host_s(model_from_dict(MOE, "toy"), _dims(ep), HOST, launch, share)
    assert (float(f), float(b)) == pytest.approx((fwd, bwd))


def _software(eager, compiled=None):
    fw = load_framework("pytorch")
    return replace(fw, host=eager, compile=replace(fw.compile, host=compiled))


def test_a_layer_whose_kernels_outrun_the_host_takes_the_host_time_and_says_so():
    """A 4-layer toy on one H100: its layer's kernels take well under 0.1 s, so a host that needs 0.1 s forward and
    0.2 s backward sets both; with no host time the layer is its kernels' sum, and nothing is said."""
    cl = parplan.load_cluster("h100x8")
    lay = Layout(dp=8, micro_batch=1, global_batch=8, seq_len=2048)
    model = model_from_dict(TOY, "toy")
    slow = resolve_software(_software(HostTimes(layer_s=(0.1, 0.2))))
    est = parplan.estimate(model, cl, lay, software=slow)
    assert (float(est.layer_forward_s), float(est.layer_backward_s)) == pytest.approx((0.1, 0.2))
    assert any(n.startswith("host-bound layers: forward 100 ms to issue") for n in est.notes)
    base = parplan.estimate(model, cl, lay, software=resolve_software(_software(HostTimes())))
    assert float(base.layer_forward_s) == pytest.approx(sum(float(t[0]) for t in base.op_times))
    assert float(base.layer_forward_s) < 0.1 and not any("host-bound" in n for n in base.notes)
    assert float(est.step_time_s) > float(base.step_time_s) + 4 * 0.2


def test_a_compiled_run_takes_the_compiled_host_times():
    fw = _software(HostTimes(layer_s=(0.1, 0.2)), HostTimes(layer_s=(0.01, 0.02)))
    assert resolve_software(fw, compiled=True).host.layer_s == (0.01, 0.02)
    assert resolve_software(fw, compiled=False).host.layer_s == (0.1, 0.2)
    assert resolve_software(_software(HostTimes(layer_s=(0.1, 0.2))), compiled=True).host.layer_s == (0.1, 0.2)


@pytest.mark.parametrize("host,match", [
    ({"layer_s": [1e-3]}, "layer_s must be \\[forward, backward\\] seconds"),
    ({"layer_s": "fast"}, "layer_s must be \\[forward, backward\\] seconds"),
    ({"moe_s": [1e-3, -1e-3]}, "moe_s backward must be 0 to 1 seconds, got -0.001"),
    ({"expert_s": ["x", 1e-3]}, "expert_s forward must be 0 to 1 seconds, got 'x'"),
    ({"expert_s": [None, 1e-3]}, "expert_s forward must be"),
    ({"layer_s": [float("nan"), 1e-3]}, "layer_s forward must be"),
    ({"layer_s": [True, 1e-3]}, "layer_s forward must be"),
    ({"layer_s": [2.0, 1e-3]}, "layer_s forward must be 0 to 1 seconds"),
    ({"layer_ss": [1e-3, 1e-3]}, "layer_ss.*layer_s"),
    ([1e-3, 1e-3], "host: expected a mapping"),
    (0, "host: expected a mapping"),
])
def test_bad_host_times_are_one_line_errors(host, match):
    data = _shipped_data()["pytorch"]
    with pytest.raises(ParplanError, match=match):
        framework_from_dict(dict(data, host=host), "x")
    with pytest.raises(ParplanError, match=match):
        framework_from_dict(dict(data, compile=dict(data["compile"], host=host)), "x")


def test_the_host_times_follow_each_candidate_of_a_search():
    """Arrays of expert-parallel sizes (the search's candidates) give one host time each; notes stay silent."""
    import numpy as np
    d = replace(_dims(1), moe=MoeParallel(1, np.array([1, 2, 8]), 1))
    f, _ = host_mod.layer_host_s(model_from_dict(MOE, "toy"), d, HOST, "loop", 1.0)
    assert np.allclose(f, [1e-3 + 3e-4 + n * 1e-4 for n in (8, 4, 1)])
    assert host_mod.notes((np.array([1.0, 2.0]), 1.0), (np.array([3.0, 3.0]), 0.5)) == ()


def test_a_host_bound_moe_layer_pays_the_read_of_the_tokens_per_expert_once():
    """Megatron-Core, dropless, ep 8: the measured host times include the dispatcher's wait for the counts, so
    a layer the host sets the pace of takes the host's time, not that plus the profile's sync_s."""
    cl = parplan.load_cluster("h100x8")
    lay = Layout(dp=8, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1)))
    fw = replace(load_framework("megatron-core"), host=HostTimes(layer_s=(0.1, 0.2)))
    est = parplan.estimate(model_from_dict(MOE, "toy"), cl, lay, software=resolve_software(fw))
    assert (float(est.layer_forward_s), float(est.layer_backward_s)) == pytest.approx((0.1, 0.2))


def test_recomputing_part_of_a_host_bound_layer_costs_only_that_part_s_kernels():
    """save-dots reruns the layer's kernels but its weight GEMMs; under a slow host it still costs those kernels
    (far under the host's 0.1 s), while full recompute issues the whole layer again at the host's pace."""
    cl = parplan.load_cluster("h100x8")
    model = model_from_dict(TOY, "toy")
    sw = resolve_software(replace(load_framework("jax"), host=HostTimes(layer_s=(0.1, 0.2))))
    recs = {}
    for mode in ("save-dots", "full"):
        lay = Layout(dp=8, micro_batch=1, global_batch=8, seq_len=2048, recompute=mode)
        est = parplan.estimate(model, cl, lay, software=sw)
        recs[mode] = float(est.breakdown_s["recompute"])
    assert recs["full"] == pytest.approx(4 * 0.1, rel=0.05)
    assert recs["save-dots"] < 0.1 * recs["full"]


def test_the_shipped_plain_pytorch_host_times_are_what_the_script_makes_of_the_stored_run():
    """frameworks/pytorch.yaml's host and compile.host are scripts/host_times.py's output (3 digits) for the stored
    H200-host run; torchtitan and llm-foundry carry the same as a lower bound."""
    import importlib.util
    import pathlib

    import pandas as pd
    root = pathlib.Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("host_times", root / "scripts" / "host_times.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = pd.read_csv(root / "reports" / "host" / "h200-2026-12-06" / "torch_host.csv")
    for name in ("pytorch", "torchtitan", "llm-foundry"):
        fw = load_framework(name)
        for compiled, shipped in ((False, fw.host), (True, fw.compile.host)):
            made = script.host_times(rows, compiled)
            for key, pair in made.items():
                assert getattr(shipped, key) == pytest.approx(pair, rel=5e-3), (name, compiled, key)
