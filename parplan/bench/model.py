"""A whole decoder-only transformer of a :class:`~parplan.specs.model.ModelSpec`, written as plain PyTorch runs it.

The ops are those of Hugging Face ``transformers``' Llama and GPT-2 code in eager mode, so a
timed step shows what the ``pytorch`` framework profile charges: RMSNorm as its eight aten
ops in fp32 (``LlamaRMSNorm``), rotary embeddings by ``rotate_half`` (four passes over q and
over k), SwiGLU as ``silu(gate) * up``, residual adds of their own, causal
``scaled_dot_product_attention`` reading grouped KV heads in place, and the loss as fp32
logits into ``F.cross_entropy`` (``ForCausalLMLoss``). LayerNorm and GELU are one aten kernel
each (``nn.LayerNorm``, ``F.gelu``), learned positions an embedding table. No dropout. A mixture-of-experts
spec's MoE layers hold routed (and shared) experts in the MLP's place (:class:`parplan.bench.moe.MoeFeedForward`).
``checkpointed`` runs the first N blocks under ``torch.utils.checkpoint`` (a block recompute; all of them: full recompute).
``torch.compile`` of each block (as torchtitan compiles them) fuses the element-wise chains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..specs.model import ModelSpec
from .moe import LOOP, MoeFeedForward


class RMSNorm(nn.Module):
    """Llama's RMSNorm as ``transformers`` writes it: upcast, mean of squares, rsqrt, scale, downcast."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(seq: int, head_dim: int, device, dtype, base: float = 10000.0):
    """cos and sin of the rotary angles, [seq, head_dim], in the activation dtype."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Block(nn.Module):
    """Pre-norm decoder block: ``x + o(attn(norm(x)))``, then ``x + mlp(norm(x))``; separate q, k, v
    projections (and gate, up for SwiGLU), as torchtitan and ``transformers`` hold them."""

    def __init__(self, spec: ModelSpec, moe: str = ""):
        """``moe``: how this block's experts launch (``grouped`` or ``loop``); empty for a dense block."""
        super().__init__()
        self.spec = spec
        h, q, kv, f = spec.hidden, spec.q_dim, spec.kv_dim, spec.ffn_hidden
        norm = (lambda: nn.LayerNorm(h)) if spec.norm == "layernorm" else (lambda: RMSNorm(h))
        self.attention_norm, self.ffn_norm = norm(), norm()
        self.wq = nn.Linear(h, q, bias=spec.bias)
        self.wk = nn.Linear(h, kv, bias=spec.bias)
        self.wv = nn.Linear(h, kv, bias=spec.bias)
        self.wo = nn.Linear(q, h, bias=spec.bias)
        self.moe = MoeFeedForward(spec, moe) if moe else None
        if self.moe is None:
            self.w1 = nn.Linear(h, f, bias=spec.bias)
            if spec.activation == "swiglu":
                self.w3 = nn.Linear(h, f, bias=spec.bias)
            self.w2 = nn.Linear(f, h, bias=spec.bias)

    def forward(self, x: torch.Tensor, cos=None, sin=None) -> torch.Tensor:
        s = self.spec
        b, t, _ = x.shape
        y = self.attention_norm(x)
        q = self.wq(y).view(b, t, s.heads, s.head_dim).transpose(1, 2)
        k = self.wk(y).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.wv(y).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        if cos is not None:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=s.kv_heads != s.heads)
        x = x + self.wo(a.transpose(1, 2).contiguous().view(b, t, s.q_dim))
        y = self.ffn_norm(x)
        if self.moe is not None:
            return x + self.moe(y)
        if s.activation == "swiglu":
            u = F.silu(self.w1(y)) * self.w3(y)
        elif s.activation == "gelu":
            u = F.gelu(self.w1(y))
        else:
            u = F.relu(self.w1(y))
        return x + self.w2(u)


class Transformer(nn.Module):
    """Embedding, ``spec.layers`` blocks, final norm and the LM head (tied to the embedding if the spec says)."""

    def __init__(self, spec: ModelSpec, seq: int, checkpointed: int = 0, experts: str = LOOP):
        """``experts``: how the MoE layers' experts launch (``grouped`` or ``loop``; a dense spec has none)."""
        super().__init__()
        self.spec, self.seq = spec, seq
        self.checkpointed = checkpointed  # the first N blocks recomputed in the backward (a block recompute)
        self.tok_embeddings = nn.Embedding(spec.vocab, spec.hidden)
        self.pos_embeddings = nn.Embedding(seq, spec.hidden) if spec.position == "learned" else None
        moe = set(spec.moe_layer_ids)
        self.layers = nn.ModuleList(Block(spec, experts if i in moe else "") for i in range(spec.layers))
        self.norm = nn.LayerNorm(spec.hidden) if spec.norm == "layernorm" else RMSNorm(spec.hidden)
        self.output = nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings.weight[: tokens.shape[1]]
        cos = sin = None
        if self.spec.position == "rope":
            cos, sin = rope_tables(tokens.shape[1], self.spec.head_dim, x.device,
                                   torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type)
                                   else x.dtype)
        for i, block in enumerate(self.layers):
            if self.training and i < self.checkpointed:  # keeps the block's input, runs its forward again
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        return self.output(self.norm(x))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``transformers``' ``ForCausalLMLoss``: the logits upcast to fp32, then mean cross-entropy."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(0, 1))


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied table counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
