"""Timed PyTorch measurements for one rank: collectives (with result checks), matmul and HBM copy.

Each ``*_case`` returns a :class:`Case`: ``run`` does one timed call, ``reset`` restores the
inputs before the checked call, ``check`` counts wrong elements of the result. Inputs are
rank-dependent: rank ``r`` holds ``v(r) * w`` with ``v(r) = r % 7 + 1`` and ``w = 1, 2, 3, 1, ...``,
so every reduced, gathered or exchanged element has a closed-form expected value.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from .items import Item

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "uint8": torch.uint8}
# Largest integer every partial sum of which the dtype holds exactly.
EXACT_LIMIT = {"fp32": 2.0**24, "bf16": 256.0, "fp16": 2048.0}
# Relative rounding of one result element (fp32 allows for TF32 matmuls).
EPS = {"fp32": 2.0**-10, "bf16": 2.0**-8, "fp16": 2.0**-11}

_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class Case:
    run: Callable[[], None]
    reset: Callable[[], None]
    check: Callable[[], int]


def value_of(rank: int) -> float:
    return float(rank % 7 + 1)


def pattern(count: int, dtype: str, device: torch.device, start: int = 0) -> torch.Tensor:
    """``w[start:start+count]`` of the repeating 1, 2, 3 pattern, without a full-size index tensor."""
    base = torch.tensor([1.0, 2.0, 3.0], dtype=TORCH_DTYPES[dtype], device=device)
    reps = (start % 3 + count + 2) // 3 + 1
    return base.repeat(reps)[start % 3: start % 3 + count].contiguous()


def count_wrong(got: torch.Tensor, expected: torch.Tensor, dtype: str, terms: int) -> int:
    """Elements of ``got`` that differ from ``expected``: exactly while sums stay exact, else beyond rounding."""
    if expected.numel() == 0:
        return 0
    peak = float(expected.abs().max())
    if peak <= EXACT_LIMIT[dtype]:
        return int((got != expected).sum())
    tol = EPS[dtype] * max(1, terms)
    bad = ~torch.isclose(got.float(), expected.float(), rtol=tol, atol=0.0)
    return int(bad.sum())


def collective_case(item: Item, rank: int, group, device: torch.device, shift: int = 0) -> Case:
    """The nccl-tests buffer of ``item.size_bytes`` for this rank's group, and the op on it.

    ``shift`` adds to this rank's value (in its inputs and in what it expects of itself): the
    other ranks must then find wrong elements, which tests the checks themselves.
    """
    members: Sequence[int] = item.layout.group_of(rank)
    n = len(members)
    me = members.index(rank)
    dtype, count = item.dtype, item.count
    tdtype = TORCH_DTYPES[dtype]

    def value(r: int) -> float:
        return value_of(r) + (shift if r == rank else 0)

    vs = torch.tensor([value(r) for r in members], dtype=tdtype, device=device)
    total = float(sum(value(r) for r in members))
    mine = value(rank)
    op = item.op
    chunk = count // n

    if op == "all_reduce":
        buf = torch.empty(count, dtype=tdtype, device=device)

        def reset() -> None:
            buf.copy_(pattern(count, dtype, device)).mul_(mine)

        return Case(lambda: dist.all_reduce(buf, group=group), reset,
                    lambda: count_wrong(buf, pattern(count, dtype, device) * total, dtype, n))
    if op == "all_gather":
        inp = pattern(chunk, dtype, device) * mine
        out = torch.empty(chunk * n, dtype=tdtype, device=device)
        return Case(lambda: _all_gather(out, inp, group=group), lambda: out.zero_(),
                    lambda: count_wrong(out, (vs[:, None] * pattern(chunk, dtype, device)[None, :]).reshape(-1),
                                        dtype, 1))
    if op == "reduce_scatter":
        inp = pattern(count, dtype, device) * mine
        out = torch.empty(chunk, dtype=tdtype, device=device)
        return Case(lambda: _reduce_scatter(out, inp, group=group), lambda: out.zero_(),
                    lambda: count_wrong(out, pattern(chunk, dtype, device, me * chunk) * total, dtype, n))
    if op == "all_to_all":
        inp = pattern(count, dtype, device) * mine
        out = torch.empty(count, dtype=tdtype, device=device)
        return Case(lambda: dist.all_to_all_single(out, inp, group=group), lambda: out.zero_(),
                    lambda: count_wrong(out, (vs[:, None] * pattern(chunk, dtype, device, me * chunk)[None, :])
                                        .reshape(-1), dtype, 1))
    if op in ("broadcast", "reduce"):
        root = members[0]
        buf = torch.empty(count, dtype=tdtype, device=device)
        expect = value(root) if op == "broadcast" else total

        def reset() -> None:
            if op == "broadcast" and rank != root:
                buf.zero_()
            else:
                buf.copy_(pattern(count, dtype, device)).mul_(mine)

        def check() -> int:
            if op == "reduce" and rank != root:
                return 0
            return count_wrong(buf, pattern(count, dtype, device) * expect, dtype, n)

        if op == "broadcast":
            return Case(lambda: dist.broadcast(buf, src=root, group=group), reset, check)
        return Case(lambda: dist.reduce(buf, dst=root, group=group), reset, check)
    if op == "send_recv":
        nxt, prv = members[(me + 1) % n], members[(me - 1) % n]
        send = pattern(count, dtype, device) * mine
        recv = torch.empty(count, dtype=tdtype, device=device)

        def run() -> None:
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, send, nxt, group),
                                           dist.P2POp(dist.irecv, recv, prv, group)])
            for req in reqs:
                req.wait()

        return Case(run, lambda: recv.zero_(),
                    lambda: count_wrong(recv, pattern(count, dtype, device) * value(prv), dtype, 1))
    raise ValueError(f"no measurement for collective {op}")


MATMUL_ROTATION_BYTES = 256 * 2**20


def matmul_case(item: Item, device: torch.device) -> Case:
    """``out = a @ b`` with ``a`` of ``m x k`` and ``b`` of ``k x n``, inputs uniform in [-1, 1]."""
    m, k, n = item.shape
    tdtype = TORCH_DTYPES[item.dtype]
    gen = torch.Generator(device=device).manual_seed(1234)
    # Rotate among enough operand sets to overflow the last-level cache (60 MB on an H200), so a
    # repeated call reads its operands from HBM as a layer's GEMMs do, not from L2.
    element = torch.finfo(tdtype).bits // 8
    sets = max(1, min(16, math.ceil(MATMUL_ROTATION_BYTES / ((m * k + k * n) * element))))
    pairs = [((torch.rand(m, k, generator=gen, device=device) * 2 - 1).to(tdtype),
              (torch.rand(k, n, generator=gen, device=device) * 2 - 1).to(tdtype)) for _ in range(sets)]
    a, b = pairs[0]
    out = torch.empty(m, n, dtype=tdtype, device=device)
    turn = [0]

    def run() -> None:
        x, y = pairs[turn[0] % sets]
        turn[0] += 1
        torch.matmul(x, y, out=out)

    def check() -> int:
        rows, cols = min(m, 8), min(n, 8)
        ref = a[:rows].double() @ b[:, :cols].double()
        got = out[:rows, :cols].double()
        tol = 8 * EPS[item.dtype] * (ref.abs() + math.sqrt(k))
        return int(((got - ref).abs() > tol).sum()) + int((~torch.isfinite(got)).sum())

    def check_last() -> int:
        torch.matmul(a, b, out=out)
        return check()

    return Case(run, lambda: None, check_last)


def copy_case(item: Item, device: torch.device) -> Case:
    """``dst.copy_(src)`` of ``item.size_bytes``: reads and writes that many bytes each."""
    src = (torch.arange(item.size_bytes, dtype=torch.int32, device=device) % 251).to(torch.uint8) \
        if item.size_bytes <= 2**24 else torch.randint(0, 255, (item.size_bytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return Case(lambda: dst.copy_(src), lambda: dst.zero_(), lambda: int((dst != src).sum()))


# --------------------------------------------------------------------------- timing


# A GPU sleep queued ahead of the timed calls, per call: long enough (about 1 ms at 2 GHz) for
# the CPU to launch each call before the GPU reaches it.
QUEUE_CYCLES_PER_CALL = 2_000_000


def time_iterations(run: Callable[[], None], iters: int, warmup: int, device: torch.device,
                    before: Callable[[], None] | None = None) -> list[float]:
    """Per-iteration seconds of the device's work.

    On a GPU: a sleep kernel first, during which the CPU queues every timed call, then CUDA
    events around each call. The events then time the GPU alone, as nccl-tests do and as a
    training step sees it (its CPU runs ahead); timing calls the CPU launches one at a time
    would time the launch instead whenever the GPU is quicker (a small collective: ~6 us on
    the GPU, 30-120 us to launch through PyTorch on an H200 host). On a CPU: ``before`` (a
    barrier), then ``perf_counter`` around each call.
    """
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if before is not None:
            before()
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(QUEUE_CYCLES_PER_CALL * iters)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i in range(iters):
            starts[i].record()
            run()
            ends[i].record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
