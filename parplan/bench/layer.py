"""One decoder layer of a :class:`~parplan.specs.model.ModelSpec` in plain PyTorch, timed forward and backward.

Pre-norm: ``x + proj(attn(norm(x)))``, then ``x + mlp(norm(x))``; fused QKV projection,
causal ``scaled_dot_product_attention`` with grouped KV heads, GELU / ReLU or SwiGLU MLP,
LayerNorm or RMSNorm. Rotary embeddings are left out (elementwise, a small share of the time).
A mixture-of-experts model's layer is one of its MoE layers: routed (and shared) experts in place of the MLP
(:class:`parplan.bench.moe.MoeFeedForward`, every expert on this device).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..specs.model import ModelSpec
from .moe import LOOP, MoeFeedForward, expert_launch


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused kernel where PyTorch has one: a training stack does not run RMSNorm as
        # half a dozen fp32 element-wise passes.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, launch: str = LOOP):
        super().__init__()
        self.spec = spec
        h, q, kv, f = spec.hidden, spec.q_dim, spec.kv_dim, spec.ffn_hidden
        norm = (lambda: nn.LayerNorm(h)) if spec.norm == "layernorm" else (lambda: _RMSNorm(h))
        self.norm1, self.norm2 = norm(), norm()
        self.qkv = nn.Linear(h, q + 2 * kv, bias=spec.bias)
        self.proj = nn.Linear(q, h, bias=spec.bias)
        gated = spec.activation == "swiglu"
        self.moe = MoeFeedForward(spec, launch) if spec.is_moe else None
        if self.moe is None:
            self.up = nn.Linear(h, 2 * f if gated else f, bias=spec.bias)
            self.down = nn.Linear(f, h, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).split([s.q_dim, s.kv_dim, s.kv_dim], dim=-1)
        q = q.view(b, t, s.heads, s.head_dim).transpose(1, 2)
        k = k.view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        # Grouped KV heads are read in place by the attention kernel (no repeated copies).
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=s.kv_heads != s.heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, s.q_dim))
        if self.moe is not None:
            return x + self.moe(self.norm2(x))
        u = self.up(self.norm2(x))
        if s.activation == "swiglu":
            gate, up = u.chunk(2, dim=-1)
            u = F.silu(gate) * up
        else:
            u = F.gelu(u) if s.activation == "gelu" else F.relu(u)
        return x + self.down(u)


def shape_text(spec: ModelSpec, batch: int, seq: int, dtype: str, launch: str = LOOP) -> str:
    """The layer's shape as ``compare`` reads it back (an MoE layer adds its experts and how they launch)."""
    text = (f"b={batch} s={seq} h={spec.hidden} heads={spec.heads} kv_heads={spec.kv_heads} "
            f"head_dim={spec.head_dim} ffn={spec.ffn_hidden} act={spec.activation} norm={spec.norm} "
            f"bias={str(spec.bias).lower()} dtype={dtype}")
    if spec.is_moe:
        text += (f" experts={spec.experts} top_k={spec.top_k} expert_ffn={spec.expert_width} "
                 f"shared={spec.shared_experts} shared_ffn={spec.shared_width} router={spec.router} "
                 f"expert_gemms={launch}")
    return text


def build_layer(spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                compute: torch.dtype | None = None) -> DecoderLayer:
    """The layer with its parameters in ``dtype`` on ``device`` (built there: an MoE layer's experts are
    gigabytes in fp32); its experts launch as PyTorch can for the ``compute`` dtype (default ``dtype``; bf16
    where autocast runs an fp32 layer)."""
    torch.manual_seed(0)
    with torch.device(device):
        return DecoderLayer(spec, expert_launch(device, compute or dtype)).to(dtype=dtype)


def time_layer(spec: ModelSpec, batch: int, seq: int, dtype: torch.dtype, device: torch.device,
               iters: int, warmup: int) -> tuple[list[float], list[float], int]:
    """Per-iteration forward and backward seconds, and the count of non-finite outputs."""
    layer = build_layer(spec, device, dtype)
    x = torch.randn(batch, seq, spec.hidden, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(batch, seq, spec.hidden, device=device, dtype=dtype)
    fwd, bwd = [], []
    bad = 0
    cuda = device.type == "cuda"
    for i in range(warmup + iters):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        if cuda:
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            y = layer(x)
            e1.record()
            y.backward(dy)
            e2.record()
            torch.cuda.synchronize(device)
            tf, tb = e0.elapsed_time(e1) / 1e3, e1.elapsed_time(e2) / 1e3
        else:
            t0 = time.perf_counter()
            y = layer(x)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            tf, tb = t1 - t0, t2 - t1
        if i >= warmup:
            fwd.append(tf)
            bwd.append(tb)
        if i == warmup + iters - 1:
            bad = int((~torch.isfinite(y.detach())).sum()) + int((~torch.isfinite(x.grad)).sum())
        del y
    return fwd, bwd, bad
