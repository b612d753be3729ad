"""HBM traffic of a block's element-wise ops, fused or run as eager PyTorch's separate aten kernels.

Every count is bytes per element of the tensor the op works on, for 16-bit activations (2 B) with
fp32 (4 B) intermediates where the code upcasts, read from the code that runs them and summed
kernel by kernel (each eager aten kernel reads its inputs from HBM and writes its output; views
launch nothing). ``kernels`` is how many launches each costs, forward and backward.

* ``norm`` (RMSNorm; LayerNorm is one ``native_layer_norm`` kernel either way). Fused: read x,
  write y; backward read x and dy, write dx (Megatron/TE, Inductor). Eager (``transformers``'
  LlamaRMSNorm, torchtitan's RMSNorm): ``x.float()`` 2+4, ``pow`` 4+4, ``mean`` 4, ``x * rsqrt``
  4+4, ``.to(bf16)`` 4+2, ``weight *`` 2+2 = 36 B forward over 7 kernels; autograd of the same
  ops (weight-grad product and sum, the casts back, the two products, the mean's expand, the
  square's 2x, the accumulation of x's two gradients) is about 84 B over 12 kernels.
* ``rope`` (per element of q and of k). Fused: read, write, both ways. Eager ``rotate_half``:
  ``q*cos`` 2+2, ``neg`` of one half 1+1, ``cat`` 2+2, ``*sin`` 2+2, the add 4+2 = 20 B over 5
  kernels; backward two products, the negation, the two slices' zero-filled gradients and three
  accumulations, about 30 B over 8 kernels.
* ``activation`` (per element of the MLP width). SwiGLU fused: read gate and up, write the
  product (6 B); backward read both and dy, write both gradients (10 B). Eager: ``silu`` 2+2 and
  the product 4+2 = 10 B; backward the product's two gradients 6+6 and silu's 6 = 18 B. GELU is
  one aten kernel either way (read, write; backward read two, write one).
* ``residual`` (per element of the hidden state). Eager: the add (read two, write one) and,
  backward, the accumulation of the residual stream's two gradients (read two, write one).
* ``transposes`` (per element of the attention output): eager PyTorch makes it contiguous before
  the output projection (``transpose(1, 2).contiguous()``): a copy each way.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traffic:
    fwd_bytes: float   # HBM bytes per element, forward
    bwd_bytes: float   # ... backward
    fwd_kernels: int = 1
    bwd_kernels: int = 1


# (family, implementation) -> traffic per element at 16-bit activations.
TRAFFIC = {
    ("rmsnorm", "fused"): Traffic(4, 6),
    ("rmsnorm", "eager"): Traffic(36, 84, 7, 12),
    ("layernorm", "fused"): Traffic(4, 6),
    ("layernorm", "eager"): Traffic(4, 6),
    ("rope", "fused"): Traffic(4, 4),
    ("rope", "eager"): Traffic(20, 30, 5, 8),
    ("swiglu", "fused"): Traffic(6, 10),
    ("swiglu", "eager"): Traffic(10, 18, 2, 3),
    ("gelu", "fused"): Traffic(4, 6),
    ("gelu", "eager"): Traffic(4, 6),
    ("relu", "fused"): Traffic(4, 6),
    ("relu", "eager"): Traffic(4, 6),
    ("residual", "eager"): Traffic(6, 6),
    ("transposes", "eager"): Traffic(4, 4),
}


def traffic(family: str, implementation: str) -> Traffic:
    """Bytes per element and launches of one element-wise op as the framework runs it."""
    return TRAFFIC[(family, implementation)]


# ---- the loss over the logits, per logit (16-bit logits in)
# vocab-parallel (Megatron): read 16-bit logits, write fp32, max / sum / exp passes in fp32 forward;
# read the fp32 softmax and write the 16-bit gradient backward. Eager fp32 (``logits.float()`` then
# ``F.cross_entropy``): the cast 2+4, log-softmax 4+4 (two reads of its input) +4, forward; the
# zero-filled NLL gradient 4, log-softmax backward 4+4+4, the cast back 4+2, backward. Fused
# (flash-attn's cross-entropy, or compiled): one read forward, read and overwrite in place backward.
# te-fused (Transformer Engine's Triton parallel cross-entropy, Megatron-Core --cross-entropy-fusion-impl te;
# NVIDIA/TransformerEngine v2.7 transformer_engine/pytorch/triton/cross_entropy.py): online_softmax_kernel
# reads the logits, cross_entropy_kernel reads them again and writes their gradient over them, forward; the
# backward's element_mul_kernel scales that gradient in place (read and write). From 01bbe3eea (2026-07, PR
# 3193) TE writes the gradient to a new fp32 tensor instead, which this does not describe.
LOSS_TRAFFIC = {
    "vocab-parallel": Traffic(14, 6, 3, 2),
    "eager-fp32": Traffic(18, 22, 3, 4),
    "fused": Traffic(2, 4),
    "te-fused": Traffic(6, 4, 2, 1),
}
# What the loss holds per logit at its peak, which is the start of its backward, as (tensors in the
# activation dtype, fp32 bytes): eager fp32, the log-softmax output, its gradient and the input gradient
# (3 x 4 fp32 bytes; the forward's logits and fp32 copy are freed by then); fused (compiled), the logits it
# keeps and their gradient (2 in the activation dtype); vocab-parallel (Megatron), the logits and the fp32
# softmax it keeps, whose buffer the backward overwrites with the gradient (1, 4; not measured). At 16
# bits: 12, 4 and 6 bytes. Measured on one H100 by scripts/gpu_memory_phases.py
# (reports/memory/h100-2026-12-06): 12.4 and 12.5 bytes per logit eager (Llama 3.2 1B, 128k vocabulary;
# GPT-2 large, 50k), 4.4 and 4.5 compiled, the rest being the final norm. te-fused holds the logits' buffer,
# which carries their gradient from the forward on (1, 0).
LOSS_MEMORY = {"vocab-parallel": (1, 4), "eager-fp32": (0, 12), "fused": (2, 0), "te-fused": (1, 0)}


def loss_memory_bytes_per_logit(loss: str, activation_bytes: float) -> float:
    """Bytes per logit the loss holds at its peak (:data:`LOSS_MEMORY`) with activations of that many bytes."""
    tensors, fp32_bytes = LOSS_MEMORY[loss]
    return tensors * activation_bytes + fp32_bytes


# ---- autocast's weight casts, per parameter: read fp32, write 16 bits forward; the 16-bit weight
# gradient cast back to fp32 backward.
WEIGHT_CAST_BYTES = (6, 6)


# ---- FP8 casts of GEMM operands, per element (16-bit in, 1-byte out): ``separate`` = an amax pass
# (read), then scale and cast (read, write); backward the output gradient the same and its
# transposed copy for the weight gradient (read 1, write 1). ``fused`` = the cast written by the
# producing kernel with its transpose (TE's fused norm/activation and cast-transpose kernels,
# Inductor): one 1-byte write each. ``amax-fused`` = the producer finds the amax as it writes its 16-bit
# output, then one pass reads that and writes the cast and its transpose (read 2, write 1 + 1); an output
# gradient or a weight also pays its amax pass (read 2): Transformer Engine's current scaling, whose
# scale needs the whole tensor's amax before any element is cast (TE normalization.cpp
# FUSED_NORM_AMAX_FP8). Weights: cast and transposed once per micro-batch or per step.
FP8_CAST_BYTES = {  # mode -> (forward input, backward output gradient, weight)
    "separate": (5, 7, 7),
    "amax-fused": (4, 6, 6),
    "fused": (2, 4, 4),
}
# Row-wise scaling casts each operand along both axes (one per GEMM it feeds): twice the casts.
FP8_CAST_MULTIPLIER = {"delayed": 1, "current": 1, "tensorwise": 1, "rowwise": 2, "blockwise": 2, "mxfp8": 2}


# ---- the optimizer step, per parameter. Fused Adam with fp32 master weights beside 16-bit ones:
# read master, m, v and the gradient, write master, m, v and the 16-bit copy. Fused Adam on fp32
# parameters: no 16-bit copy. Foreach (torch multi-tensor, one kernel per operation): weight decay
# 4+4, lerp of m 8+4, v's product and addcmul 8+4 and 8+4, sqrt 4+4, + eps 4+4, addcdiv 12+4.
# ``master_bytes`` and ``moment_bytes``: the master copy's and m and v's width, 4 or 2 in bf16 (Apex
# DistributedFusedAdam ``dtype``, Megatron-Core's ``--exp-avg-dtype``); fp32 parameters stay 4 bytes.
def optimizer_bytes_per_param(optimizer: str, master_weights: str, grad_bytes: int, master_bytes: int = 4,
                              moment_bytes: int = 4) -> float:
    copy = master_weights == "fp32-copy"
    if optimizer == "fused":
        held = (master_bytes if copy else 4) + 2 * moment_bytes
        return 2 * held + grad_bytes + (2 if copy else 0)
    return 8 + 12 + 12 + 12 + 8 + 8 + 16 + (grad_bytes - 4) + (4 if copy else 0)
