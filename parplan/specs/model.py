"""Transformer model specs: shapes from YAML or a Hugging Face config.json, and parameter counts.

A decoder-only transformer is fully described (for cost purposes) by its layer
count, hidden size, attention heads (and KV heads for GQA/MQA), head size, MLP
width and activation, vocabulary and sequence length.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ParplanError
from .registry import shipped, shipped_names
from .yamlio import check_keys, names, number, read_yaml, require_mapping, suggest, text

ACTIVATIONS = ("gelu", "swiglu", "relu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "alibi", "none")
MAX_DIM = 10_000_000
# Expert counts in the Hugging Face configs of Mixtral, Qwen-MoE, DeepSeek, gpt-oss and Llama 4.
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# The keys a model spec may carry: the shapes, and documentation (family, source, aliases).
MODEL_KEYS = ("name", "family", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "activation",
              "norm", "position", "bias", "tied_embeddings", "vocab", "seq_len", "source", "aliases")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_hidden: int  # for swiglu: the width of each of the gate and up projections
    activation: str
    vocab: int
    seq_len: int
    norm: str = "layernorm"
    position: str = "learned"
    bias: bool = True
    tied_embeddings: bool = True
    source: str = ""
    aliases: tuple[str, ...] = ()
    path: str = ""

    # ---- parameter counts (exact, from the shapes) ----
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def mlp_matrices(self) -> int:
        """Weight matrices in the MLP: 3 for gated (SwiGLU), else 2."""
        return 3 if self.activation == "swiglu" else 2

    def attention_params(self) -> int:
        h = self.hidden
        weights = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        biases = (self.q_dim + 2 * self.kv_dim + h) if self.bias else 0
        return weights + biases

    def mlp_params(self) -> int:
        h, f = self.hidden, self.ffn_hidden
        weights = self.mlp_matrices * h * f
        biases = ((self.mlp_matrices - 1) * f + h) if self.bias else 0
        return weights + biases

    def norm_params(self) -> int:
        """Parameters of one norm: weight and bias for LayerNorm, weight only for RMSNorm."""
        return (2 if self.norm == "layernorm" else 1) * self.hidden

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.norm_params()

    def embedding_params(self) -> int:
        pos = self.seq_len * self.hidden if self.position == "learned" else 0
        return self.vocab * self.hidden + pos

    def output_params(self) -> int:
        """The final norm plus the unembedding (zero when tied to the input embedding)."""
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

    def total_params(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params() + self.output_params()

    def non_embedding_params(self) -> int:
        return self.layers * self.layer_params()


def vocab_shard(vocab: int, tp, multiple: int = 128):
    """Rows of the vocabulary on each of ``tp`` ranks once the vocabulary is padded to ``multiple * tp``.

    Megatron-LM pads the vocabulary with dummy tokens to a multiple of
    ``--make-vocab-size-divisible-by`` (default 128) times the tensor-parallel size
    (``_vocab_size_with_padding`` in its tokenizer), so every shard is a whole number of
    GPU-friendly rows: GPT-2's 50257 becomes 50304 at tp=1. vLLM pads to 64.
    """
    tp = np.asarray(tp, float)
    return np.ceil(vocab / (multiple * tp)) * multiple


# --------------------------------------------------------------------------- loading


def model_from_dict(data: Any, what: str, path: str = "") -> ModelSpec:
    data = require_mapping(data, what)
    check_keys(data, MODEL_KEYS, what)
    hidden = number(data, "hidden", what, integer=True, maximum=MAX_DIM)
    heads = number(data, "heads", what, integer=True, maximum=MAX_DIM)
    kv_heads = number(data, "kv_heads", what, required=False, integer=True, default=heads, maximum=MAX_DIM)
    if heads % kv_heads:
        raise ParplanError(f"{what}: heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    head_dim = number(data, "head_dim", what, required=False, integer=True, default=None, maximum=MAX_DIM)
    if head_dim is None:
        if hidden % heads:
            raise ParplanError(f"{what}: hidden ({hidden}) is not divisible by heads ({heads}); give head_dim")
        head_dim = hidden // heads
    activation = text(data, "activation", what, choices=ACTIVATIONS)
    return ModelSpec(
        name=text(data, "name", what),
        layers=number(data, "layers", what, integer=True, maximum=100_000),
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_hidden=number(data, "ffn_hidden", what, integer=True, maximum=MAX_DIM),
        activation=activation,
        vocab=number(data, "vocab", what, integer=True, maximum=100_000_000),
        seq_len=number(data, "seq_len", what, integer=True, maximum=100_000_000),
        norm=text(data, "norm", what, required=False, choices=NORMS, default="layernorm"),
        position=text(data, "position", what, required=False, choices=POSITIONS, default="learned"),
        bias=_flag(data, "bias", what, True),
        tied_embeddings=_flag(data, "tied_embeddings", what, True),
        source=str(data.get("source", "")),
        aliases=names(data, "aliases", what),
        path=path,
    )


def _flag(data: Mapping[str, Any], key: str, what: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParplanError(f"{what}: field '{key}' must be true or false, got {value!r}")
    return value


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

    for key in MOE_KEYS:
        if isinstance(cfg.get(key), (int, float)) and not isinstance(cfg.get(key), bool) and cfg[key] > 1:
            raise ParplanError(f"{what} is a mixture-of-experts model ({key}: {cfg[key]}); parplan plans dense "
                               f"models only, and would count it as a dense model of the wrong size")
    model_type = str(cfg.get("model_type", "")).lower()
    hidden = pick("hidden_size", "n_embd", "d_model")
    act = str(pick("hidden_act", "activation_function", "hidden_activation", default="gelu")).lower()
    gated = model_type in {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"} or \
        act in {"silu", "swish", "swiglu"}
    inner = pick("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
    if inner is None and isinstance(hidden, int):
        inner = 4 * hidden
    heads = pick("num_attention_heads", "n_head", "num_heads")
    data = {
        "name": str(pick("_name_or_path", "name", default="") or Path(path).parent.name or model_type or "hf-model"),
        "layers": pick("num_hidden_layers", "n_layer", "num_layers"),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": pick("num_key_value_heads", "multi_query_group_num", default=heads),
        "head_dim": cfg.get("head_dim"),
        "ffn_hidden": inner,
        "activation": "swiglu" if gated else ("relu" if act == "relu" else "gelu"),
        "vocab": pick("vocab_size", "padded_vocab_size"),
        "seq_len": pick("max_position_embeddings", "n_positions", "seq_length", "n_ctx"),
        "norm": "rmsnorm" if ("rms_norm_eps" in cfg or gated) else "layernorm",
        "position": "learned" if model_type in {"gpt2", "opt", "gpt_neo"} else
                    ("alibi" if model_type == "bloom" else "rope"),
        "bias": bool(cfg.get("attention_bias", cfg.get("bias", not gated))),
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", not gated)),
        "source": f"Hugging Face config {path}",
    }
    return model_from_dict(data, what, path)


def model_names() -> list[str]:
    """Canonical names of the shipped models."""
    return shipped_names("models")


@lru_cache(maxsize=256)
def _load_model_path(path: Path) -> ModelSpec:
    if path.suffix == ".json":
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ParplanError(f"cannot read {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ParplanError(f"{path}: malformed JSON (line {exc.lineno}): {exc.msg}") from None
        return model_from_hf_config(cfg, str(path), str(path))
    return model_from_dict(read_yaml(path), str(path), str(path))


def load_model(name_or_path: str) -> ModelSpec:
    """A model by name or alias (``gpt3``), by YAML path, or from a local HF ``config.json``."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ParplanError("model name must be a non-empty string")
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml", ".json")) or path.is_file() or path.is_dir():
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ParplanError(f"model file not found: {name_or_path}")
        return _load_model_path(path.resolve())
    table = shipped("models")
    key = name_or_path.lower()
    if key not in table:
        raise ParplanError(f"unknown model '{name_or_path}'{suggest(key, table)}; see 'parplan list models'")
    return _load_model_path(table[key])


def with_seq_len(model: ModelSpec, seq_len: int | None) -> ModelSpec:
    """The same model trained or served at another sequence length."""
    if seq_len is None or seq_len == model.seq_len:
        return model
    if seq_len < 1 or seq_len > 100_000_000:
        raise ParplanError(f"sequence length must be between 1 and 1e8, got {seq_len}")
    return replace(model, seq_len=int(seq_len))
