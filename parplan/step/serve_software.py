"""What the serving stack changes in a prefill or a decode step (``frameworks/*.yaml``, ``serving:``).

* **Attention kernels.** A prefill runs the stack's fused attention at the hardware's measured
  curve of the first kernel it measured (``prefill_env``). A decode step's attention reads each
  sequence's KV cache; the stack decides how the keys are split over the compute units
  (``decode_splits``: FlashAttention's ``num_splits_heuristic``, Flash-Decoding's fill, or none),
  the extra combine launch when it splits, the partial outputs the split writes and reads back in
  fp32, and the bandwidth its paged reads reach against a dense read (``paged_bandwidth``).
* **Launches.** Outside a CUDA graph the host issues every kernel (``launch_s`` each) while the
  GPU runs the ones already queued, so a layer takes ``max(GPU time, kernels x launch_s)``: the
  host sets the pace when kernels are shorter than their launch (small decode batches), the GPU
  when they are longer. A graph replays the step for one ``graph_launch_s``, which removes the
  per-kernel launch cost (NVIDIA, "Getting Started with CUDA Graphs", 2019). Every pass pays one
  launch (or one graph launch) before its first kernel runs.
* **Per step**: the sampler's passes over the fp32 logits (``sampling_passes``), and the host's
  scheduling and bookkeeping (``step_overhead_s``), exposed unless the engine overlaps it with the
  next step's GPU work (then only what exceeds that step).
* **Memory**: a sequence's KV cache takes whole blocks of ``kv_block_tokens``.

The stack is resolved once (``serving_software``) from ``--framework`` / ``--cuda-graphs`` /
``--fused-kernels`` or a record's fields; ``estimate --mode inference``, ``plan --mode inference``
and ``validate`` all call :func:`serving_software`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..cost import ops as ops_mod
from ..cost.kernels import KernelEnv, op_times
from ..cost.roofline import memory_time_s
from ..specs.framework_loader import load_serving
from ..specs.serving_stack import ServingSoftware, default_serving, resolve_serving

# FlashAttention-2's split-KV forward (flash_api.cpp, set_params_splitkv): 64 query rows per block,
# 128 keys per block for head sizes up to 128 (256 up to 64, else 64), at most 128 splits, and the
# number of SMs doubled for its 128-thread blocks.
FA_SPLIT_ROWS = 64
FA_MAX_SPLITS = 128
# Flash-Decoding (Dao et al. 2023): at least this many keys per split.
FILL_MIN_KEYS = 256
FP32_BYTES = 4


def serving_software(framework: str | None, device_kind: str, *, cuda_graphs: bool | None = None,
                     fused_kernels: bool | None = None) -> ServingSoftware:
    """The serving stack a run uses: ``framework`` (a name or a YAML file) or the device's default."""
    name = framework or default_serving(device_kind)
    sw = resolve_serving(load_serving(name), cuda_graphs=cuda_graphs, fused_kernels=fused_kernels,
                         device_kind=device_kind)
    if framework is None:
        sw = replace(sw, notes=(f"framework {sw.name} (the default on {device_kind}s)",) + sw.notes)
    return sw


def prefill_env(sw: ServingSoftware) -> KernelEnv:
    """The kernels a prefill's attention may run, in the stack's order of preference."""
    return KernelEnv(attention=sw.stack.prefill_attention)


def _fa_block_keys(head_dim) -> np.ndarray:
    d = np.asarray(head_dim, float)
    return np.where(d <= 64, 256.0, np.where(d <= 128, 128.0, 64.0))


def fa_num_splits(work_blocks, units: int, key_blocks, max_splits: int = FA_MAX_SPLITS) -> np.ndarray:
    """FlashAttention's ``num_splits_heuristic``: the fewest splits within 85% of the best wave efficiency.

    ``work_blocks`` (batch x heads x query blocks) against ``units`` thread-block slots: none when
    they fill 80% of them; a split count is eligible only if it changes the keys per split.
    """
    work = np.asarray(work_blocks, float)
    nb = np.asarray(key_blocks, float)
    shape = np.broadcast(work, nb).shape
    work, nb = np.broadcast_to(work, shape), np.broadcast_to(nb, shape)
    cap = np.minimum(np.minimum(max_splits, units), nb)[..., None]
    s = np.arange(1, max_splits + 1, dtype=float)
    eligible = (s == 1) | (np.ceil(nb[..., None] / s) != np.ceil(nb[..., None] / np.maximum(s - 1, 1)))
    eligible &= s <= cap
    waves = work[..., None] * s / units
    eff = np.where(eligible, waves / np.ceil(waves), 0.0)
    best = eff.max(axis=-1, keepdims=True)
    first = np.argmax(eligible & (eff >= 0.85 * best), axis=-1) + 1.0
    return np.where(work >= 0.8 * units, 1.0, first)


def decode_splits(sw: ServingSoftware | None, units, group, seq_kv, head_dim, compute_units: int):
    """Ways the keys of each (sequence, KV head) are split across the compute units."""
    units, seq_kv = np.asarray(units, float), np.asarray(seq_kv, float)
    policy = "fill" if sw is None else sw.stack.decode_attention.split
    if policy == "none":
        return np.ones(np.broadcast(units, seq_kv).shape)
    if policy == "heuristic":
        work = units * np.ceil(np.asarray(group, float) / FA_SPLIT_ROWS)
        return fa_num_splits(work, 2 * compute_units, np.ceil(seq_kv / _fa_block_keys(head_dim)))
    return np.clip(np.ceil(compute_units / units), 1, np.maximum(1, np.ceil(seq_kv / FILL_MIN_KEYS)))


def split_traffic_bytes(splits, units, group, head_dim):
    """The fp32 partial outputs and log-sum-exps a split call writes and its combine pass reads."""
    splits = np.asarray(splits, float)
    partial = units * group * (np.asarray(head_dim, float) + 1) * FP32_BYTES
    return np.where(splits > 1, 2.0 * splits * partial, 0.0)


def decode_attention_time(hw, op: ops_mod.Op, dtype: str, sw: ServingSoftware):
    """Seconds of a decode attention call: the roofline at the paged read rate, plus the combine launch
    (``op.kernels``: the launches the call makes)."""
    t = op_times(hw, replace(op, fwd_bytes=op.fwd_bytes / sw.stack.decode_attention.paged_bandwidth), dtype,
                 env=prefill_env(sw))[0]
    return t + (np.asarray(op.kernels[0], float) - 1) * hw.kernel_overhead_s


def launches(ops: list[ops_mod.Op]):
    """Kernels one layer launches: each op's forward kernels (an eager op is several)."""
    return sum(np.asarray(o.kernels[0], float) for o in ops)


def host_exposed(gpu_s, kernels, sw: ServingSoftware | None, graphed):
    """Host time a run of ``kernels`` launches adds to ``gpu_s`` of GPU work: none under a graph, else
    what the launches take beyond the GPU time (the host queues kernels while the GPU runs)."""
    if sw is None:
        return 0.0 * np.asarray(gpu_s)
    host = np.asarray(kernels, float) * sw.stack.launch_s
    return np.where(graphed, 0.0, np.maximum(0.0, host - np.asarray(gpu_s, float)))


def pass_launch_s(sw: ServingSoftware | None, graphed):
    """Host time before a pass's first kernel runs: one graph launch, or one kernel launch."""
    if sw is None:
        return 0.0
    return np.where(graphed, sw.stack.graph_launch_s, sw.stack.launch_s)


def sampling_time_s(hw, sw: ServingSoftware | None, rows, vocab: int):
    """The sampler's passes over ``rows`` x ``vocab`` fp32 logits (one kernel each)."""
    if sw is None or sw.stack.sampling_passes <= 0:
        return 0.0 * np.asarray(rows, float)
    passes = sw.stack.sampling_passes
    return passes * (memory_time_s(hw, np.asarray(rows, float) * vocab * FP32_BYTES) - hw.kernel_overhead_s) + \
        np.ceil(passes) * hw.kernel_overhead_s


def scheduler_exposed_s(sw: ServingSoftware | None, step_gpu_s):
    """Host scheduling per step the GPU waits for: all of it, or (overlapped) what exceeds the step."""
    if sw is None:
        return 0.0 * np.asarray(step_gpu_s)
    t = sw.stack.step_overhead_s
    if sw.stack.step_overhead_overlapped:
        return np.maximum(0.0, t - np.asarray(step_gpu_s, float))
    return t + 0.0 * np.asarray(step_gpu_s)


def kv_block_tokens(sw: ServingSoftware | None) -> int:
    return 1 if sw is None else sw.stack.kv_block_tokens
