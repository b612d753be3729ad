"""Spec readers refuse what they do not understand, rather than planning on a default."""
import json
import re

import pytest

from parplan.errors import ParplanError
from parplan.specs.cluster import load_cluster, make_cluster
from parplan.specs.hardware import load_hardware
from parplan.specs.model_loader import load_model


def test_a_cluster_file_typo_is_refused_with_the_nearest_key(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("hardware: a100-80gb\ndevices: 384\ninter_node_bandwitdh: 6.25e+9\n")
    with pytest.raises(ParplanError, match=r"unknown key 'inter_node_bandwitdh' \(did you mean 'inter_node_bandwidth'"):
        load_cluster(str(path))


def test_cluster_file_overrides_reach_the_links(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("hardware: a100-80gb\ndevices: 384\ninter_node_bandwidth: 6.25e+9\nintra_node_efficiency: 0.5\n")
    cl = load_cluster(str(path))
    base = load_hardware("a100-80gb")
    assert cl.inter_node.bandwidth == 6.25e9 and cl.inter_node.latency_s == base.inter_node.latency_s
    assert cl.intra_node.efficiency == 0.5 and cl.intra_node.bandwidth == base.intra_node.bandwidth


@pytest.mark.parametrize("text, key", [
    ("name: m\nlayers: 2\nhidden: 64\nheads: 4\nffn_hidden: 256\nactivation: gelu\nvocab: 100\nseq_len: 64\n"
     "tied_embedings: false\n", "tied_embedings"),
])
def test_a_model_file_typo_is_refused(tmp_path, text, key):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ParplanError, match=f"unknown key '{key}' \\(did you mean 'tied_embeddings'"):
        load_model(str(path))


def test_a_profile_typo_is_refused_at_any_depth(tmp_path):
    text = (load_hardware("a100").path and open(load_hardware("a100").path).read())
    bad = text.replace("  matmul:", "  matmull:", 1)
    assert bad != text
    path = tmp_path / "p.yaml"
    path.write_text(bad)
    with pytest.raises(ParplanError, match=r"efficiency: unknown key 'matmull' \(did you mean 'matmul'"):
        load_hardware(str(path))


def test_nodes_must_be_whole():
    hw = load_hardware("a100")
    with pytest.raises(ParplanError, match="do not fill whole nodes of 8; use a multiple of 8 .such as 8 or 16"):
        make_cluster(hw, 12)
    assert make_cluster(hw, 4).nodes == 1 and make_cluster(hw, 16).nodes == 2
    with pytest.raises(ParplanError, match="whole nodes"):
        load_cluster("a100x12")


def test_a_mixture_of_experts_config_loads_as_one_never_as_dense(tmp_path):
    cfg = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
           "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    m = load_model(str(path))
    assert (m.experts, m.top_k, m.expert_width) == (8, 2, 14336)
    assert round(m.total_params() / 1e8) == 467  # Mixtral 8x7B's 46.7B, not a dense 7B
    odd = tmp_path / "odd" / "config.json"  # (loaded models are cached by path)
    odd.parent.mkdir()
    odd.write_text(json.dumps(dict(cfg, moe_expert_dropout=0.1)))
    with pytest.raises(ParplanError, match="cannot map mixture-of-experts key 'moe_expert_dropout'"):
        load_model(str(odd))
    no_k = tmp_path / "no_k" / "config.json"
    no_k.parent.mkdir()
    no_k.write_text(json.dumps({k: v for k, v in cfg.items() if k != "num_experts_per_tok"}))
    with pytest.raises(ParplanError, match="no experts per token"):
        load_model(str(no_k))
    cfg["num_local_experts"] = 1  # a single expert is a dense MLP
    path.write_text(json.dumps(cfg))
    assert load_model(str(path)).ffn_hidden == 14336


@pytest.mark.parametrize("lines, message", [
    ("    forward_lone_rate: 0.6\n", "'forward_lone_rate' needs 'forward_blocks_per_sm: 2'"),
    ("    forward_blocks_per_sm: 2\n    forward_lone_rate: 0.4\n", r"'forward_lone_rate' must be in \[0.5, 1\]"),
    ("    forward_blocks_per_sm: 3\n", "'forward_blocks_per_sm' must be 1 or 2"),
    ("    forward_blocks_per_sm: 1.5\n", "must be a whole number"),
])
def test_an_attention_kernels_residency_is_one_or_two_blocks_with_a_sane_lone_rate(tmp_path, lines, message):
    text = open(load_hardware("h100-sxm").path).read()
    text = re.sub(r"    forward_(blocks_per_sm|lone_rate): .*\n", "", text)
    bad = text.replace("  cudnn:\n    seq:", "  cudnn:\n" + lines + "    seq:", 1)
    assert bad != text
    path = tmp_path / "p.yaml"
    path.write_text(bad)
    with pytest.raises(ParplanError, match=message):
        load_hardware(str(path))


@pytest.mark.parametrize("value,message", [("2.5", r"fractions in \(0, 2\]"), ("0", r"fractions in \(0, 2\]"),
                                           ("1.9", "runs faster than the peak")])
def test_an_attention_table_entry_cannot_put_the_kernel_past_the_peak(tmp_path, value, message):
    """An entry is a fraction of the profile's GEMM rate, which may exceed 1 (a kernel that outruns the typical
    GEMM) but not carry the kernel past the peak: entry x matmul efficiency <= 1 (H100: 0.739, so 1.9 is too much)."""
    text = open(load_hardware("h100-sxm").path).read()
    bad = text.replace("      128: [0.637,", f"      128: [{value},", 1)
    assert bad != text
    path = tmp_path / "p.yaml"
    path.write_text(bad)
    with pytest.raises(ParplanError, match=message):
        load_hardware(str(path))
