"""The mixture-of-experts and latent-attention keys of Hugging Face ``config.json`` files, as spec fields.

Key names as the released configs spell them:

* Mixtral (``mixtral``): ``num_local_experts``, ``num_experts_per_tok``; each expert is ``intermediate_size`` wide.
* Qwen2-MoE / Qwen3-MoE (``qwen2_moe``, ``qwen3_moe``): ``num_experts``, ``num_experts_per_tok``,
  ``moe_intermediate_size``, ``decoder_sparse_step`` (layer i is MoE when (i + 1) % step == 0),
  ``mlp_only_layers``, ``shared_expert_intermediate_size`` (one shared expert; Qwen2-MoE).
* DeepSeek-V2/V3 (``deepseek_v2``, ``deepseek_v3``): ``n_routed_experts``, ``n_shared_experts`` (each
  ``moe_intermediate_size`` wide), ``first_k_dense_replace``, ``moe_layer_freq``, ``scoring_func``,
  ``num_nextn_predict_layers`` and the latent attention's ``q_lora_rank`` (null: one query projection),
  ``kv_lora_rank``, ``qk_rope_head_dim``, ``qk_nope_head_dim``, ``v_head_dim``.
* gpt-oss (``gpt_oss``): ``num_local_experts``, ``num_experts_per_tok`` / ``experts_per_token``.
* Llama 4 (``llama4_text``, under ``text_config``): ``num_local_experts``, ``num_experts_per_tok``,
  ``interleave_moe_layer_step`` or the list ``moe_layers``, one shared expert as wide as a routed one
  (``intermediate_size``), dense layers of ``intermediate_size_mlp``, sigmoid gate scores
  (``Llama4TextMoe`` in transformers).

Keys that only steer training or routing details (auxiliary-loss weights, group-limited routing,
score normalisation) do not change a cost and are read past; any other key naming experts is an
error, never a silently dense model.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ParplanError

EXPERT_COUNT = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
TOP_K = ("num_experts_per_tok", "experts_per_token", "moe_top_k", "moe_k")
# Read past: routing-quality and loss settings, or keys this module maps.
KNOWN = set(EXPERT_COUNT + TOP_K) | {
    "moe_intermediate_size", "shared_expert_intermediate_size", "n_shared_experts", "first_k_dense_replace",
    "moe_layer_freq", "decoder_sparse_step", "mlp_only_layers", "interleave_moe_layer_step", "moe_layers",
    "scoring_func", "norm_topk_prob", "routed_scaling_factor", "n_group", "topk_group", "topk_method",
    "aux_loss_alpha", "seq_aux", "router_aux_loss_coef", "output_router_logits", "router_jitter_noise",
    "router_z_loss_coef", "ep_size", "num_nextn_predict_layers", "moe_router_dtype"}
MARKERS = ("expert", "moe_", "router")


def _whole(cfg: Mapping[str, Any], key: str, what: str):
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParplanError(f"{what}: cannot map mixture-of-experts key '{key}': {value!r} (parplan reads a whole "
                           f"number there)")
    return value


def hf_moe_fields(cfg: Mapping[str, Any], what: str) -> dict:
    """Spec fields (``experts``, ``top_k``, ..., ``kv_lora_rank``, ``head_dim`` for MLA) from a config mapping."""
    out: dict[str, Any] = {}
    out.update(_mla(cfg, what))
    count_key = next((k for k in EXPERT_COUNT if cfg.get(k) is not None), None)
    experts = _whole(cfg, count_key, what) if count_key else None
    if not experts or experts <= 1:
        return out
    unknown = sorted(k for k in cfg if k not in KNOWN and any(m in k.lower() for m in MARKERS))
    if unknown:
        raise ParplanError(f"{what}: cannot map mixture-of-experts key '{unknown[0]}' (mapped: the expert count, "
                           f"top-k, expert widths, shared experts and which layers are MoE); parplan will not "
                           f"read this config as a dense model")
    k_key = next((k for k in TOP_K if cfg.get(k) is not None), None)
    if k_key is None:
        raise ParplanError(f"{what}: {count_key}: {experts} names a mixture of experts but the config gives no "
                           f"experts per token ({', '.join(TOP_K)})")
    model_type = str(cfg.get("model_type", "")).lower()
    layers = _whole(cfg, "num_hidden_layers", what) or 0
    out.update(experts=experts, top_k=_whole(cfg, k_key, what))
    width = _whole(cfg, "moe_intermediate_size", what) or _whole(cfg, "intermediate_size", what)
    out["expert_ffn"] = width
    if cfg.get("n_shared_experts"):
        out.update(shared_experts=_whole(cfg, "n_shared_experts", what), shared_ffn=width)
    elif cfg.get("shared_expert_intermediate_size"):
        out.update(shared_experts=1, shared_ffn=_whole(cfg, "shared_expert_intermediate_size", what))
    elif model_type.startswith("llama4"):
        out.update(shared_experts=1, shared_ffn=width)
    out.update(_moe_layers(cfg, what, layers))
    scoring = cfg.get("scoring_func", "sigmoid" if model_type.startswith("llama4") else "softmax")
    out["router"] = scoring
    return out


def _moe_layers(cfg: Mapping[str, Any], what: str, layers: int) -> dict:
    """Which layers are MoE: an explicit list, DeepSeek's first-k-dense, or an interleave step."""
    listed = cfg.get("moe_layers")
    if isinstance(listed, list):
        if any(isinstance(i, bool) or not isinstance(i, int) for i in listed):
            raise ParplanError(f"{what}: cannot map mixture-of-experts key 'moe_layers': {listed!r}")
        return {"moe_dense_layers": [i for i in range(layers) if i not in set(listed)]}
    out: dict[str, Any] = {}
    first = _whole(cfg, "first_k_dense_replace", what)
    if first:
        out["moe_first_dense"] = first
    freq = cfg.get("moe_layer_freq", 1)
    if freq != 1:
        raise ParplanError(f"{what}: cannot map mixture-of-experts key 'moe_layer_freq': {freq!r} (parplan maps "
                           f"DeepSeek's every-layer MoE, moe_layer_freq 1)")
    step = _whole(cfg, "decoder_sparse_step", what) or _whole(cfg, "interleave_moe_layer_step", what)
    if step and step > 1:
        out["moe_every"] = step
    dense = cfg.get("mlp_only_layers") or []
    if dense:
        if not isinstance(dense, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in dense):
            raise ParplanError(f"{what}: cannot map mixture-of-experts key 'mlp_only_layers': {dense!r}")
        out["moe_dense_layers"] = dense
    return out


def _mla(cfg: Mapping[str, Any], what: str) -> dict:
    """Multi-head latent attention: DeepSeek-V2/V3's low-rank query and key-value projections."""
    if not cfg.get("kv_lora_rank"):
        return {}
    rank = _whole(cfg, "kv_lora_rank", what)
    rope, nope = _whole(cfg, "qk_rope_head_dim", what), _whole(cfg, "qk_nope_head_dim", what)
    if not rope or not nope:
        raise ParplanError(f"{what}: latent attention (kv_lora_rank {rank}) needs qk_rope_head_dim and "
                           f"qk_nope_head_dim")
    out = {"kv_lora_rank": rank, "qk_rope_dim": rope, "head_dim": nope + rope,
           "v_head_dim": _whole(cfg, "v_head_dim", what) or nope}
    if cfg.get("q_lora_rank"):
        out["q_lora_rank"] = _whole(cfg, "q_lora_rank", what)
    mtp = _whole(cfg, "num_nextn_predict_layers", what)
    if mtp:
        out["mtp_layers"] = mtp
    return out
