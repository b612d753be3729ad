"""Time whole training steps of a model spec: forward with the loss, backward, optimizer, peak memory.

One step is what a training loop does per optimizer step: ``micro_batches`` forward and backward
passes of ``micro_batch`` sequences of ``seq`` random tokens (gradients accumulate), then AdamW.
Precision is the one plain PyTorch and torchtitan use on one device: fp32 parameters under
``torch.autocast`` to bf16 (``transformers``' Trainer with ``bf16=True``; torchtitan's
``maybe_enable_amp`` without FSDP). With several ranks every block is sharded by FSDP2
(``fully_shard``, bf16 compute and fp32 gradient reduction: torchtitan's ``apply_fsdp``), and
autocast is off. ``compile`` compiles each block and the loss (torchtitan's ``apply_compile``);
``fp8`` swaps every linear layer but the LM head for torchao's ``Float8Linear`` (tensorwise or
rowwise scaling), as torchtitan's float8 converter does.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ParplanError
from ..specs.model import ModelSpec
from .model import Transformer, causal_lm_loss, parameter_count
from .moe import LOOP, expert_launch

FP8_RECIPES = ("tensorwise", "rowwise")


@dataclass(frozen=True)
class StepResult:
    step_s: float
    forward_s: float       # forward and loss, summed over the step's micro-batches
    backward_s: float
    optimizer_s: float
    peak_memory_bytes: int
    params: int
    steps: int
    step_times_s: tuple[float, ...] = ()
    note: str = ""
    attention: str = ""   # the fused attention kernel SDPA chose (flash2, cudnn, efficient, math)


# torch.nn.attention.SDPBackend names -> the kernel names hardware profiles measure curves for.
SDPA_KERNELS = {"FLASH_ATTENTION": "flash2", "CUDNN_ATTENTION": "cudnn", "EFFICIENT_ATTENTION": "efficient",
                "MATH": "math", "OVERRIDEABLE": "other"}


def sdpa_kernel(spec: ModelSpec, seq: int, micro_batch: int, device: torch.device,
                dtype: torch.dtype = torch.bfloat16) -> str:
    """The backend scaled_dot_product_attention picks for this model's causal attention, as PyTorch's
    dispatcher chooses it (``torch._fused_sdp_choice``); empty where it cannot be asked."""
    if device.type != "cuda" or not hasattr(torch, "_fused_sdp_choice"):
        return ""
    from torch.nn.attention import SDPBackend

    q = torch.empty(micro_batch, spec.heads, seq, spec.head_dim, device=device, dtype=dtype)
    kv = torch.empty(micro_batch, spec.kv_heads, seq, spec.head_dim, device=device, dtype=dtype)
    try:
        choice = torch._fused_sdp_choice(q, kv, kv, None, 0.0, True, enable_gqa=spec.kv_heads != spec.heads)
    except (RuntimeError, TypeError):
        return ""
    return SDPA_KERNELS.get(SDPBackend(choice).name, "")


def _fp8_convert(model: torch.nn.Module, recipe: str) -> None:
    """torchao's Float8Linear for every linear layer but the LM head whose sizes are multiples of 16."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as exc:
        raise ParplanError(f"FP8 steps need torchao ({exc})") from None
    config = Float8LinearConfig.from_recipe_name(recipe)

    def keep(module, fqn):
        # The LM head and an MoE router stay in 16 bits, as torchtitan's float8 runs of MoE models filter
        # "output" and "router.gate" (its DeepSeek-V3 float8 numerics test); grouped experts are no Linear.
        return (isinstance(module, torch.nn.Linear) and fqn != "output" and not fqn.endswith("router")
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    convert_to_float8_training(model, config=config, module_filter_fn=keep)


def _shard(model: torch.nn.Module) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def step_model(spec: ModelSpec, seq: int, device: torch.device, *, compile: bool = False, fp8: str = "",
               recompute_layers: int = 0):
    """(model, loss function) as a step runs them on ``device``: torchao FP8 linears under ``fp8`` (a recipe),
    each block and the loss compiled under ``compile`` (torchtitan's ``apply_compile``), the first
    ``recompute_layers`` blocks checkpointed."""
    torch.manual_seed(0)
    launch = expert_launch(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    with torch.device(device):  # built where it runs: a host copy per rank of an 8B model is 32 GB of host memory
        model = Transformer(spec, seq, checkpointed=recompute_layers, experts=launch)
    if fp8:
        if device.type != "cuda":
            raise ParplanError("FP8 steps need a GPU")
        if fp8 not in FP8_RECIPES:
            raise ParplanError(f"unknown FP8 recipe '{fp8}'; choose from {', '.join(FP8_RECIPES)}")
        _fp8_convert(model, fp8)
    loss_fn = causal_lm_loss
    if compile:
        for i, block in enumerate(model.layers):  # a loop over experts reads their rows on the host: a graph break
            model.layers[i] = torch.compile(block, fullgraph=block.moe is None or launch != LOOP)
        loss_fn = torch.compile(causal_lm_loss)
    return model, loss_fn


def time_step(spec: ModelSpec, seq: int, micro_batch: int, device: torch.device, *, micro_batches: int = 1,
              compile: bool = False, fp8: str = "", iters: int = 5, warmup: int = 3, sharded: bool = False,
              barrier: Callable[[], None] | None = None, recompute_layers: int = 0) -> StepResult:
    """Median times of ``iters`` steps after ``warmup`` (which include compilation)."""
    cuda = device.type == "cuda"
    model, loss_fn = step_model(spec, seq, device, compile=compile, fp8=fp8, recompute_layers=recompute_layers)
    params = parameter_count(model)
    if sharded:
        _shard(model)
    autocast = not sharded and cuda
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda, foreach=None if cuda else False)
    tokens = torch.randint(0, spec.vocab, (micro_batches, micro_batch, seq + 1), device=device)

    def clock():
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed(a, b) -> float:
        if cuda:
            return a.elapsed_time(b) / 1e3
        return b - a

    fwd, bwd, opt = [], [], []
    if cuda:
        torch.cuda.synchronize(device)
    for step in range(warmup + iters):
        if step == warmup and cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        if barrier is not None:
            barrier()
        tf = tb = 0.0
        for m in range(micro_batches):
            x, y = tokens[m, :, :-1], tokens[m, :, 1:]
            t0 = clock()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model(x), y) / micro_batches
            t1 = clock()
            loss.backward()
            t2 = clock()
            if cuda:
                torch.cuda.synchronize(device)
            tf, tb = tf + elapsed(t0, t1), tb + elapsed(t1, t2)
        t3 = clock()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = clock()
        if cuda:
            torch.cuda.synchronize(device)
        if not torch.isfinite(loss.detach()).all():
            raise ParplanError(f"step {step}: the loss is not finite")
        if step >= warmup:
            fwd.append(tf)
            bwd.append(tb)
            opt.append(elapsed(t3, t4))
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else 0
    steps = [f + b + o for f, b, o in zip(fwd, bwd, opt)]
    return StepResult(attention=sdpa_kernel(spec, seq, micro_batch, device),
                      step_s=statistics.median(steps), forward_s=statistics.median(fwd),
                      backward_s=statistics.median(bwd), optimizer_s=statistics.median(opt),
                      peak_memory_bytes=peak, params=params, steps=iters, step_times_s=tuple(steps))
