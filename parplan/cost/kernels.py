"""The one path from a kernel to its time: GEMMs, attention and element-wise passes on one device.

Training, serving, ``calibrate`` and ``compare`` all time kernels here, so a change of the
roofline shows in every prediction alike.

* A GEMM is the roofline of :func:`parplan.cost.roofline.matmul_time_s`; with ``split_k``
  it is the faster of a plain launch and split-K launches (the k loop split ``s`` ways, each
  part at least 256 deep: ``s`` GEMMs of depth ``k / s`` writing ``s`` partial outputs). cuBLAS
  and CUTLASS pick split-K for thin, deep products whose output tiles alone would leave most
  compute units idle, the decode GEMMs under tensor parallelism (e.g. 256 x 8192 x 1280 for
  Llama 3 70B's QKV at tp=8).
* Fused attention runs at the fraction of the GEMM rate the hardware profile measured for the
  kernel the framework runs (``attention_kernels``: FlashAttention-2, cuDNN, ... against sequence
  length and head size), scaled by how its tiles fill the SMs (a causal kernel's unequal tiles
  list-scheduled: :func:`tile_utilization`); a device without a
  measured curve takes FlashAttention-2's published fractions (``FLASH_*_FRACTION_OF_GEMM``).
  Never below its HBM traffic.
* An MoE layer's local experts run as one grouped GEMM, taking the roofline's time over the fraction
  the profile measured for grouped launches against the tokens each expert gets (``grouped_gemm``:
  torch._grouped_mm reaches 0.81-0.84 of it at 16-256 tokens per expert on H100, 0.96-0.99 from 1024), in FP8
  at its FP8 curve; a framework that issues one GEMM per expert over several CUDA streams (Transformer
  Engine's GroupedLinear) at that launch's curves (``streams``, ``streams_fp8``).
* A linear layer's GEMM under an FP8 recipe runs at the FP8 peak times the 16-bit efficiency
  times the profile's measured FP8 fraction for its scaling (per tensor or per row).
* An element-wise pass or copy is bytes over HBM bandwidth (``memory_time_s``), plus a launch
  for each aten kernel an eager op takes; an eager op runs at its family's measured rate where the
  profile has one (``efficiency.eager``: eager RMSNorm and rotary chains reach 0.4-0.6 of HBM
  bandwidth, a large add 0.75-0.9), else at the copy rate.
"""
from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass

import numpy as np

from . import ops as ops_mod
from .roofline import (FLASH_BWD_FRACTION_OF_GEMM, FLASH_FWD_FRACTION_OF_GEMM, matmul_efficiency, matmul_time_s,
    memory_time_s, wave_utilization)

# Query rows per thread block of the fused attention kernels (FlashAttention-2 and cuDNN, forward), and key rows
# per block of their backward.
ATTENTION_BLOCK_ROWS = 128
# A causal tile's own work (its loads and stores) in key-tile steps, forward and backward: fitted to the H100
# benchmark of causal kernels over small grids (reports/gpu-checks/h100-2026-12-07d/causal_grid.csv; see
# tile_utilization).
CAUSAL_TILE_FIXED = (0.0, 1.0)
LIST_SCHEDULE_TILES = 1 << 17   # tiles a list schedule simulates; past it, the last heads' (error < 1%)
# Dao 2023's FlashAttention-2 benchmark grid: the batch making 16k tokens, 2048 columns of heads.
DAO_TOKENS, DAO_COLUMNS = 16384, 2048
SPLIT_K = (2, 4, 8, 16)  # split-K launches considered for each GEMM
MIN_SPLIT_DEPTH = 256    # ... each part at least this deep


def gemm_time_s(hw, m, k, n, dtype: str = "bf16", batch=1, *, split_k: bool = False, lead_dims=None,
                efficiency_scale: float = 1.0):
    """One GEMM launch (``batch`` products in one kernel): the roofline, or the best split-K launch."""
    m, k, n, batch = (np.asarray(x, float) for x in (m, k, n, batch))
    best = matmul_time_s(hw, m, k, n, dtype, batch, efficiency_scale, lead_dims=lead_dims)
    if not split_k:
        return best
    for s in SPLIT_K:
        split = matmul_time_s(hw, m, k / s, n, dtype, batch * s, efficiency_scale,
                              lead_dims=(k, n) if lead_dims is None else lead_dims)
        best = np.where(k / s >= MIN_SPLIT_DEPTH, np.minimum(best, split), best)
    return best


@dataclass(frozen=True)
class KernelEnv:
    """What the software decides about kernel speed: the attention kernels it prefers, the FP8
    scaling of its linear GEMMs, and (from ``calibrate``) its element-wise kernels' HBM efficiency."""

    attention: tuple[str, ...] = ("flash2",)
    fp8_scaling: str = "tensorwise"
    elementwise_efficiency: float | None = None


DEFAULT_ENV = KernelEnv()


def op_times(hw, op: ops_mod.Op, dtype: str, *, split_k: bool = False, env: KernelEnv = DEFAULT_ENV):
    """(forward_s, backward_s) of one op on one device; ``dtype`` is the 16-bit (or fp32) compute type.

    An op that runs in only a share of the layers (an MoE model's MoE or dense MLP) costs that share of
    its time per layer."""
    fwd, bwd = _op_times(hw, op, dtype, split_k, env)
    if op.grouped and hw.grouped_gemm is not None:  # expert GEMMs at the measured share of the roofline
        tokens, curves = hw.grouped_gemm
        base = "streams" if op.grouped == ops_mod.STREAMS and "streams" in curves else "fraction"
        curve = curves.get(base + "_fp8", curves[base]) if op.fp8 else curves[base]
        frac = np.interp(np.log(np.maximum(op.gemm[0], 1.0)), np.log(tokens), curve)
        fwd, bwd = fwd / frac, bwd / frac
    if isinstance(op.share, float) and op.share == 1.0:
        return fwd, bwd
    return fwd * op.share, bwd * op.share


def _op_times(hw, op: ops_mod.Op, dtype: str, split_k: bool, env: KernelEnv):
    if op.kind in (ops_mod.MATMUL, ops_mod.BATCHED):
        m, k, n, batch = op.gemm
        # A scaling the profile does not list runs at its per-tensor fraction: finer scales cost more, never less.
        fp8_scale = hw.matmul_fp8.get(env.fp8_scaling, hw.matmul_fp8.get("tensorwise", 1.0))
        gemm_dtype, scale = (("fp8", fp8_scale) if op.fp8 else (dtype, 1.0))
        # A batched matmul runs its batch in one kernel; a weight GEMM's "batch" is sequential
        # block products (2D TP's SUMMA steps), one kernel each.
        steps, batch = (batch, 1) if op.kind == ops_mod.MATMUL else (1, batch)
        fwd = steps * gemm_time_s(hw, m, k, n, gemm_dtype, batch, split_k=split_k, efficiency_scale=scale)
        # Backward: data gradient (m x n)(n x k) and weight gradient (k x m)(m x n), on the
        # same row-major tensors: their rows are still k and n long.
        lead = (k, n)
        bwd = steps * (matmul_time_s(hw, m, n, k, gemm_dtype, batch, scale, lead_dims=lead) +
                       matmul_time_s(hw, k, m, n, gemm_dtype, batch, scale, lead_dims=lead))
        return fwd, bwd
    if op.kind == ops_mod.FLASH:
        s, dh, skv, heads = op.gemm
        eff_f, eff_b = attention_efficiency(hw, s, dh, skv, heads, env.attention, op.causal)
        peak = hw.peak(dtype)
        mem_bw = hw.hbm_bandwidth * hw.hbm_efficiency
        fwd = np.maximum(op.fwd_flops / (peak * eff_f), op.fwd_bytes / mem_bw)
        bwd = np.maximum(op.bwd_flops / (peak * eff_b), op.bwd_bytes / mem_bw)
        return fwd + hw.kernel_overhead_s, bwd + hw.kernel_overhead_s
    # A pass with no backward kernel (its gradient flows through untouched) costs nothing there.
    extra = [(k - 1) * hw.kernel_overhead_s for k in op.kernels]
    # A calibrated software efficiency first, else the measured rate of this eager op family, else the
    # profile's copy (streaming) or fused-kernel rate.
    eff = env.elementwise_efficiency
    if eff is None and op.streaming:
        eff = hw.eager_kernels.get(op.family)
    return tuple(np.where(np.asarray(b) > 0, memory_time_s(hw, b, op.streaming, eff) + x, 0.0)
                 for b, x in zip((op.fwd_bytes, op.bwd_bytes), extra))


def attention_efficiency(hw, s, dh, skv, heads, kernels=("flash2",), causal=True):
    """(forward, backward) fraction of dense peak of fused attention of ``s`` queries over ``skv`` keys on
    ``heads`` (batch x heads), causal or not.

    The first of ``kernels`` the profile measured sets the fraction of the GEMM rate against the
    sequence length (log-interpolated) and head size (linear between measured sizes), at the grid the
    table was measured on; the tiles' schedule on this grid scales it (:func:`tile_utilization`).
    Without a measured kernel: FlashAttention-2's published fractions (Dao 2023, measured with the batch
    making 16k tokens at 2048 columns) on the GEMM model of this shape, scaled alike.
    """
    s, dh = np.asarray(s, float), np.asarray(dh, float)
    fractions = (FLASH_FWD_FRACTION_OF_GEMM, FLASH_BWD_FRACTION_OF_GEMM)
    curve = next((hw.attention_kernels[k] for k in kernels if k in hw.attention_kernels), None)
    residency = (1, 1.0) if curve is None else (curve.forward_blocks_per_sm, curve.forward_lone_rate)
    util = [_grid_share(hw, s, skv, heads, causal, backward, None if backward else residency)
            for backward in (False, True)]
    if curve is None:
        if hw.matmul_curve is not None:
            eff = matmul_efficiency(hw, s, dh, skv, heads)
        elif hw.kind == "tpu":   # the MXU's padding of this shape
            eff = hw.matmul_efficiency * wave_utilization(hw, s, dh, heads)
        else:                    # a full grid's rate: the schedule ratio below carries this grid's tail
            eff = hw.matmul_efficiency
        dao = np.maximum(1.0, DAO_TOKENS // np.maximum(s, 1.0)) * np.floor(DAO_COLUMNS / dh)
        return tuple(eff * frac * u / _grid_share(hw, s, s, dao, causal, backward)
                     for frac, u, backward in zip(fractions, util, (False, True)))
    return tuple(hw.matmul_efficiency * u * _curve_fraction(curve.seq, table, s, dh)
                 for u, table in zip(util, (curve.forward, curve.backward)))


def attention_curve_fraction(hw, s, heads, rate_flops, backward=False, residency=None):
    """The ``attention_kernels`` table entry that makes :func:`attention_efficiency` give ``rate_flops`` (a
    measured causal attention rate, FLOP/s, forward or ``backward``) at ``s`` tokens over ``heads`` (batch x
    heads): the rate over the profile's GEMM rate ``peak x matmul_efficiency`` and the causal tiles'
    utilization at that shape (the forward's blocks an SM and lone rate, ``residency``, as the table will
    carry them), so each measured point is reproduced exactly (``scripts/attention_table.py``)."""
    util = _grid_share(hw, s, s, heads, True, backward, None if backward else residency)
    return np.asarray(rate_flops, float) / (hw.peak("bf16") * hw.matmul_efficiency * util)


def _grid_share(hw, s, skv, heads, causal, backward, residency=None):
    """:func:`tile_utilization` on a GPU; a TPU has no SMs to schedule tiles on (1.0)."""
    return 1.0 if hw.kind == "tpu" else tile_utilization(hw, s, skv, heads, causal, backward, residency)


def tile_utilization(hw, s, skv, heads, causal, backward, residency=None):
    """Busy share of the GPU's SMs over an attention kernel's tiles (``ATTENTION_BLOCK_ROWS`` rows of one head).

    Non-causal tiles do equal work: the last wave's filled share. Causal tiles do not: query tile m visits
    m + 1 key tiles, and the kernels launch a head's tiles in order, forward its query tiles shortest
    first, backward its key tiles longest first; one tile an SM, each SM taking the next tile as it frees
    (a list schedule), so with few tiles the longest run alone at the end. Measured on an H100, cuDNN and
    FlashAttention-2 at micro-batch 1 over 4-64 heads and 1k-32k tokens, over the same kernels at a 16k-token
    batch (reports/gpu-checks/h100-2026-12-07d/causal_grid.csv): the list schedule gives the backward's
    slowdown within 4% rms and cuDNN's forward within 8% (FlashAttention-2's within 13%, slower), where the
    last wave's share gave none of it. ``CAUSAL_TILE_FIXED`` is each tile's own work (load and store) in
    key-tile steps, fitted to that benchmark; shapes it was not fitted to (3k-24k tokens, 6-40 heads, micro-batch
    1-2, reports/gpu-checks/h100-2026-12-07e/causal_grid_holdout.csv) follow within 3% rms for cuDNN. Causal
    queries over more keys (``skv`` > ``s``: the last ``s`` of them, as a context-parallel rank of
    Transformer Engine's p2p ring runs them) are one causal ``s`` x ``s`` block and the rest equal tiles.
    ``heads`` (batch x heads) is rounded to whole heads.

    ``residency`` = (blocks an SM, lone rate): a kernel whose causal blocks reside two an SM (FlashAttention-2's
    forward on Hopper) shares each SM between them, and a block left alone runs at the lone rate of the SM
    (:func:`_shared_schedule`), fitted to the same benchmark; on its held-out shapes (h100-2026-12-07e) that
    follows FlashAttention-2's forward within 2.5% rms over grids of more tiles than SMs, where one block an
    SM missed it by 10%. A grid of no more tiles than SMs runs as one block an SM.
    """
    heads = np.maximum(np.rint(np.asarray(heads, float)), 1.0)   # whole heads: a tile is one head's rows
    uniform = _query_tile_waves(hw, s, heads)
    if not causal:
        return uniform
    diag = _causal_schedule(hw, s, heads, backward, residency or (1, 1.0))
    share = np.minimum(np.asarray(s, float) / np.maximum(np.asarray(skv, float), 1.0), 1.0)
    return 1.0 / (share / diag + (1.0 - share) / uniform)


def _causal_schedule(hw, s, heads, backward, residency):
    tiles = np.maximum(np.ceil(np.asarray(s, float) / ATTENTION_BLOCK_ROWS), 1.0)
    tiles, heads = np.broadcast_arrays(tiles, heads)
    pairs, where = np.unique(np.stack([tiles.ravel(), heads.ravel()]), axis=1, return_inverse=True)
    units, fixed = int(hw.compute_units), CAUSAL_TILE_FIXED[int(bool(backward))]
    blocks, lone = residency
    # A grid of no more tiles than SMs never fills a second slot; measured alone and between GEMMs its blocks
    # keep near the SM's full rate (h100-2026-12-07e, -07f), so it runs as one block an SM.
    busy = np.array([_shared_schedule(int(t), int(h), units, fixed, bool(backward), float(lone))
                     if blocks == 2 and t * h > units else _list_schedule(int(t), int(h), units, fixed, bool(backward))
                     for t, h in pairs.T])
    out = busy[np.ravel(where)].reshape(tiles.shape)
    return out if out.ndim else float(out)


@functools.lru_cache(maxsize=8192)
def _list_schedule(tiles: int, heads: int, slots: int, fixed: float, longest_first: bool) -> float:
    """Busy share of ``slots`` SMs over ``heads`` runs of causal tiles of work 1 + fixed .. tiles + fixed, each
    head's in order (ascending, or descending ``longest_first``), each tile to the SM that frees first.
    Past ``LIST_SCHEDULE_TILES`` tiles only the last heads are scheduled, behind an even load of the rest."""
    work = [m + 1.0 + fixed for m in range(tiles)]
    if longest_first:
        work.reverse()
    per_head = sum(work)
    simulated = min(heads, max(1, LIST_SCHEDULE_TILES // tiles))
    free = [0.0] * slots
    for _ in range(simulated):
        for w in work:
            heapq.heappush(free, heapq.heappop(free) + w)
    makespan = (heads - simulated) * per_head / slots + max(free)
    return heads * per_head / (slots * makespan)


@functools.lru_cache(maxsize=8192)
def _shared_schedule(tiles: int, heads: int, sms: int, fixed: float, longest_first: bool, lone_rate: float) -> float:
    """:func:`_list_schedule` with two blocks resident an SM: two share the SM's rate equally, one alone runs at
    ``lone_rate`` of it, and a freed slot takes the next tile. Event by event: each SM's next event is when
    its shorter resident block finishes."""
    work = [m + 1.0 + fixed for m in range(tiles)]
    if longest_first:
        work.reverse()
    simulated = min(heads, max(1, LIST_SCHEDULE_TILES // tiles))
    queue = iter(work * simulated)
    resident = [[] for _ in range(sms)]
    for _ in range(2):   # the first wave fills every SM once before any takes a second block
        for blocks in resident:
            w = next(queue, None)
            if w is not None:
                blocks.append(w)
    rate = lambda n: 0.5 if n == 2 else lone_rate  # noqa: E731  per block
    events = [(min(b) / rate(len(b)), sm) for sm, b in enumerate(resident) if b]
    heapq.heapify(events)
    since, now = [0.0] * sms, 0.0
    while events:
        now, sm = heapq.heappop(events)
        blocks = sorted(resident[sm])
        done = (now - since[sm]) * rate(len(blocks))
        since[sm] = now
        blocks = [b - done for b in blocks[1:]]
        while len(blocks) < 2 and (w := next(queue, None)) is not None:
            blocks.append(w)
        resident[sm] = blocks
        if blocks:
            heapq.heappush(events, (now + min(blocks) / rate(len(blocks)), sm))
    makespan = (heads - simulated) * sum(work) / sms + now
    return heads * sum(work) / (sms * makespan)


def _query_tile_waves(hw, s, heads):
    """The share of the last wave's SMs the query tiles (``ATTENTION_BLOCK_ROWS`` rows of one head) fill."""
    tiles = np.ceil(np.asarray(s, float) / ATTENTION_BLOCK_ROWS) * np.asarray(heads, float)
    waves = np.ceil(tiles / hw.compute_units)
    return tiles / (waves * hw.compute_units)


def _curve_fraction(seq_points, table, s, dh):
    logs = np.log(np.asarray(seq_points))
    sizes = sorted(table)
    per_size = [np.interp(np.log(np.maximum(s, 1.0)), logs, np.asarray(table[d])) for d in sizes]
    if len(sizes) == 1:
        return per_size[0]
    return _interp_sizes(sizes, per_size, dh)


def _interp_sizes(sizes, values, dh):
    """Linear in the head size between measured sizes, clamped at the ends."""
    dh = np.asarray(dh, float)
    out = np.asarray(values[0], float) * np.ones(np.broadcast(dh, values[0]).shape)
    for (d0, v0), (d1, v1) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        w = np.clip((dh - d0) / (d1 - d0), 0.0, 1.0)
        out = np.where(dh >= d0, v0 + w * (np.asarray(v1) - np.asarray(v0)), out)
    return out


def copy_time_s(hw, nbytes):
    """A device-to-device copy moving ``nbytes`` (read plus written): a streaming memory pass."""
    return memory_time_s(hw, nbytes, streaming=True)
