"""The routed-expert block of a mixture-of-experts :class:`~parplan.specs.model.ModelSpec`, as plain PyTorch
runs it on one device (every expert local, no expert parallelism).

Router GEMM, fp32 gate scores (softmax or sigmoid), top-k (the chosen scores weight the experts' outputs;
the renormalization over the k chosen some routers add is a per-token op on k values, left out: it moves no
rows); the sort-based permute (the token copies sorted by expert); the experts' gate/up GEMMs,
activation and down GEMMs; the weighted unpermute (index put, product with the gate scores, sum over the
k copies); the shared experts on every token. These are the kernels parplan prices for an eager MoE block
(:func:`parplan.cost.moe.block_kernels` with ``permute="eager"``; the eager passes' ratios were measured on
this same sequence of ops, ``reports/moe/h100-2026-12-06``).

The experts launch as one ``torch._grouped_mm`` where PyTorch has grouped kernels for this device and dtype
(:func:`expert_launch`; torchtitan's ``GroupedExperts``), with the row offsets summed on the GPU, so the host
never waits; elsewhere as a loop of one GEMM per expert, which reads the tokens per expert on the host once
per forward (a device-to-host sync).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.ops import GROUPED, LOOP
from ..specs.model import ModelSpec


def expert_launch(device: torch.device, dtype: torch.dtype) -> str:
    """``grouped`` where ``torch._grouped_mm`` runs as one grouped kernel for ``dtype`` on ``device`` (its bf16
    CUTLASS kernels: compute capability 9.x and 10.x; elsewhere PyTorch copies the offsets to the host and loops
    over its own GEMMs), else ``loop``."""
    if device.type != "cuda" or dtype != torch.bfloat16 or not hasattr(torch, "_grouped_mm"):
        return LOOP
    return GROUPED if torch.cuda.get_device_capability(device)[0] in (9, 10) else LOOP


def _activation(spec: ModelSpec, u: torch.Tensor) -> torch.Tensor:
    if spec.activation == "swiglu":
        gate, up = u.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(u) if spec.activation == "gelu" else F.relu(u)


class MoeFeedForward(nn.Module):
    """Routed experts (and shared experts) in place of a dense MLP; input and output ``[b, t, hidden]``."""

    def __init__(self, spec: ModelSpec, launch: str = LOOP):
        super().__init__()
        if launch not in (GROUPED, LOOP):
            raise ValueError(f"launch must be {GROUPED} or {LOOP}, not {launch!r}")
        self.spec, self.launch = spec, launch
        h, f, e = spec.hidden, spec.expert_width, spec.experts
        up = 2 * f if spec.activation == "swiglu" else f
        self.router = nn.Linear(h, e, bias=spec.bias)
        # Stacked as torchtitan's GroupedExperts holds them: [experts, in, out]; biases where the spec has them
        # (gpt-oss), as parplan counts them (ModelSpec._mlp).
        self.w_up = nn.Parameter(torch.randn(e, h, up) * 0.02)
        self.w_down = nn.Parameter(torch.randn(e, f, h) * 0.02)
        self.b_up = nn.Parameter(torch.zeros(e, up)) if spec.bias else None
        self.b_down = nn.Parameter(torch.zeros(e, h)) if spec.bias else None
        shared = spec.shared_experts * spec.shared_width
        self.shared_up = nn.Linear(h, 2 * shared if spec.activation == "swiglu" else shared, bias=spec.bias) \
            if shared else None
        self.shared_down = nn.Linear(shared, h, bias=spec.bias) if shared else None

    def _experts(self, rows: torch.Tensor, w: torch.Tensor, b, counts: torch.Tensor, splits) -> torch.Tensor:
        """Each expert's rows (sorted by expert) times its weight (plus its bias), in autocast's dtype where it
        is on (a grouped GEMM is not on autocast's list, so its operands are cast here as autocast casts a
        matmul's); ``splits``: the tokens per expert on the host (the loop's), read once per forward."""
        kind = rows.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else rows.dtype
        rows, w = rows.to(dtype), w.to(dtype)
        if self.launch == GROUPED:
            offsets = torch.cumsum(counts, 0, dtype=torch.int32)   # on the GPU: no host read
            out = torch._grouped_mm(rows, w, offs=offsets)
        else:
            outs, start = [], 0
            for i, c in enumerate(splits):
                outs.append(rows[start:start + c] @ w[i])
                start += c
            out = torch.cat(outs)
        if b is None:
            return out
        # Each row's expert bias; the output size is given, so the GPU needs no host read for it.
        return out + torch.repeat_interleave(b.to(dtype), counts.long(), dim=0, output_size=rows.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.router(tokens).float()
        scores = torch.softmax(logits, dim=-1) if s.router == "softmax" else torch.sigmoid(logits)
        probs, chosen = torch.topk(scores, s.top_k, dim=-1)
        flat = chosen.flatten()
        order = torch.argsort(flat)
        rows = tokens.repeat_interleave(s.top_k, dim=0)[order]
        counts = torch.zeros(s.experts, dtype=torch.int32, device=x.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        splits = counts.tolist() if self.launch == LOOP else None   # the loop's one host read
        up = self._experts(rows, self.w_up, self.b_up, counts, splits)
        out = self._experts(_activation(s, up), self.w_down, self.b_down, counts, splits)
        back = torch.empty_like(out)
        back[order] = out
        y = (back.view(-1, s.top_k, shape[-1]) * probs.to(back.dtype).unsqueeze(-1)).sum(dim=1)
        if self.shared_up is not None:
            y = y + self.shared_down(_activation(s, self.shared_up(tokens)))
        return y.view(shape)

