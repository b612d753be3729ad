"""Hugging Face ``config.json`` files as model specs: the key names each model family uses, and the
sequence length a config implies (its ``max_position_embeddings`` is a context window, not a training length)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import ParplanError
from .hf_moe import hf_moe_fields
from .model import ModelSpec, model_from_dict
from .registry import shipped
from .yamlio import read_yaml, require_mapping


# The sequence length of a Hugging Face config with rotary or ALiBi positions whose pre-training length no
# shipped spec gives (its max_position_embeddings is the context window, not the length it trained at):
# Llama 2's pre-training length (Touvron et al. 2023, arXiv 2307.09288, Table 1).
HF_DEFAULT_SEQ = 4096


def model_from_hf_config(cfg: Any, what: str, path: str = "") -> ModelSpec:
    """Map a Hugging Face ``config.json`` (Llama/Mistral/Qwen/GPT-2/OPT/BLOOM styles) to a ModelSpec."""
    cfg = require_mapping(cfg, what)
    if isinstance(cfg.get("text_config"), Mapping):  # multimodal wrappers
        cfg = cfg["text_config"]

    def pick(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    moe = hf_moe_fields(cfg, what)
    model_type = str(cfg.get("model_type", "")).lower()
    window = pick("max_position_embeddings", "n_positions", "seq_length", "n_ctx")
    hidden = pick("hidden_size", "n_embd", "d_model")
    act = str(pick("hidden_act", "activation_function", "hidden_activation", default="gelu")).lower()
    gated = model_type in {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"} or \
        act in {"silu", "swish", "swiglu"}
    inner = pick("intermediate_size_mlp", "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
    if inner is None and isinstance(hidden, int):
        inner = 4 * hidden
    heads = pick("num_attention_heads", "n_head", "num_heads")
    data = {
        "name": str(pick("_name_or_path", "name", default="") or Path(path).parent.name or model_type or "hf-model"),
        "layers": pick("num_hidden_layers", "n_layer", "num_layers"),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": pick("num_key_value_heads", "multi_query_group_num", default=heads),
        "head_dim": moe.pop("head_dim", cfg.get("head_dim")),
        "ffn_hidden": inner,
        "activation": "swiglu" if gated else ("relu" if act == "relu" else "gelu"),
        "vocab": pick("vocab_size", "padded_vocab_size"),
        "seq_len": window,
        "max_seq_len": window,
        "norm": "rmsnorm" if ("rms_norm_eps" in cfg or gated) else "layernorm",
        "position": "learned" if model_type in {"gpt2", "opt", "gpt_neo"} else
                    ("alibi" if model_type == "bloom" else "rope"),
        "bias": bool(cfg.get("attention_bias", cfg.get("bias", not gated))),
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", not gated)),
        "source": f"Hugging Face config {path}",
        **moe,
    }
    if window is None and data["position"] == "learned":
        raise ParplanError(f"{what}: no max_position_embeddings (or n_positions, n_ctx): a model with learned "
                           f"positions needs its position table's length")
    if data["position"] != "learned" and (window is None or isinstance(window, int)):
        data.update(_pretraining_length(data, window))
    note = data.pop("seq_note", "")
    return model_from_dict(data, what, path, seq_note=note)


def _pretraining_length(data: dict, window: int | None) -> dict:
    """seq_len (and a note saying why) for a config whose max_position_embeddings is a context window (or that
    gives none): the pre-training length of the shipped spec of the same shape, else ``HF_DEFAULT_SEQ``."""
    shape = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "experts")
    limit = window or HF_DEFAULT_SEQ
    given = (f"max_position_embeddings {window} is the context window" if window else
             "the config gives no max_position_embeddings")
    for path in sorted(set(shipped("models").values())):
        spec = model_from_dict(read_yaml(path), str(path), str(path))
        if all(getattr(spec, k) == data.get(k, 0 if k == "experts" else None) for k in shape):
            return {"seq_len": min(spec.seq_len, window or spec.seq_len),
                    "seq_note": f"seq {min(spec.seq_len, window or spec.seq_len)}: the pre-training length of "
                                f"{spec.name}, the shipped spec of the same shape ({given}); --seq sets another"}
    return {"seq_len": min(HF_DEFAULT_SEQ, limit),
            "seq_note": f"seq {min(HF_DEFAULT_SEQ, limit)}: parplan's default for a config without a known "
                        f"pre-training length ({given}); --seq sets another"}
