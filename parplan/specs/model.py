"""Transformer model specs: shapes from YAML or a Hugging Face config.json, and parameter counts.

A decoder-only transformer is fully described (for cost purposes) by its layer
count, hidden size, attention heads (and KV heads for GQA/MQA), head size, MLP
width and activation, vocabulary and sequence length. A mixture-of-experts model adds
its routed experts, the experts each token visits (top-k), shared experts, the expert
width and which layers keep a dense MLP; multi-head latent attention (DeepSeek-V2/V3)
adds its low-rank query and key-value projections (:mod:`parplan.specs.moe_spec`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ParplanError

from .moe_spec import MOE_KEYS, moe_fields
from .yamlio import check_keys, flag, names, number, require_mapping, text

ACTIVATIONS = ("gelu", "swiglu", "relu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "alibi", "none")
MAX_DIM = 10_000_000
# The keys a model spec may carry: the shapes, and documentation (family, source, aliases).
MODEL_KEYS = ("name", "family", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "activation",
              "norm", "position", "bias", "tied_embeddings", "parallel_layers", "causal", "vocab", "seq_len",
              "max_seq_len", "source", "aliases") + MOE_KEYS


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
    # ---- mixture of experts (experts = 0: a dense model); see parplan.specs.moe_spec
    experts: int = 0                # routed experts per MoE layer
    top_k: int = 0                  # routed experts each token visits
    shared_experts: int = 0         # experts every token visits (DeepSeek, Qwen2-MoE, Llama 4)
    expert_ffn: int = 0             # width of one routed expert's MLP (0: ffn_hidden)
    shared_ffn: int = 0             # width of one shared expert's MLP (0: expert_ffn)
    moe_first_dense: int = 0        # leading layers with a dense MLP (DeepSeek first_k_dense_replace)
    moe_every: int = 1              # of the rest, every n-th layer is MoE (Llama 4 interleave step, Qwen sparse step)
    moe_dense_layers: tuple[int, ...] = ()  # further dense layers by index (Qwen mlp_only_layers)
    router: str = "softmax"         # softmax or sigmoid gate scores
    capacity_factor: float | None = None   # tokens beyond capacity * mean are dropped (None: dropless)
    router_imbalance: float | None = None  # busiest device's routed tokens over the mean, where published
    # ---- multi-head latent attention (kv_lora_rank = 0: standard attention); head_dim = nope + rope
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    mtp_layers: int = 0             # multi-token-prediction modules (DeepSeek-V3), not in total_params()
    # Attention and MLP side by side on one normalized input, y = x + Attn(LN(x)) + MLP(LN(x)) (GPT-J,
    # PaLM Sec. 2): one norm per layer, one fused input projection, one TP all-reduce per block pass.
    parallel_layers: bool = False
    # Whether attention sees only earlier positions (a decoder) or every position (an encoder, or a kernel
    # launched without its causal mask, as MaxText's flash attention was until Nov 2023): the fused
    # kernel computes half the scores, or all of them.
    causal: bool = True

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

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, Sec. 2.1)."""
        return self.kv_lora_rank > 0

    @property
    def v_dim(self) -> int:
        """Size of one head's value (MLA: v_head_dim; else head_dim)."""
        return self.v_head_dim or self.head_dim

    def attention_params(self) -> int:
        h = self.hidden
        if self.mla:
            return self._mla_params()
        weights = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        biases = (self.q_dim + 2 * self.kv_dim + h) if self.bias else 0
        return weights + biases

    def _mla_params(self) -> int:
        """MLA (DeepSeek-V2 Sec. 2.1.2-2.1.3): the query through a rank-q_lora down/up pair (or one projection),
        the compressed KV latent with the shared rotary key, its up-projection to every head's key and value, the
        output projection, and the two latent RMSNorms."""
        h, a, qk, rope, c = self.hidden, self.heads, self.head_dim, self.qk_rope_dim, self.kv_lora_rank
        q = (h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * a * qk) if self.q_lora_rank else h * a * qk
        kv = h * (c + rope) + c + c * a * (qk - rope + self.v_dim)
        return q + kv + a * self.v_dim * h

    def _mlp(self, f: int) -> int:
        h = self.hidden
        weights = self.mlp_matrices * h * f
        biases = ((self.mlp_matrices - 1) * f + h) if self.bias else 0
        return weights + biases

    def mlp_params(self) -> int:
        """The dense MLP (of a dense layer; for an MoE model, of its dense layers)."""
        return self._mlp(self.ffn_hidden)

    # ---- mixture of experts
    @property
    def expert_width(self) -> int:
        return self.expert_ffn or self.ffn_hidden

    @property
    def shared_width(self) -> int:
        return self.shared_ffn or self.expert_width

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        """Indices of the MoE layers: past the first dense ones, every ``moe_every``-th (the last of each group,
        as Llama 4's interleave step and Qwen's decoder_sparse_step place them), less the listed dense ones."""
        if not self.is_moe:
            return ()
        dense = set(self.moe_dense_layers)
        return tuple(i for i in range(self.moe_first_dense, self.layers)
                     if (i - self.moe_first_dense + 1) % self.moe_every == 0 and i not in dense)

    @property
    def moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    def expert_params(self) -> int:
        """The routed experts of one MoE layer."""
        return self.experts * self._mlp(self.expert_width)

    def shared_expert_params(self) -> int:
        return self.shared_experts * self._mlp(self.shared_width)

    def router_params(self) -> int:
        return self.experts * self.hidden + (self.experts if self.bias else 0)

    def moe_layer_params(self) -> int:
        return self.attention_params() + self.router_params() + self.expert_params() + \
            self.shared_expert_params() + 2 * self.norm_params()

    def dense_layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.norm_params()

    def _layer_list(self) -> list[int]:
        moe = set(self.moe_layer_ids)
        return [self.moe_layer_params() if i in moe else self.dense_layer_params() for i in range(self.layers)]

    def busiest_layers(self, n, moe_only: bool = False):
        """Over every run of ``n`` consecutive layers (a pipeline stage), the most parameters (or, with
        ``moe_only``, the most MoE layers) one run holds; ``n`` may be an array."""
        moe = set(self.moe_layer_ids)
        per = [float(i in moe) if moe_only else float(p) for i, p in enumerate(self._layer_list())]
        csum = np.concatenate([[0.0], np.cumsum(per)])
        table = np.array([max(csum[j + k] - csum[j] for j in range(self.layers - k + 1)) for k in
                          range(self.layers + 1)])
        k = np.clip(np.asarray(n, float), 0, self.layers).astype(int)
        return table[k]

    def active_params(self) -> int:
        """Parameters one token passes through: the total less the routed experts it skips (embedding and head
        counted, as Mistral's 12.9B for Mixtral 8x7B counts them)."""
        if not self.is_moe:
            return self.total_params()
        return self.total_params() - self.moe_layers * (self.experts - self.top_k) * self._mlp(self.expert_width)

    def mtp_params(self) -> int:
        """Unique parameters of the multi-token-prediction modules (DeepSeek-V3, arXiv 2412.19437 Sec. 2.2): each
        one MoE layer, a 2h x h projection and three RMSNorms; they share the embedding and head."""
        layer = self.moe_layer_params() if self.is_moe else self.dense_layer_params()
        return self.mtp_layers * (layer + 2 * self.hidden * self.hidden + 3 * self.hidden)

    def norm_params(self) -> int:
        """Parameters of one norm: weight and bias for LayerNorm, weight only for RMSNorm."""
        return (2 if self.norm == "layernorm" else 1) * self.hidden

    def layer_params(self):
        """Parameters of one layer; for an MoE model the mean over its layers (dense and MoE). A parallel
        block has one norm."""
        if self.is_moe:
            return sum(self._layer_list()) / self.layers
        norms = 1 if self.parallel_layers else 2
        return self.attention_params() + self.mlp_params() + norms * self.norm_params()

    def embedding_params(self) -> int:
        pos = self.seq_len * self.hidden if self.position == "learned" else 0
        return self.vocab * self.hidden + pos

    def output_params(self) -> int:
        """The final norm plus the unembedding (zero when tied to the input embedding)."""
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

    def total_params(self) -> int:
        return self.non_embedding_params() + self.embedding_params() + self.output_params()

    def non_embedding_params(self) -> int:
        if self.is_moe:
            return sum(self._layer_list())
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
        bias=flag(data, "bias", what, True),
        tied_embeddings=flag(data, "tied_embeddings", what, True),
        parallel_layers=flag(data, "parallel_layers", what, False),
        causal=flag(data, "causal", what, True),
        source=str(data.get("source", "")),
        aliases=names(data, "aliases", what),
        path=path,
        **moe_fields(data, what, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                     layers=number(data, "layers", what, integer=True, maximum=100_000)),
    )


def with_seq_len(model: ModelSpec, seq_len: int | None) -> ModelSpec:
    """The same model trained or served at another sequence length."""
    if seq_len is None or seq_len == model.seq_len:
        return model
    if seq_len < 1 or seq_len > 100_000_000:
        raise ParplanError(f"sequence length must be between 1 and 1e8, got {seq_len}")
    return replace(model, seq_len=int(seq_len), seq_note="")
