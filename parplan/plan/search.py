"""The plan search: evaluate every candidate (:mod:`parplan.plan.candidates`), rank what fits.

Each candidate is tried in two placements of the axes on nodes (data parallel or the
pipeline outermost); on a TPU, in every map of its axes onto the slices' torus axes
(:mod:`parplan.plan.torus_maps`). They are evaluated as numpy arrays: one call of the same estimator
per placement and categorical choice, not one Python object per candidate.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..cost.memory import largest_chunk_layers
from ..errors import ParplanError
from ..step.train import estimate
from ..layouts.strategies import breakdown_keys
from ..specs.cluster import Cluster
from ..layouts.layout import RECOMPUTE, TP_MODES, Layout
from . import torus_maps
from .candidates import CP_SCHEMES, SearchSpace, candidates, space_order, space_software
from ..specs.model import ModelSpec

PLACEMENTS = (("tp", "cp", "dp", "pp"), ("tp", "cp", "pp", "dp"))
EXPERT_AXES = ("ep", "etp")  # an MoE model's candidates carry them (parplan.plan.candidates)
OBJECTIVES = ("throughput", "memory", "cost")


def search(model: ModelSpec, cluster: Cluster, space: SearchSpace, progress=None):
    """Evaluate every candidate; return (pandas DataFrame of all candidates, number evaluated).

    One vectorized estimate per placement, tensor-parallel mode and context-parallel scheme (the
    categorical choices that pick different plug-ins), and one of the block recomputes beside the full ones
    that fit (:func:`_blocks`); numeric knobs ride along as arrays.
    ``progress(done, total)``, when given, is called after each of those estimates.
    """
    import pandas as pd

    cand = candidates(model, cluster, space)
    frames = []
    choices = sorted(set(zip(cand["tp_mode"].tolist(), cand["cp_mode"].tolist())))
    orders = space_order(space, cluster)
    hidden = torus_maps.map_columns(orders[0], cluster) if cluster.is_torus else []
    done = 0
    for tp_code, cp_code in choices:
        sel = (cand["tp_mode"] == tp_code) & (cand["cp_mode"] == cp_code)
        part = {k: v[sel] for k, v in cand.items()}
        for order in orders:
            done += 1
            frame, fits = _evaluate(model, cluster, space, part, tp_code, cp_code, order, hidden)
            frames.append(frame)
            blocks = _blocks(model, space, cluster, part, fits)
            if blocks is not None:  # a block of each chunk, beside each full recompute that fits
                frames.append(_evaluate(model, cluster, space, blocks, tp_code, cp_code, order, hidden)[0])
            if progress is not None:
                progress(done, len(choices) * len(orders))
    all_df = pd.concat(frames, ignore_index=True)
    # Placement only matters when some axis spans nodes; keep distinct results.
    all_df = all_df.drop_duplicates(subset=["tp", "cp", "pp", "dp", "tp_mode", "cp_mode", "micro_batch", "recompute",
                                            "recompute_layers", "zero", "sp", "vpp", "shard_group",
                                            "first_stage_layers", "last_stage_layers", "step_time_s"]
                                    + [k for k in EXPERT_AXES if k in all_df] + (["ici"] if "ici" in all_df else []))
    return all_df, sum(len(f) for f in frames)


def _evaluate(model, cluster, space, part, tp_code, cp_code, order, hidden):
    """(the candidates' frame, their fits) from one vectorized estimate of ``part`` in one placement."""
    import pandas as pd

    layout = Layout(tp=part["tp"], pp=part["pp"], dp=part["dp"], cp=part["cp"],
                    micro_batch=part["micro_batch"], global_batch=space.global_batch, seq_len=space.seq_len,
                    zero=part["zero"], sp=part["sp"], vpp=part["vpp"], recompute=part["recompute"],
                    shard_group=part["shard_group"], tp_mode=TP_MODES[tp_code], cp_mode=CP_SCHEMES[cp_code],
                    dtype=space.dtype, order=order, schedule=space.schedule or base_schedule(space, cluster),
                    axes=(("ep", part["ep"]), ("etp", part["etp"])) if "ep" in part else (),
                    torus_map=torus_maps.layout_map(part, order, cluster) if hidden else None,
                    first_stage_layers=part["first_stage_layers"], last_stage_layers=part["last_stage_layers"],
                    recompute_layers=part["recompute_layers"])
    est = estimate(model, cluster, layout, check=False, headroom=space.headroom,
                   software=space_software(space, cluster))
    df = pd.DataFrame({k: v for k, v in part.items() if k not in hidden})
    if hidden:
        df["ici"] = torus_maps.texts(part, order, cluster)
    df["recompute"] = np.array(RECOMPUTE)[part["recompute"]]
    df["tp_mode"] = TP_MODES[tp_code]
    df["cp_mode"] = CP_SCHEMES[cp_code]
    df["order"] = ",".join(order)
    df["global_batch"] = space.global_batch
    n = len(df)
    for k, v in est.columns().items():
        df[k] = np.broadcast_to(v, n)
    return df, np.broadcast_to(np.asarray(est.fits, bool), n)


# The block recomputes the search tries (Megatron's --recompute-method block), as shares of a chunk's layers.
BLOCK_SHARES = (0.25, 0.5, 0.75)


def _blocks(model, space, cluster, part, fits):
    """Beside each full recompute of every layer that fits, the same candidate recomputing only the first
    :data:`BLOCK_SHARES` of each chunk's layers (rounded up; distinct blocks smaller than the chunk), where the
    framework runs blocks and the recompute is left to the search; None where there are none. A block holds
    more than the full recompute it replaces, so only those that fit can lead to one that fits."""
    fixed = space.fixed or {}
    if "recompute" in fixed or not space_software(space, cluster).framework.recompute_layers:
        return None
    full = fits & (part["recompute"] == RECOMPUTE.index("full")) & (part["recompute_layers"] == 0)
    if not full.any():
        return None
    chunk = largest_chunk_layers(model.layers, part["pp"] * part["vpp"])
    rows, blocks = [], []
    for share in BLOCK_SHARES:
        k = np.ceil(share * chunk).astype(np.int64)
        pick = full & (k < chunk)
        rows.append(np.nonzero(pick)[0])
        blocks.append(k[pick])
    pairs = np.unique(np.stack([np.concatenate(rows), np.concatenate(blocks)]), axis=1)
    if pairs.shape[1] == 0:
        return None
    return {**{a: v[pairs[0]] for a, v in part.items()}, "recompute_layers": pairs[1]}


def rank(df, objective: str = "throughput"):
    """Plans that fit, best first: fastest (most tokens/s, so batches of different size compare), leanest, or
    cheapest per token. On one cluster the cost of a token is the cluster's price over its throughput, so
    ``cost`` orders the plans as ``throughput`` does; it differs between clusters (``sweep``)."""
    fit = df[df["fits"]]
    if objective == "memory":
        return fit.sort_values(["memory_bytes", "step_time_s"], kind="stable")
    if "global_batch" not in fit or fit["global_batch"].nunique() <= 1:
        return fit.sort_values(["step_time_s", "memory_bytes"], kind="stable")
    return fit.assign(_neg_tps=-fit["tokens_per_s"]).sort_values(["_neg_tps", "memory_bytes"], kind="stable") \
        .drop(columns="_neg_tps")


def describe_row(row) -> str:
    mode = row.get("tp_mode", "1d")
    hsdp = row.get("shard_group", row["dp"]) != row["dp"] and row["zero"]
    ends = (row.get("first_stage_layers", 0), row.get("last_stage_layers", 0))
    split = f"({ends[0] or '-'}|..|{ends[1] or '-'})" if any(ends) else ""
    parts = [f"tp={row['tp']}" + (f"({mode})" if mode != "1d" else "") + ("+sp" if row["sp"] else ""),
             f"pp={row['pp']}" + (f"x{row['vpp']}" if row["vpp"] > 1 else "") + split,
             f"dp={row['dp']}" + (f"(zero{row['zero']}" + (f",hsdp{row['shard_group']}" if hsdp else "") + ")"
                                  if row["zero"] else ""),
             f"cp={row['cp']}" + ("(ring)" if row["cp"] > 1 and row.get("cp_mode") == "ring" else ""),
             f"mb={row['micro_batch']}", f"rc={row['recompute']}" + (f"({int(row['recompute_layers'])})"
                                                                      if row.get("recompute_layers", 0) else "")]
    if "ep" in row and row["ep"] == row["ep"]:  # an MoE candidate (NaN in a frame that mixes models)
        parts[4:4] = [f"ep={int(row['ep'])}", f"etp={int(row['etp'])}"]
    return " ".join(parts)


def why(winner, runner) -> str:
    """One line on why the winner beats the runner-up: the largest component difference."""
    diffs = {k: runner[f"{k}_s"] - winner[f"{k}_s"] for k in breakdown_keys()}
    k, v = max(diffs.items(), key=lambda kv: kv[1])
    keys = ("tp", "pp", "dp", "cp", "micro_batch", "recompute", "recompute_layers", "zero", "sp", "vpp", "tp_mode",
            "cp_mode", "shard_group", "order", "global_batch", "first_stage_layers", "last_stage_layers", *EXPERT_AXES)
    changed = [f"{a} {runner[a]}->{winner[a]}" for a in keys if a in runner and runner[a] != winner[a]]
    if runner["global_batch"] != winner["global_batch"]:
        gain = winner["tokens_per_s"] / runner["tokens_per_s"] - 1
        return f"#1 moves {gain:.2%} more tokens/s than #2 ({', '.join(changed)})"
    gain = runner["step_time_s"] - winner["step_time_s"]
    if gain <= 1e-9 * runner["step_time_s"]:
        return f"#1 and #2 take the same step time ({', '.join(changed) or 'same knobs'})"
    return (f"#1 is {gain / runner['step_time_s']:.2%} faster than #2 ({gain:.3g} s per step), mostly "
            f"{v:.3g} s less {k.replace('_', ' ')} ({', '.join(changed) or 'same knobs'})")


def base_schedule(space: SearchSpace, cluster: Cluster | None) -> str:
    """The schedule of a pipeline without interleaving: 1F1B, or GPipe where the framework has no 1F1B
    (JAX: MaxText's pipeline without circular repeats)."""
    if cluster is None:
        return "1f1b"
    schedules = space_software(space, cluster).framework.pipeline.schedules
    return "1f1b" if "1f1b" in schedules or "gpipe" not in schedules else "gpipe"


def layout_of(row, space: SearchSpace, cluster: Cluster | None = None) -> Layout:
    return Layout(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), cp=int(row["cp"]),
                  micro_batch=int(row["micro_batch"]), global_batch=int(row.get("global_batch", space.global_batch)),
                  seq_len=space.seq_len,
                  zero=int(row["zero"]), sp=bool(row["sp"]), vpp=int(row["vpp"]), recompute=str(row["recompute"]),
                  tp_mode=str(row.get("tp_mode", "1d")), cp_mode=str(row.get("cp_mode", "allgather")),
                  shard_group=(int(row["shard_group"]) if int(row.get("shard_group", row["dp"])) != int(row["dp"])
                               else None),
                  dtype=space.dtype, order=tuple(row["order"].split(",")),
                  schedule=space.schedule or ("interleaved" if int(row["vpp"]) > 1 else base_schedule(space, cluster)),
                  axes=tuple((a, int(row[a])) for a in EXPERT_AXES if a in row and row[a] == row[a]),
                  torus_map=torus_maps.row_map(row, tuple(row["order"].split(",")), cluster) if cluster else None,
                  first_stage_layers=int(row.get("first_stage_layers", 0)) or None,
                  last_stage_layers=int(row.get("last_stage_layers", 0)) or None,
                  recompute_layers=int(row.get("recompute_layers", 0)) or None)


def fewest_devices(model: ModelSpec, cluster: Cluster, space: SearchSpace, limit: int = 1 << 20) -> int | None:
    """The smallest device count (in whole nodes) at which some layout fits, by doubling then bisecting."""
    from ..specs.cluster import make_cluster

    def fits(n):
        sp = replace(space, global_batch=max(space.global_batch, n) // n * n)
        try:  # (a TPU count beyond one slice is refused here: no single slice holds it)
            cl = make_cluster(cluster.hardware, n, devices_per_node=cluster.devices_per_node,
                              inter_node=cluster.inter_node, intra_node=cluster.intra_node)
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
