"""A framework profile that ``extends:`` another states only what differs (megatron-bridge over megatron-core),
and Transformer Engine's fused cross-entropy (te-fused) as that profile runs it."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

import parplan
from parplan.cost.elementwise import loss_memory_bytes_per_logit
from parplan.cost.ops import LocalDims, head_ops
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.plan.emitters import megatron
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework


def _differ(a, b):
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_megatron_bridge_is_megatron_core_with_te_fused_cross_entropy():
    bridge, core = load_framework("megatron-bridge"), load_framework("megatron-core")
    assert _differ(bridge, core) == {"name", "aliases", "description", "kernels", "sources", "path"}
    assert bridge.kernels.loss == "te-fused" and core.kernels.loss == "vocab-parallel"
    assert dataclasses.replace(bridge.kernels, loss="vocab-parallel") == core.kernels
    assert load_framework("bridge").name == "megatron-bridge" and "nemo" not in bridge.aliases
    assert "kernels.loss" in bridge.sources and "kernels.attention" in bridge.sources  # sources merge by key


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_user_profile_lays_its_keys_over_the_one_it_extends(tmp_path):
    _write(tmp_path, "base.yaml", {**yaml.safe_load(open(load_framework("megatron-core").path)),
                                   "name": "my-base", "aliases": ["mine"]})
    child = load_framework(_write(tmp_path, "child.yaml", {"name": "my-stack", "extends": "base.yaml",
                                                           "fp8": {"default": "tensorwise"}}))
    base = load_framework(str(tmp_path / "base.yaml"))
    assert child.fp8.default == "tensorwise" and base.fp8.default == "delayed"
    assert child.fp8.recipes == base.fp8.recipes and child.fp8.params == base.fp8.params  # the rest of fp8 kept
    assert child.aliases == () and child.data_parallel == base.data_parallel


@pytest.mark.parametrize("extends, said", [
    ("megatron-cor", "did you mean 'megatron-core'"),
    (7, "extends must name"),
    ("loop.yaml", "extends it back"),
])
def test_bad_extends_is_a_one_line_error(tmp_path, extends, said):
    path = _write(tmp_path, "loop.yaml", {"name": "loop", "extends": extends})
    with pytest.raises(ParplanError, match=said):
        load_framework(path)


def test_two_profiles_extending_each_other_are_refused(tmp_path):
    _write(tmp_path, "a.yaml", {"name": "a", "extends": "b.yaml"})
    path = _write(tmp_path, "b.yaml", {"name": "b", "extends": "a.yaml"})
    with pytest.raises(ParplanError, match="extends it back"):
        load_framework(path)


def test_te_fused_cross_entropy_by_hand():
    """Per 16-bit logit: forward two reads and the gradient written over them (6 bytes, 2 kernels), backward a
    scale in place (4 bytes); the loss holds only the logits' buffer (2 bytes), where Megatron's vocab-parallel
    one also keeps an fp32 softmax (6)."""
    dims = LocalDims(batch=1, seq=4096, seq_kv=4096, hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn=14336,
                     vocab=128256, norm_shard=1, hidden_shard=1, causal=True)
    model = parplan.load_model("llama3-8b")
    ce = head_ops(model, dims, "bf16", "te-fused")[-1]
    logits = 4096 * 128256
    assert ce.name == "cross_entropy"
    assert float(ce.fwd_bytes) == pytest.approx(6 * logits) and float(ce.bwd_bytes) == pytest.approx(4 * logits)
    assert ce.kernels == (2, 1)
    assert loss_memory_bytes_per_logit("te-fused", 2) == 2 and loss_memory_bytes_per_logit("vocab-parallel", 2) == 6


def test_the_bridge_loss_costs_less_time_and_memory_on_the_head_rank():
    m, cl = parplan.load_model("llama3-8b"), parplan.load_cluster("h100x8")
    lay = Layout(dp=8, zero=1, micro_batch=1, global_batch=8, seq_len=8192)
    core, bridge = (parplan.estimate(m, cl, lay, software=resolve_software(load_framework(n)))
                    for n in ("megatron-core", "megatron-bridge"))
    logits = 8192 * 128256
    assert float(core.memory_bytes["logits"] - bridge.memory_bytes["logits"]) == pytest.approx(4 * logits)
    assert float(bridge.step_time_s) < float(core.step_time_s)


def test_megatron_flags_carry_the_te_cross_entropy_and_read_back_as_bridge():
    m = parplan.load_model("llama3-8b")
    lay = Layout(dp=8, zero=1, micro_batch=1, global_batch=8)
    args = megatron.megatron_args(lay, m, resolve_software(load_framework("megatron-bridge")))
    assert "--cross-entropy-loss-fusion" in args and args[args.index("--cross-entropy-fusion-impl") + 1] == "te"
    assert "--cross-entropy-loss-fusion" not in megatron.megatron_args(
        lay, m, resolve_software(load_framework("megatron-core")))
    assert megatron.read(" ".join(args), 8, m).framework == "megatron-bridge"
    plain = [a for a in args if a not in ("--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", "te")]
    assert megatron.read(" ".join(plain), 8, m).framework == "megatron-core"


def test_a_profile_names_itself_and_cites_what_it_sets(tmp_path):
    """The name is never inherited; a value the profile sets drops the citation the base gave it."""
    with pytest.raises(ParplanError, match="name"):
        load_framework(_write(tmp_path, "noname.yaml", {"extends": "megatron-core"}))
    fw = load_framework(_write(tmp_path, "mine.yaml", {"name": "mine", "extends": "megatron-core",
                                                       "kernels": {"loss": "fused"}}))
    assert fw.name == "mine" and "kernels.loss" not in fw.sources and "kernels.attention" in fw.sources


def test_a_file_it_extends_lies_beside_it(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub", "child.yaml", {"name": "child", "extends": "base.yaml"})
    with pytest.raises(ParplanError, match="is not a file"):
        load_framework(path)
