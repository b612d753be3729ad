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

from .errors import ParplanError
from .estimate import BREAKDOWN_KEYS, DEFAULT_HEADROOM, estimate
from .hardware import Cluster
from .layout import Layout
from .model import ModelSpec

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
    headroom: float = DEFAULT_HEADROOM


def default_global_batch(model: ModelSpec, cluster: Cluster, seq_len: int) -> int:
    """About 4M tokens per step, at least one sequence per device, a multiple of the device count."""
    sequences = max(DEFAULT_BATCH_TOKENS // seq_len, cluster.devices)
    return int(-(-sequences // cluster.devices) * cluster.devices)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(model: ModelSpec, cluster: Cluster, space: SearchSpace) -> dict[str, np.ndarray]:
    """All layouts that pass the shape constraints, as parallel arrays."""
    n, gb, seq = cluster.devices, space.global_batch, space.seq_len
    fixed = space.fixed or {}
    tp_max = n if space.allow_cross_node_tp else cluster.fast_domain
    rows = []
    for tp in _divisors(n):
        if tp > tp_max or model.heads % tp or model.ffn_hidden % tp or (model.kv_heads % tp and tp % model.kv_heads):
            continue
        for cp in _divisors(n // tp):
            if seq % (2 * cp) and cp > 1:
                continue
            for pp in _divisors(n // (tp * cp)):
                if pp > model.layers:
                    continue
                dp = n // (tp * cp * pp)
                if gb % dp:
                    continue
                rows.append((tp, cp, pp, dp))
    if not rows:
        raise ParplanError(f"no factorization of {n} devices fits {model.name} with global batch {gb}")
    base = np.array(rows)
    axes = {"tp": base[:, 0], "cp": base[:, 1], "pp": base[:, 2], "dp": base[:, 3]}
    for k in ("tp", "cp", "pp", "dp"):
        if k in fixed:
            keep = axes[k] == fixed[k]
            axes = {a: v[keep] for a, v in axes.items()}
    if len(axes["tp"]) == 0:
        raise ParplanError(f"no layout of {n} devices has {', '.join(f'{k}={v}' for k, v in fixed.items())}")

    mbs = [b for b in (1, 2, 4, 8, 16, 32) if b <= space.max_micro_batch]
    knobs = itertools.product(mbs, range(3), (0, 1, 2, 3), (False, True), (1, 2, 3, 4, 6, 8))
    knob = np.array(list(knobs), dtype=object)
    k_mb = knob[:, 0].astype(int)
    k_rc = knob[:, 1].astype(int)
    k_zero = knob[:, 2].astype(int)
    k_sp = knob[:, 3].astype(bool)
    k_vpp = knob[:, 4].astype(int)
    # Cartesian product of axis rows and knob rows.
    ia, ik = np.meshgrid(np.arange(len(axes["tp"])), np.arange(len(knob)), indexing="ij")
    ia, ik = ia.ravel(), ik.ravel()
    c = {a: v[ia] for a, v in axes.items()}
    c.update(micro_batch=k_mb[ik], recompute=k_rc[ik], zero=k_zero[ik], sp=k_sp[ik], vpp=k_vpp[ik])
    for k in ("micro_batch", "zero", "vpp", "sp"):
        if k in fixed:
            c["zero" if k == "zero" else k] = c[k]
            keep = c[k] == fixed[k]
            c = {a: v[keep] for a, v in c.items()}
    if "recompute" in fixed:
        keep = c["recompute"] == RECOMPUTE_NAMES.index(fixed["recompute"])
        c = {a: v[keep] for a, v in c.items()}
    per_replica = gb // c["dp"]
    m = per_replica // c["micro_batch"]
    ok = (per_replica % c["micro_batch"] == 0) & (m >= 1)
    ok &= ~(c["sp"] & (c["tp"] == 1))                       # sequence parallel needs TP
    ok &= (c["vpp"] == 1) | ((c["pp"] > 1) & (model.layers % (c["pp"] * c["vpp"]) == 0) & (m % c["pp"] == 0))
    ok &= ~((c["zero"] > 0) & (c["dp"] * c["cp"] == 1))     # nothing to shard over
    ok &= ~((c["zero"] == 3) & (c["pp"] > 1))               # FSDP with pipelines: not offered by the frameworks
    return {a: v[ok] for a, v in c.items()}


def search(model: ModelSpec, cluster: Cluster, space: SearchSpace):
    """Evaluate every candidate; return (pandas DataFrame of all candidates, number evaluated)."""
    import pandas as pd

    cand = candidates(model, cluster, space)
    frames = []
    for order in PLACEMENTS:
        layout = Layout(tp=cand["tp"], pp=cand["pp"], dp=cand["dp"], cp=cand["cp"],
                        micro_batch=cand["micro_batch"], global_batch=space.global_batch, seq_len=space.seq_len,
                        zero=cand["zero"], sp=cand["sp"], vpp=cand["vpp"], recompute=cand["recompute"],
                        dtype=space.dtype, flash_attention=space.flash_attention, order=order)
        est = estimate(model, cluster, layout, check=False, headroom=space.headroom)
        df = pd.DataFrame({k: v for k, v in cand.items()})
        df["recompute"] = np.array(RECOMPUTE_NAMES)[cand["recompute"]]
        df["order"] = ",".join(order)
        df["global_batch"] = space.global_batch
        df["step_time_s"] = np.broadcast_to(est.step_time_s, len(df))
        df["tokens_per_s"] = np.broadcast_to(est.tokens_per_s, len(df))
        df["mfu"] = np.broadcast_to(est.mfu, len(df))
        df["hfu"] = np.broadcast_to(est.hfu, len(df))
        df["tflops_per_device"] = np.broadcast_to(est.tflops_per_device, len(df))
        df["memory_bytes"] = np.broadcast_to(est.memory_bytes["total"], len(df))
        df["fits"] = np.broadcast_to(est.fits, len(df))
        for k in BREAKDOWN_KEYS:
            df[f"{k}_s"] = np.broadcast_to(est.breakdown_s[k], len(df))
        frames.append(df)
    all_df = pd.concat(frames, ignore_index=True)
    # Placement only matters when some axis spans nodes; keep distinct results.
    all_df = all_df.drop_duplicates(subset=["tp", "cp", "pp", "dp", "micro_batch", "recompute", "zero", "sp", "vpp",
                                            "step_time_s"])
    return all_df, sum(len(f) for f in frames)


def rank(df, objective: str = "throughput"):
    """Plans that fit, best first: fastest (most tokens/s, so batches of different size compare) or leanest."""
    fit = df[df["fits"]]
    if objective == "memory":
        return fit.sort_values(["memory_bytes", "step_time_s"], kind="stable")
    return fit.assign(_neg_tps=-fit["tokens_per_s"]).sort_values(["_neg_tps", "memory_bytes"], kind="stable") \
        .drop(columns="_neg_tps")


def bottleneck(row) -> str:
    """The largest cost beyond compute, or compute itself."""
    parts = {"TP comm": row["tp_comm_s"], "CP comm": row["cp_comm_s"], "PP comm": row["pp_comm_s"],
             "bubble": row["bubble_s"], "DP comm": row["dp_comm_s"], "recompute": row["recompute_s"]}
    name, value = max(parts.items(), key=lambda kv: kv[1])
    return name if value > 0.10 * row["step_time_s"] else "compute"


def describe_row(row) -> str:
    parts = [f"tp={row['tp']}" + ("+sp" if row["sp"] else ""), f"pp={row['pp']}" + (f"x{row['vpp']}" if row["vpp"] > 1 else ""),
             f"dp={row['dp']}" + (f"(zero{row['zero']})" if row["zero"] else ""), f"cp={row['cp']}",
             f"mb={row['micro_batch']}", f"rc={row['recompute']}"]
    return " ".join(parts)


def why(winner, runner) -> str:
    """One line on why the winner beats the runner-up: the largest component difference."""
    diffs = {k: runner[f"{k}_s"] - winner[f"{k}_s"] for k in BREAKDOWN_KEYS}
    k, v = max(diffs.items(), key=lambda kv: kv[1])
    changed = [f"{a} {runner[a]}->{winner[a]}" for a in ("tp", "pp", "dp", "cp", "micro_batch", "recompute", "zero",
                                                          "sp", "vpp", "order", "global_batch") if runner[a] != winner[a]]
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
                  dtype=space.dtype, flash_attention=space.flash_attention, order=tuple(row["order"].split(",")))


def fewest_devices(model: ModelSpec, cluster: Cluster, space: SearchSpace, limit: int = 1 << 20) -> int | None:
    """The smallest device count (in whole nodes) at which some layout fits, by doubling then bisecting."""
    from .hardware import make_cluster

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
