"""Transformer model specs: shapes from YAML or a Hugging Face config.json, and parameter counts.

A decoder-only transformer is fully described (for cost purposes) by its layer
count, hidden size, attention heads (and KV heads for GQA/MQA), head size, MLP
width and activation, vocabulary and sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from ..errors import ParplanError

from .yamlio import check_keys, names, number, require_mapping, text

ACTIVATIONS = ("gelu", "swiglu", "relu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "alibi", "none")
MAX_DIM = 10_000_000
# The keys a model spec may carry: the shapes, and documentation (family, source, aliases).
MODEL_KEYS = ("name", "family", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "activation",
              "norm", "position", "bias", "tied_embeddings", "parallel_layers", "vocab", "seq_len", "max_seq_len",
              "source", "aliases")


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
    seq_len: int               # the sequence length it trains at (the pre-training length by default)
    norm: str = "layernorm"
    position: str = "learned"
    bias: bool = True
    tied_embeddings: bool = True
    source: str = ""
    aliases: tuple[str, ...] = ()
    path: str = ""
    max_seq_len: int | None = None  # the context window it can hold (None: not given)
    seq_note: str = ""              # where seq_len came from, when it was not given
    # Attention and MLP side by side on one normalized input, y = x + Attn(LN(x)) + MLP(LN(x)) (GPT-J,
    # PaLM Sec. 2): one norm per layer, one fused input projection, one TP all-reduce per block pass.
    parallel_layers: bool = False

    @property
    def context_limit(self) -> int | None:
        """The most tokens of context the model holds: its window, or its learned position table."""
        if self.max_seq_len is not None:
            return self.max_seq_len
        return self.seq_len if self.position == "learned" else None

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
        norms = 1 if self.parallel_layers else 2
        return self.attention_params() + self.mlp_params() + norms * self.norm_params()

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


def model_from_dict(data: Any, what: str, path: str = "", seq_note: str = "") -> ModelSpec:
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
    seq_len = number(data, "seq_len", what, integer=True, maximum=100_000_000)
    max_seq_len = number(data, "max_seq_len", what, required=False, integer=True, maximum=100_000_000)
    if max_seq_len is not None and max_seq_len < seq_len:
        raise ParplanError(f"{what}: max_seq_len ({max_seq_len}) is below seq_len ({seq_len})")
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
        seq_len=seq_len,
        max_seq_len=max_seq_len,
        seq_note=seq_note,
        norm=text(data, "norm", what, required=False, choices=NORMS, default="layernorm"),
        position=text(data, "position", what, required=False, choices=POSITIONS, default="learned"),
        bias=_flag(data, "bias", what, True),
        tied_embeddings=_flag(data, "tied_embeddings", what, True),
        parallel_layers=_flag(data, "parallel_layers", what, False),
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


def with_seq_len(model: ModelSpec, seq_len: int | None) -> ModelSpec:
    """The same model trained or served at another sequence length."""
    if seq_len is None or seq_len == model.seq_len:
        return model
    if seq_len < 1 or seq_len > 100_000_000:
        raise ParplanError(f"sequence length must be between 1 and 1e8, got {seq_len}")
    return replace(model, seq_len=int(seq_len), seq_note="")
