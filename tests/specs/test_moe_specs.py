"""Mixture-of-experts and latent-attention specs: the shipped models' parameter counts against their published
counts, the Hugging Face key names of each family, and one-line refusals."""
import json

import pytest

import parplan
from parplan.errors import ParplanError
from parplan.specs.hf_config import model_from_hf_config
from parplan.specs.model import model_from_dict

# (spec, published total, published active, how the publisher counts active, relative tolerance)
PUBLISHED = [
    ("mixtral-8x7b", 46.7e9, 12.9e9, "all", 0.005),      # Mistral AI: 46.7B, 12.9B active
    ("mixtral-8x22b", 141e9, 39e9, "all", 0.005),        # Mistral AI: 141B, 39B active
    ("deepseek-v3", 671e9, 37e9, "all", 0.02),           # arXiv 2412.19437: 671B, 37B activated
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, "all", 0.02),       # arXiv 2505.09388 Table 2: 30.5B / 3.3B
    ("qwen3-235b-a22b", 235e9, 22e9, "all", 0.01),       # 235B / 22B
    ("gpt-oss-120b", 116.83e9, 5.13e9, "no-input-embedding", 0.001),  # arXiv 2508.10925 Table 1
    ("llama4-maverick", 400e9, 17e9, "all", 0.02),       # Meta: 400B / 17B
]


@pytest.mark.parametrize("name,total,active,convention,tol", PUBLISHED)
def test_total_and_active_parameters_match_the_published_counts(name, total, active, convention, tol):
    m = parplan.load_model(name)
    got_active = m.active_params() - (m.vocab * m.hidden if convention == "no-input-embedding" else 0)
    assert m.total_params() == pytest.approx(total, rel=tol)
    assert got_active == pytest.approx(active, rel=max(tol, 0.015))


def test_llama4_scout_counts_its_text_model_and_deepseek_its_mtp_module_apart():
    scout = parplan.load_model("llama4-scout")
    # Meta prints 109B with the vision encoder; the text model is 107.8B, 17B active.
    assert scout.total_params() == pytest.approx(107.77e9, rel=1e-3)
    assert scout.active_params() == pytest.approx(17e9, rel=0.015)
    v3 = parplan.load_model("deepseek-v3")
    # README_WEIGHTS.md: the MTP module adds 11.5B unique parameters; total_params() is the 671B main model.
    assert v3.mtp_params() == pytest.approx(11.5e9, rel=0.015)
    assert v3.total_params() + v3.mtp_params() < 685e9


def test_a_moe_layer_is_counted_by_hand():
    """Mixtral 8x7B, one MoE layer: attention 4096*(4096+2*1024+4096), 8 experts of 3*4096*14336, a 8x4096 router,
    two RMSNorms."""
    m = parplan.load_model("mixtral-8x7b")
    attention = 4096 * (4096 + 2 * 1024 + 4096)
    assert m.attention_params() == attention
    assert m.moe_layer_params() == attention + 8 * 3 * 4096 * 14336 + 8 * 4096 + 2 * 4096
    assert m.active_params() == m.total_params() - 32 * 6 * 3 * 4096 * 14336


def test_latent_attention_parameters_by_hand():
    """DeepSeek-V3 MLA: q 7168x1536 + norm + 1536x(128*192); kv 7168x576 + norm + 512x(128*256); out 128*128x7168."""
    m = parplan.load_model("deepseek-v3")
    q = 7168 * 1536 + 1536 + 1536 * 128 * 192
    kv = 7168 * 576 + 512 + 512 * 128 * 256
    assert m.attention_params() == q + kv + 128 * 128 * 7168


def test_which_layers_are_moe():
    v3, mav = parplan.load_model("deepseek-v3"), parplan.load_model("llama4-maverick")
    assert v3.moe_layer_ids[:2] == (3, 4) and v3.moe_layers == 58
    assert mav.moe_layer_ids[:3] == (1, 3, 5) and mav.moe_layers == 24
    assert float(v3.busiest_layers(4, moe_only=True)) == 4 and float(v3.busiest_layers(61, moe_only=True)) == 58
    assert float(mav.busiest_layers(1, moe_only=True)) == 1 and float(mav.busiest_layers(4, moe_only=True)) == 2


DEEPSEEK_V3 = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
               "intermediate_size": 18432, "num_hidden_layers": 61, "num_attention_heads": 128,
               "num_key_value_heads": 128, "vocab_size": 129280, "rms_norm_eps": 1e-6, "max_position_embeddings": 163840,
               "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1, "first_k_dense_replace": 3,
               "moe_layer_freq": 1, "moe_intermediate_size": 2048, "n_group": 8, "topk_group": 4,
               "norm_topk_prob": True, "routed_scaling_factor": 2.5, "q_lora_rank": 1536, "kv_lora_rank": 512,
               "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "tie_word_embeddings": False,
               "attention_bias": False, "hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc",
               "num_nextn_predict_layers": 1, "ep_size": 1, "aux_loss_alpha": 0.001, "seq_aux": True}
QWEN3_30B = {"model_type": "qwen3_moe", "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144,
             "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
             "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1,
             "mlp_only_layers": [], "norm_topk_prob": True, "vocab_size": 151936, "max_position_embeddings": 40960,
             "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "router_aux_loss_coef": 0.001,
             "output_router_logits": False}
GPT_OSS_120B = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "head_dim": 64,
                "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 36,
                "num_attention_heads": 64, "num_key_value_heads": 8, "num_local_experts": 128, "num_experts_per_tok": 4,
                "experts_per_token": 4, "vocab_size": 201088, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False, "router_aux_loss_coef": 0.9}
LLAMA4_MAVERICK = {"model_type": "llama4", "tie_word_embeddings": False, "text_config": {
    "model_type": "llama4_text", "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 8192,
    "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
    "head_dim": 128, "num_local_experts": 128, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
    "vocab_size": 202048, "max_position_embeddings": 1048576, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "output_router_logits": False}}


@pytest.mark.parametrize("cfg,shipped", [(DEEPSEEK_V3, "deepseek-v3"), (QWEN3_30B, "qwen3-30b-a3b"),
                                         (GPT_OSS_120B, "gpt-oss-120b"), (LLAMA4_MAVERICK, "llama4-maverick")])
def test_hugging_face_configs_load_as_the_shipped_specs(cfg, shipped):
    got, want = model_from_hf_config(cfg, "config.json"), parplan.load_model(shipped)
    for field in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "experts", "top_k",
                  "shared_experts", "expert_width", "shared_width", "moe_layer_ids", "router", "kv_lora_rank",
                  "q_lora_rank", "qk_rope_dim", "v_dim"):
        assert getattr(got, field) == getattr(want, field), field
    assert got.total_params() == want.total_params()


def test_qwen2_moe_shared_expert_and_explicit_moe_layer_lists():
    qwen2 = dict(QWEN3_30B, model_type="qwen2_moe", shared_expert_intermediate_size=5632, num_experts=60,
                 num_experts_per_tok=4, moe_intermediate_size=1408, mlp_only_layers=[0, 47])
    m = model_from_hf_config(qwen2, "qwen2")
    assert (m.shared_experts, m.shared_width, m.expert_width) == (1, 5632, 1408)
    assert m.moe_layers == 46 and 0 not in m.moe_layer_ids and 47 not in m.moe_layer_ids
    listed = json.loads(json.dumps(LLAMA4_MAVERICK))
    listed["text_config"].pop("interleave_moe_layer_step")
    listed["text_config"]["moe_layers"] = list(range(1, 48, 2))
    assert model_from_hf_config(listed, "l4").moe_layer_ids == tuple(range(1, 48, 2))


def test_unmappable_expert_keys_stay_an_error():
    with pytest.raises(ParplanError, match="cannot map mixture-of-experts key 'moe_layer_freq'"):
        model_from_hf_config(dict(DEEPSEEK_V3, moe_layer_freq=2), "cfg")
    with pytest.raises(ParplanError, match="cannot map mixture-of-experts key 'moe_num_experts'"):
        model_from_hf_config({"model_type": "ernie", "hidden_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "vocab_size": 100, "moe_num_experts": [8, 8]}, "cfg")


BASE = {"name": "m", "layers": 4, "hidden": 64, "heads": 4, "ffn_hidden": 128, "activation": "swiglu", "vocab": 100,
        "seq_len": 32}


@pytest.mark.parametrize("extra,message", [
    ({"experts": 8, "top_k": 9}, "top-k 9 exceeds the 8 routed experts"),
    ({"experts": 8}, "needs 'top_k'"),
    ({"top_k": 2}, "'top_k' describes mixture-of-experts layers, but 'experts' is not given"),
    ({"experts": 8, "top_k": 2, "router": "softmaxx"}, "unknown router 'softmaxx' .did you mean 'softmax'"),
    ({"experts": 8, "top_k": 2, "capacity_factor": 0.5}, "capacity_factor 0.5 is below 1"),
    ({"q_lora_rank": 16}, "needs 'kv_lora_rank'"),
])
def test_bad_moe_fields_are_one_line_errors(extra, message):
    with pytest.raises(ParplanError, match=message):
        model_from_dict(dict(BASE, **extra), "spec")
