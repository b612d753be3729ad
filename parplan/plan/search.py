"""The plan search: enumerate layouts, drop what cannot run, rank the rest.

Candidates are every factorization of the device count into tp x cp x pp x dp
with the knobs (micro-batch, recompute, ZeRO stage, sequence parallel, virtual
pipeline stages) and two placements of the axes on nodes. They are built and
evaluated as numpy arrays — one call of the same estimator per placement, not
one Python object per candidate.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ParplanError
from ..step.train import estimate
from ..layouts.strategies import breakdown_keys, breakdown_labels
from ..cost.memory import DEFAULT_HEADROOM
from ..specs.hardware import Cluster
from ..layouts.layout import Layout
from ..specs.model import ModelSpec

RECOMPUTE_NAMES = ("none", "selective", "full")
PLACEMENTS = (("tp", "cp", "dp", "pp"), ("tp", "cp", "pp", "dp"))
DEFAULT_BATCH_TOKENS = 2 ** 22  # ~4M tokens per step: GPT-3 175B used 3.2M, Llama 3 405B started at 4M


@dataclass(frozen=True)
class SearchSpace:
    global_batch: int
    seq_len: int
    dtype: str = "bf16"
    max_micro_batch: int = 16
    allow_cross_node_tp: bool = False
    fixed: dict | None = None          # axis or knob -> value, e.g. {"tp": 8}
    flash_attention: bool = True
    fused_kernels: bool = True
    headroom: float = DEFAULT_HEADROOM


def default_global_batch(model: ModelSpec, cluster: Cluster, seq_len: int) -> int:
    """About 4M tokens per step, at least one sequence per device, a multiple of the device count."""
    sequences = max(DEFAULT_BATCH_TOKENS // seq_len, cluster.devices)
    return int(-(-sequences // cluster.devices) * cluster.devices)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


TP_MODES = ("1d", "2d", "3d")        # candidate codes 0, 1, 2 (layout.TP_MODES order)
CP_SCHEMES = ("allgather", "ring")   # candidate codes 0, 1


def _tp_modes(model: ModelSpec, tp: int) -> list[int]:
    """Tensor-parallel modes a size admits: 1D when it divides heads and MLP, 2D/3D for squares/cubes."""
    modes = []
    if not (model.heads % tp or model.ffn_hidden % tp or (model.kv_heads % tp and tp % model.kv_heads)):
        modes.append(0)
    for code, power in ((1, 2), (2, 3)):
        q = round(tp ** (1 / power))
        if tp > 1 and q ** power == tp and q > 1 and not (model.hidden % q or model.ffn_hidden % q or model.heads % q):
            modes.append(code)
    return modes


def candidates(model: ModelSpec, cluster: Cluster, space: SearchSpace) -> dict[str, np.ndarray]:
    """All layouts that pass the shape constraints, as parallel arrays."""
    n, gb, seq = cluster.devices, space.global_batch, space.seq_len
    fixed = space.fixed or {}
    tp_max = n if space.allow_cross_node_tp else cluster.fast_domain
    rows = []
    for tp in _divisors(n):
        if tp > tp_max:
            continue
        for mode in _tp_modes(model, tp):
            for cp in _divisors(n // tp):
                if seq % (2 * cp) and cp > 1:
                    continue
                for cp_mode in ((0, 1) if cp > 1 else (0,)):
                    for pp in _divisors(n // (tp * cp)):
                        if pp > model.layers:
                            continue
                        dp = n // (tp * cp * pp)
                        if gb % dp:
                            continue
                        rows.append((tp, cp, pp, dp, mode, cp_mode))
    if not rows:
        raise ParplanError(f"no factorization of {n} devices fits {model.name} with global batch {gb}")
    base = np.array(rows)
    axes = {"tp": base[:, 0], "cp": base[:, 1], "pp": base[:, 2], "dp": base[:, 3], "tp_mode": base[:, 4],
            "cp_mode": base[:, 5]}
    for k in ("tp", "cp", "pp", "dp"):
        if k in fixed:
            keep = axes[k] == fixed[k]
            axes = {a: v[keep] for a, v in axes.items()}
    if len(axes["tp"]) == 0:
        raise ParplanError(f"no layout of {n} devices has {', '.join(f'{k}={v}' for k, v in fixed.items())}")

    mbs = [fixed["micro_batch"]] if "micro_batch" in fixed else \
        [b for b in (1, 2, 4, 8, 16, 32) if b <= space.max_micro_batch]
    vpps = [fixed["vpp"]] if "vpp" in fixed else [1, 2, 3, 4, 6, 8]
    # Knobs: micro-batch, recompute, ZeRO stage, sequence parallel, virtual stages, HSDP (shard in one node).
    knob = np.array(list(itertools.product(mbs, range(3), (0, 1, 2, 3), (0, 1), vpps, (0, 1))))
    ia, ik = np.meshgrid(np.arange(len(axes["tp"])), np.arange(len(knob)), indexing="ij")
    ia, ik = ia.ravel(), ik.ravel()
    c = {a: v[ia] for a, v in axes.items()}
    c.update(micro_batch=knob[ik, 0], recompute=knob[ik, 1], zero=knob[ik, 2], sp=knob[ik, 3].astype(bool),
             vpp=knob[ik, 4])
    hsdp = knob[ik, 5].astype(bool)
    # HSDP shards over the data-parallel ranks of one node and replicates across nodes.
    node_group = np.maximum(cluster.devices_per_node // (c["tp"] * c["cp"]), 1)
    c["shard_group"] = np.where(hsdp, node_group, c["dp"])
    for k in ("micro_batch", "zero", "vpp", "sp"):
        if k in fixed:
            keep = c[k] == fixed[k]
            c = {a: v[keep] for a, v in c.items()}
            hsdp = hsdp[keep]
    if "recompute" in fixed:
        keep = c["recompute"] == RECOMPUTE_NAMES.index(fixed["recompute"])
        c = {a: v[keep] for a, v in c.items()}
        hsdp = hsdp[keep]
    per_replica = gb // np.maximum(c["dp"], 1)
    m = per_replica // c["micro_batch"]
    q = np.where(c["tp_mode"] == 1, np.round(np.sqrt(c["tp"])), np.round(np.cbrt(c["tp"]))).astype(int)
    ok = (per_replica % c["micro_batch"] == 0) & (m >= 1)
    ok &= ~(c["sp"] & ((c["tp"] == 1) | (c["tp_mode"] > 0)))  # sequence parallel: 1D TP only
    ok &= (c["tp_mode"] == 0) | (c["micro_batch"] % np.where(c["tp_mode"] == 1, q, q * q) == 0)
    ok &= (c["vpp"] == 1) | ((c["pp"] > 1) & (model.layers % (c["pp"] * c["vpp"]) == 0) & (m % c["pp"] == 0))
    ok &= ~((c["zero"] > 0) & (c["dp"] * c["cp"] == 1))     # nothing to shard over
    ok &= ~((c["zero"] == 3) & (c["pp"] > 1))               # FSDP with pipelines: not offered by the frameworks
    ok &= ~hsdp | ((c["zero"] > 0) & (c["dp"] % c["shard_group"] == 0) & (c["shard_group"] > 1)
                   & (c["shard_group"] < c["dp"]))
    out = {a: v[ok] for a, v in c.items()}
    if len(out["tp"]) == 0:
        given = ", ".join(f"{k}={v}" for k, v in fixed.items())
        raise ParplanError(f"no layout of {model.name} on {n} devices with global batch {gb}"
                           + (f" and {given}" if given else "") + " passes the layout rules "
                           "(micro-batches dividing the batch, ZeRO-3 without pipelines, interleaving rules)")
    return out


def search(model: ModelSpec, cluster: Cluster, space: SearchSpace):
    """Evaluate every candidate; return (pandas DataFrame of all candidates, number evaluated).

    One vectorized estimate per placement, tensor-parallel mode and context-parallel scheme (the
    categorical choices that pick different plug-ins); numeric knobs ride along as arrays.
    """
    import pandas as pd

    cand = candidates(model, cluster, space)
    frames = []
    for tp_code, cp_code in sorted(set(zip(cand["tp_mode"].tolist(), cand["cp_mode"].tolist()))):
        sel = (cand["tp_mode"] == tp_code) & (cand["cp_mode"] == cp_code)
        part = {k: v[sel] for k, v in cand.items()}
        for order in PLACEMENTS:
            layout = Layout(tp=part["tp"], pp=part["pp"], dp=part["dp"], cp=part["cp"],
                            micro_batch=part["micro_batch"], global_batch=space.global_batch, seq_len=space.seq_len,
                            zero=part["zero"], sp=part["sp"], vpp=part["vpp"], recompute=part["recompute"],
                            shard_group=part["shard_group"], tp_mode=TP_MODES[tp_code], cp_mode=CP_SCHEMES[cp_code],
                            dtype=space.dtype, flash_attention=space.flash_attention,
                            fused_kernels=space.fused_kernels, order=order)
            est = estimate(model, cluster, layout, check=False, headroom=space.headroom)
            df = pd.DataFrame({k: v for k, v in part.items()})
            df["recompute"] = np.array(RECOMPUTE_NAMES)[part["recompute"]]
            df["tp_mode"] = TP_MODES[tp_code]
            df["cp_mode"] = CP_SCHEMES[cp_code]
            df["order"] = ",".join(order)
            df["global_batch"] = space.global_batch
            n = len(df)
            df["step_time_s"] = np.broadcast_to(est.step_time_s, n)
            df["tokens_per_s"] = np.broadcast_to(est.tokens_per_s, n)
            df["mfu"] = np.broadcast_to(est.mfu, n)
            df["hfu"] = np.broadcast_to(est.hfu, n)
            df["tflops_per_device"] = np.broadcast_to(est.tflops_per_device, n)
            df["memory_bytes"] = np.broadcast_to(est.memory_bytes["total"], n)
            df["fits"] = np.broadcast_to(est.fits, n)
            for k in breakdown_keys():
                df[f"{k}_s"] = np.broadcast_to(est.breakdown_s[k], n)
            frames.append(df)
    all_df = pd.concat(frames, ignore_index=True)
    # Placement only matters when some axis spans nodes; keep distinct results.
    all_df = all_df.drop_duplicates(subset=["tp", "cp", "pp", "dp", "tp_mode", "cp_mode", "micro_batch", "recompute",
                                            "zero", "sp", "vpp", "shard_group", "step_time_s"])
    return all_df, sum(len(f) for f in frames)


def rank(df, objective: str = "throughput"):
    """Plans that fit, best first: fastest (most tokens/s, so batches of different size compare) or leanest."""
    fit = df[df["fits"]]
    if objective == "memory":
        return fit.sort_values(["memory_bytes", "step_time_s"], kind="stable")
    if "global_batch" not in fit or fit["global_batch"].nunique() <= 1:
        return fit.sort_values(["step_time_s", "memory_bytes"], kind="stable")
    return fit.assign(_neg_tps=-fit["tokens_per_s"]).sort_values(["_neg_tps", "memory_bytes"], kind="stable") \
        .drop(columns="_neg_tps")


def bottleneck(row) -> str:
    """The largest cost beyond compute, or compute itself."""
    parts = {label: row[f"{key}_s"] for key, label in breakdown_labels().items()}
    parts["recompute"] = row["recompute_s"]
    name, value = max(parts.items(), key=lambda kv: kv[1])
    return name if value > 0.10 * row["step_time_s"] else "compute"


def describe_row(row) -> str:
    mode = row.get("tp_mode", "1d")
    hsdp = row.get("shard_group", row["dp"]) != row["dp"] and row["zero"]
    parts = [f"tp={row['tp']}" + (f"({mode})" if mode != "1d" else "") + ("+sp" if row["sp"] else ""),
             f"pp={row['pp']}" + (f"x{row['vpp']}" if row["vpp"] > 1 else ""),
             f"dp={row['dp']}" + (f"(zero{row['zero']}" + (f",hsdp{row['shard_group']}" if hsdp else "") + ")"
                                  if row["zero"] else ""),
             f"cp={row['cp']}" + ("(ring)" if row["cp"] > 1 and row.get("cp_mode") == "ring" else ""),
             f"mb={row['micro_batch']}", f"rc={row['recompute']}"]
    return " ".join(parts)


def why(winner, runner) -> str:
    """One line on why the winner beats the runner-up: the largest component difference."""
    diffs = {k: runner[f"{k}_s"] - winner[f"{k}_s"] for k in breakdown_keys()}
    k, v = max(diffs.items(), key=lambda kv: kv[1])
    changed = [f"{a} {runner[a]}->{winner[a]}" for a in ("tp", "pp", "dp", "cp", "micro_batch", "recompute", "zero",
                                                          "sp", "vpp", "tp_mode", "cp_mode", "shard_group", "order", "global_batch")
               if a in runner and runner[a] != winner[a]]
    if runner["global_batch"] != winner["global_batch"]:
        gain = winner["tokens_per_s"] / runner["tokens_per_s"] - 1
        return f"#1 moves {gain:.2%} more tokens/s than #2 ({', '.join(changed)})"
    gain = runner["step_time_s"] - winner["step_time_s"]
    return (f"#1 is {gain:.3g} s/step faster than #2, mostly {v:.3g} s less {k.replace('_', ' ')} "
            f"({', '.join(changed) or 'same knobs'})")


def layout_of(row, space: SearchSpace) -> Layout:
    return Layout(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), cp=int(row["cp"]),
                  micro_batch=int(row["micro_batch"]), global_batch=int(row.get("global_batch", space.global_batch)),
                  seq_len=space.seq_len,
                  zero=int(row["zero"]), sp=bool(row["sp"]), vpp=int(row["vpp"]), recompute=str(row["recompute"]),
                  tp_mode=str(row.get("tp_mode", "1d")), cp_mode=str(row.get("cp_mode", "allgather")),
                  shard_group=(int(row["shard_group"]) if int(row.get("shard_group", row["dp"])) != int(row["dp"])
                               else None),
                  dtype=space.dtype, flash_attention=space.flash_attention, fused_kernels=space.fused_kernels,
                  order=tuple(row["order"].split(",")))


def fewest_devices(model: ModelSpec, cluster: Cluster, space: SearchSpace, limit: int = 1 << 20) -> int | None:
    """The smallest device count (in whole nodes) at which some layout fits, by doubling then bisecting."""
    from ..specs.hardware import make_cluster

    def fits(n):
        cl = make_cluster(cluster.hardware, n, devices_per_node=cluster.devices_per_node,
                          inter_node=cluster.inter_node, intra_node=cluster.intra_node)
        sp = replace(space, global_batch=max(space.global_batch, n) // n * n)
        try:
            df, _ = search(model, cl, sp)
        except ParplanError:
            return False
        return bool(df["fits"].any())

    step = cluster.devices_per_node
    n = max(step, cluster.devices)
    while n <= limit and not fits(n):
        n *= 2
    if n > limit:
        return None
    lo, hi = max(step, n // 2), n
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            break
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi
