"""Measure the kernels the framework profiles need on one GPU; write CSVs to the output folder.

1. attention.csv: causal scaled_dot_product_attention forward and backward per backend (FlashAttention-2,
   cuDNN, memory-efficient) for head sizes 64 and 128 from 1k to 128k tokens, with the GEMM rate
   of the same device (an 8192^3 bf16 product) to express it as a fraction of the GEMM rate.
2. fp8_gemm.csv: bf16 torch.mm against torch._scaled_mm FP8 (e4m3) with one scale per tensor
   (split and fast accumulation) and one per row, on the forward, data-gradient and weight-gradient
   shapes of linear layers (``--shapes=small``: GPT-2 large and Llama 3.2 1B blocks at 8192 tokens).
3. casts.csv: bf16 -> FP8 casts (amax then scale and cast; fused under torch.compile), per
   tensor and per row, and the fp32 -> bf16 weight cast of autocast.
4. elementwise.csv: forward + backward of the element-wise ops of a transformer block, eager
   (as transformers writes them) and under torch.compile: RMSNorm, LayerNorm, rotary embedding,
   SwiGLU, GELU, a residual add, and the fp32 cross-entropy of the logits.

usage: python scripts/gpu_stack_kernels.py OUT_DIR [--quick] [--parts=casts,elementwise,fp8_gemm,attention]
       [--shapes=layers|small]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import Table, timed  # noqa: E402

DEV = torch.device("cuda")
BF16 = torch.bfloat16
E4M3 = torch.float8_e4m3fn
QUICK = "--quick" in sys.argv


def gemm_rate() -> float:
    n = 8192
    a, b = torch.randn(n, n, device=DEV, dtype=BF16), torch.randn(n, n, device=DEV, dtype=BF16)
    t = timed(lambda: a @ b, reps=20, batch=5)
    return 2 * n ** 3 / t


def attention(out: str, gemm: float) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = Table(f"{out}/attention.csv", ["backend", "head_dim", "heads", "seq", "batch", "fwd_s", "bwd_s",
                                           "fwd_tflops", "bwd_tflops", "fwd_frac_gemm", "bwd_frac_gemm"])
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    seqs = [1024, 4096, 16384] if QUICK else [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
    for name, backend in backends.items():
        for head_dim in (64, 128):
            heads = 4096 // head_dim
            for seq in seqs:
                batch = max(1, 16384 // seq)
                if name == "efficient" and seq > 32768:
                    continue
                shape = (batch, heads, seq, head_dim)
                try:
                    q, k, v = (torch.randn(shape, device=DEV, dtype=BF16, requires_grad=True) for _ in range(3))
                    dy = torch.randn(shape, device=DEV, dtype=BF16)
                    with sdpa_kernel([backend]):
                        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
                        y = fwd()
                        reps = 3 if seq >= 65536 else 10
                        t_f = timed(fwd, reps=reps, warmup=2)
                        t_fb = timed(lambda: torch.autograd.grad(fwd(), (q, k, v), dy), reps=reps, warmup=2)
                    del y
                except RuntimeError as exc:
                    print(f"skip {name} d={head_dim} s={seq}: {str(exc).splitlines()[0][:120]}", flush=True)
                    torch.cuda.empty_cache()
                    continue
                flops = 4.0 * batch * heads * seq * seq * head_dim / 2  # causal half
                t_b = max(t_fb - t_f, 1e-9)
                table.add(backend=name, head_dim=head_dim, heads=heads, seq=seq, batch=batch, fwd_s=t_f, bwd_s=t_b,
                          fwd_tflops=flops / t_f / 1e12, bwd_tflops=2.5 * flops / t_b / 1e12,
                          fwd_frac_gemm=flops / t_f / gemm, bwd_frac_gemm=2.5 * flops / t_b / gemm)
                del q, k, v, dy
                torch.cuda.empty_cache()


SHAPES = {  # (tokens, ((model, hidden, q width, kv width, ffn), ...))
    "layers": ((4096, 16384), (("llama3-8b", 4096, 4096, 1024, 14336), ("llama3-70b-tp8", 8192, 1024, 128, 3584),
                               ("gpt3-2.7b", 2560, 2560, 2560, 10240))),
    "small": ((8192,), (("gpt2-large", 1280, 1280, 1280, 5120), ("llama3.2-1b", 2048, 2048, 512, 8192))),
}


def linear_shapes():
    """(name, tokens, in, out) of linear layers: Llama 3 8B and 70B (tp 8) blocks, GPT-3 2.7B; or small ones."""
    which = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--shapes=")), "layers")
    token_counts, models = SHAPES[which]
    shapes = []
    for tokens in token_counts:
        for model, h, q, kv, f in models:
            shapes += [(f"{model} qkv", tokens, h, q + 2 * kv), (f"{model} o", tokens, q, h),
                       (f"{model} up", tokens, h, f), (f"{model} down", tokens, f, h)]
    return shapes[:4] if QUICK else shapes


def fp8_gemm(out: str) -> None:
    table = Table(f"{out}/fp8_gemm.csv", ["shape", "pass", "m", "k", "n", "bf16_s", "fp8_tensor_s", "fp8_row_s",
                                          "bf16_tflops", "fp8_tensor_tflops", "fp8_row_tflops", "fp8_fast_s",
                                          "fp8_fast_tflops"])
    for name, tokens, din, dout in linear_shapes():
        # y = x W^T (m=tokens, k=din, n=dout); dgrad dx = dy W (m=tokens, k=dout, n=din);
        # wgrad dW = dy^T x (m=dout, k=tokens, n=din).
        for pas, (m, k, n) in (("fprop", (tokens, din, dout)), ("dgrad", (tokens, dout, din)),
                               ("wgrad", (dout, tokens, din))):
            a = torch.randn(m, k, device=DEV, dtype=BF16)
            b = torch.randn(n, k, device=DEV, dtype=BF16)  # row-major [n, k]; used as its transpose
            t_bf = timed(lambda: a @ b.t(), reps=20, batch=5)
            a8, b8 = a.to(E4M3), b.to(E4M3)
            one = torch.ones((), device=DEV, dtype=torch.float32)
            t_t = timed(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=BF16),
                        reps=20, batch=5)
            # fast accumulation: no promotion of partial sums to fp32 (TE's forward GEMM, torchao's output GEMM)
            t_f = timed(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=BF16,
                                                 use_fast_accum=True), reps=20, batch=5)
            sa = torch.ones(m, 1, device=DEV, dtype=torch.float32)
            sb = torch.ones(1, n, device=DEV, dtype=torch.float32)
            try:
                t_r = timed(lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=BF16),
                            reps=20, batch=5)
            except RuntimeError as exc:
                print(f"rowwise unavailable: {str(exc).splitlines()[0][:100]}")
                t_r = float("nan")
            flops = 2.0 * m * k * n
            table.add(shape=name, **{"pass": pas}, m=m, k=k, n=n, bf16_s=t_bf, fp8_tensor_s=t_t, fp8_row_s=t_r,
                      bf16_tflops=flops / t_bf / 1e12, fp8_tensor_tflops=flops / t_t / 1e12,
                      fp8_row_tflops=flops / t_r / 1e12, fp8_fast_s=t_f, fp8_fast_tflops=flops / t_f / 1e12)


def casts(out: str) -> None:
    table = Table(f"{out}/casts.csv", ["cast", "mode", "elements", "time_s", "bytes_min", "gbps_min"])
    n = 16384 * 4096
    x = torch.randn(16384, 4096, device=DEV, dtype=BF16)
    w32 = torch.randn(16384, 4096, device=DEV, dtype=torch.float32)

    def tensorwise(t):
        scale = 448.0 / t.abs().max().float().clamp(min=1e-12)
        return (t.float() * scale).clamp(-448, 448).to(E4M3), scale

    def rowwise(t):
        scale = 448.0 / t.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        return (t.float() * scale).clamp(-448, 448).to(E4M3), scale

    def tensorwise_t(t):  # the cast and its transposed copy (Hopper FP8 GEMMs take K-major operands)
        q, s = tensorwise(t)
        return q, q.t().contiguous(), s

    cases = [("bf16->fp8 tensorwise", tensorwise, x, 2 + 1), ("bf16->fp8 tensorwise+transpose", tensorwise_t, x, 2 + 2),
             ("bf16->fp8 rowwise", rowwise, x, 2 + 1), ("fp32->bf16 weight", lambda t: t.to(BF16), w32, 4 + 2)]
    for name, fn, t, min_bytes_per in cases:
        for mode in ("eager", "compiled"):
            f = fn if mode == "eager" else torch.compile(fn)
            t_s = timed(lambda: f(t), reps=20, batch=5)
            table.add(cast=name, mode=mode, elements=n, time_s=t_s, bytes_min=n * min_bytes_per,
                      gbps_min=n * min_bytes_per / t_s / 1e9)


def elementwise(out: str) -> None:
    from parplan.bench.model import RMSNorm, rotate_half

    table = Table(f"{out}/elementwise.csv", ["op", "mode", "tokens", "width", "fwd_s", "fwd_bwd_s", "bwd_s",
                                             "fused_bytes_fwd", "fused_bytes_bwd"])
    tokens, h, f, heads, hd, vocab = 8192, 4096, 14336, 32, 128, 128256
    rms, ln = RMSNorm(h).to(DEV), torch.nn.LayerNorm(h).to(DEV)
    cos = torch.randn(tokens, hd, device=DEV, dtype=BF16)
    sin = torch.randn(tokens, hd, device=DEV, dtype=BF16)

    def rope(q):
        return q * cos + rotate_half(q) * sin

    def swiglu(a, b):
        return F.silu(a) * b

    def residual(a, b):
        return a + b

    def loss(logits, labels):
        return F.cross_entropy(logits.float(), labels)

    labels = torch.randint(0, vocab, (tokens // 2,), device=DEV)  # the logits below have tokens // 2 rows
    r = lambda *shape: torch.randn(*shape, device=DEV, dtype=BF16, requires_grad=True)  # noqa: E731
    cases = [  # (op, fn, inputs, width, fused fwd bytes/elem, fused bwd bytes/elem)
        ("rmsnorm", lambda x: rms(x), (r(tokens, h),), h, 4, 6),
        ("layernorm", lambda x: ln(x), (r(tokens, h),), h, 4, 6),
        ("rope_q", rope, (r(1, heads, tokens, hd),), heads * hd, 4, 4),
        ("swiglu", swiglu, (r(tokens, f), r(tokens, f)), f, 6, 10),
        ("gelu", lambda x: F.gelu(x), (r(tokens, f),), f, 4, 6),
        ("residual", residual, (r(tokens, h), r(tokens, h)), h, 6, 0),
        ("cross_entropy", lambda x: loss(x, labels), (r(tokens // 2, vocab),), vocab, 2, 4),
    ]
    with torch.autocast("cuda", dtype=BF16):
        for op, fn, inputs, width, fb_f, fb_b in cases:
            rows = inputs[0].shape[0] * (inputs[0].shape[2] if inputs[0].dim() == 4 else 1)
            for mode in ("eager", "compiled"):
                g = fn if mode == "eager" else torch.compile(fn)
                y = g(*inputs)
                dy = torch.randn_like(y) if y.dim() else torch.ones_like(y)
                t_f = timed(lambda: g(*inputs), reps=20, batch=3)
                t_fb = timed(lambda: torch.autograd.grad(g(*inputs), inputs, dy), reps=20, batch=3)
                table.add(op=op, mode=mode, tokens=rows, width=width, fwd_s=t_f, fwd_bwd_s=t_fb, bwd_s=t_fb - t_f,
                          fused_bytes_fwd=fb_f * rows * width, fused_bytes_bwd=fb_b * rows * width)
            del y, dy


def main() -> None:
    out = next((a for a in sys.argv[1:] if not a.startswith("--")), "reports/stack-kernels")
    os.makedirs(out, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} cudnn {torch.backends.cudnn.version()}",
          flush=True)
    gemm = gemm_rate()
    print(f"bf16 8192^3 GEMM: {gemm / 1e12:.1f} TFLOP/s", flush=True)
    with open(f"{out}/device.txt", "w") as fh:
        fh.write(f"{torch.cuda.get_device_name()}\ntorch {torch.__version__}\ncudnn {torch.backends.cudnn.version()}\n"
                 f"gemm_bf16_8192_tflops {gemm / 1e12:.2f}\n")
    chosen = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--parts=")),
                  "casts,elementwise,fp8_gemm,attention")
    parts = {"casts": casts, "elementwise": elementwise, "fp8_gemm": fp8_gemm, "attention": lambda o: attention(o, gemm)}
    for name in chosen.split(","):
        try:
            parts[name](out)
        except Exception as exc:  # noqa: BLE001 - keep the other parts' rows
            print(f"{name} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
