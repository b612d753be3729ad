"""The serving plan search: every tp x pp x replicas split of the cluster and batch size, under latency targets.

For each split (tp within a node, tp dividing the heads; pp up to the layer count;
the replicas what is left) the batch ranges over every size from 1 to 64, then
steps of about 3% up to the largest batch whose KV cache fits, evaluated as numpy
arrays in one call of the estimator per split. A TPOT target is met exactly: the
largest passing batch is found by bisection between grid points.

The plan is the split and batch with the highest generated tokens per second among
those that fit and meet the targets; the Pareto front trades throughput per
device against each user's decode speed (1 / TPOT).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import ParplanError
from ..layouts.rules import tp_1d_problem
from ..cost.memory import DEFAULT_HEADROOM
from ..specs.cluster import Cluster
from ..step.serve_layout import ServeLayout, check_serve_layout
from ..step.serve import decode_bottleneck, estimate_inference
from ..step.serve_memory import max_batch, memory_per_device
from ..step.serve_software import serving_software
from ..specs.model import ModelSpec

COLUMNS = ("tp", "pp", "replicas", "batch", "ttft_s", "tpot_s", "itl_s", "tokens_per_s", "tokens_per_s_per_device",
           "tokens_per_s_per_user", "kv_cache_bytes", "memory_bytes", "fits", "meets_targets", "max_batch",
           "bottleneck")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def serve_splits(model: ModelSpec, cluster: Cluster, allow_cross_node_tp: bool = False,
                 fixed: dict | None = None) -> list[tuple[int, int, int]]:
    """Every (tp, pp, replicas) with tp * pp * replicas = the device count that the model's shapes allow."""
    n = cluster.devices
    fixed = fixed or {}
    domain = cluster.devices_per_node if cluster.hardware.torus is not None else cluster.scale_up_domain
    tp_max = n if allow_cross_node_tp else max(1, min(n, domain))  # tensor parallel inside one NVLink domain
    rows = []
    for tp in _divisors(n):
        if tp > tp_max or not tp_1d_problem(model, tp) is None:
            continue
        for pp in _divisors(n // tp):
            if pp > model.layers:
                continue
            row = (tp, pp, n // (tp * pp))
            if all(row[("tp", "pp", "replicas").index(k)] == v for k, v in fixed.items()):
                rows.append(row)
    return rows


def serve_eps(model: ModelSpec, tp: int, fixed: dict | None = None) -> list[int]:
    """An MoE model's expert splits of a stage's tp devices: tensor-parallel experts (ep=1) or whole experts
    over all of them (ep=tp); 1 for a dense model."""
    eps = [1] + ([tp] if model.is_moe and tp > 1 and model.experts % tp == 0 else [])
    want = (fixed or {}).get("ep")
    return [e for e in eps if want is None or e == want]


def batch_grid(limit: int) -> np.ndarray:
    """1..64, then steps of about 3% up to ``limit`` (inclusive)."""
    small = np.arange(1, min(limit, 64) + 1)
    if limit <= 64:
        return small
    steps = max(2, int(math.ceil(math.log(limit / 64) / math.log(1.03))) + 1)
    big = np.round(np.geomspace(64, limit, steps)).astype(int)
    return np.unique(np.concatenate([small, big, [limit]]))


def _targets_ok(ttft, tpot, ttft_ms, tpot_ms):
    ok = np.ones(np.broadcast(ttft, tpot).shape, bool)
    if ttft_ms is not None:
        ok &= np.asarray(ttft) <= ttft_ms / 1e3
    if tpot_ms is not None:
        ok &= np.asarray(tpot) <= tpot_ms / 1e3
    return ok


def _frame(est, batches, mb, ttft_ms, tpot_ms):
    import pandas as pd

    lay = est.layout
    shape = np.shape(batches)
    df = pd.DataFrame({
        "tp": lay.tp, "pp": lay.pp, "replicas": lay.replicas, "batch": np.asarray(batches, int),
        "ttft_s": np.broadcast_to(est.ttft_s, shape), "tpot_s": np.broadcast_to(est.tpot_s, shape),
        "itl_s": np.broadcast_to(est.itl_s, shape), "tokens_per_s": np.broadcast_to(est.tokens_per_s, shape),
        "tokens_per_s_per_device": np.broadcast_to(est.tokens_per_s_per_device, shape),
        "tokens_per_s_per_user": np.broadcast_to(est.tokens_per_s_per_user, shape),
        "kv_cache_bytes": np.broadcast_to(est.kv_cache_bytes, shape),
        "memory_bytes": np.broadcast_to(est.memory_bytes["total"], shape),
        "fits": np.broadcast_to(est.fits, shape),
        "max_batch": mb,
        **({"ep": lay.ep} if est.model.is_moe else {}),
    })
    df["meets_targets"] = _targets_ok(df["ttft_s"].to_numpy(), df["tpot_s"].to_numpy(), ttft_ms, tpot_ms)
    names = []
    for i in range(len(df)):
        parts = {k: np.broadcast_to(v, shape)[i] for k, v in est.decode_breakdown_s.items()}
        names.append(decode_bottleneck(parts))
    df["bottleneck"] = names
    return df


def search_inference(model: ModelSpec, cluster: Cluster, *, input_len: int, output_len: int, batch: int | None = None,
                     ttft_ms: float | None = None, tpot_ms: float | None = None, dtype: str = "bf16",
                     kv_dtype: str | None = None, headroom: float = DEFAULT_HEADROOM,
                     allow_cross_node_tp: bool = False, fixed: dict | None = None, software=None):
    """Evaluate every split and batch; a pandas DataFrame of all candidates (columns: ``COLUMNS``).

    ``software``: the serving stack (None: the device's default)."""
    import pandas as pd

    if software is None:
        software = serving_software(None, cluster.hardware.kind)
    block = software.stack.kv_block_tokens

    splits = serve_splits(model, cluster, allow_cross_node_tp, {k: v for k, v in (fixed or {}).items() if k != "ep"})
    if not splits:
        raise ParplanError(f"no tp x pp split of the {cluster.devices} devices of {cluster.label} suits "
                           f"{model.name} ({model.heads} heads, {model.kv_heads} KV heads)"
                           + (f" with {', '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed else ""))
    frames = []
    for tp, pp, replicas, ep in ((*split, ep) for split in splits for ep in serve_eps(model, split[0], fixed)):
        base = ServeLayout(tp=tp, pp=pp, replicas=replicas, batch=1, input_len=input_len, output_len=output_len,
                           dtype=dtype, kv_dtype=kv_dtype, ep=ep)
        check_serve_layout(base, model, cluster)
        mb = max_batch(model, cluster.hardware, tp, pp, input_len, output_len, dtype, kv_dtype, headroom,
                       kv_block_tokens=block)
        if batch is not None:
            batches = np.array([batch])
        else:
            batches = batch_grid(max(mb, 1))
        est = estimate_inference(model, cluster, replace(base, batch=batches), headroom=headroom, check=False,
                                 software=software)
        df = _frame(est, batches, mb, ttft_ms, tpot_ms)
        if batch is None and tpot_ms is not None and mb > 1:
            df = _refine_tpot(model, cluster, base, df, mb, ttft_ms, tpot_ms, headroom, software)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(model=model.name, cluster=cluster.name, cluster_label=cluster.label,
                     hardware=cluster.hardware.name, devices=cluster.devices, input_len=input_len,
                     output_len=output_len, dtype=dtype, kv_dtype=kv_dtype or "", ttft_ms=ttft_ms, tpot_ms=tpot_ms,
                     headroom=headroom, framework=software.describe())
    return out


def _refine_tpot(model, cluster, base, df, mb, ttft_ms, tpot_ms, headroom, software):
    """Add the exact largest batch meeting the TPOT target (TPOT grows with the batch)."""
    import pandas as pd

    ok = df["tpot_s"].to_numpy() <= tpot_ms / 1e3
    if not ok.any() or ok.all():
        return df
    lo = int(df["batch"].to_numpy()[ok].max())
    higher = df["batch"].to_numpy()[~ok]
    higher = higher[higher > lo]
    if not len(higher):
        return df
    hi = int(higher.min())

    def tpot(b):
        return float(estimate_inference(model, cluster, replace(base, batch=b), headroom=headroom,
                                        check=False, software=software).tpot_s)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if tpot(mid) <= tpot_ms / 1e3 else (lo, mid)
    if lo in set(df["batch"]):
        return df
    est = estimate_inference(model, cluster, replace(base, batch=np.array([lo])), headroom=headroom, check=False,
                             software=software)
    return pd.concat([df, _frame(est, np.array([lo]), mb, ttft_ms, tpot_ms)], ignore_index=True)


def rank_plans(df):
    """One row per split: its highest-throughput batch among those that fit and meet the targets; best first."""
    ok = df[df["fits"] & df["meets_targets"]]
    if ok.empty:
        return ok
    best = ok.sort_values(["tokens_per_s", "tpot_s"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates(subset=["tp", "pp", "replicas"] + (["ep"] if "ep" in best else []), keep="first")
    return best.reset_index(drop=True)


def pareto_front(df):
    """Candidates that fit and that no other beats on both throughput per device and per-user speed."""
    fit = df[df["fits"]].sort_values(["tokens_per_s_per_user", "tokens_per_s_per_device"], ascending=[False, False],
                                     kind="stable")
    keep, best = [], -np.inf
    for idx, v in zip(fit.index, fit["tokens_per_s_per_device"].to_numpy()):
        if v > best:
            keep.append(idx)
            best = v
    return fit.loc[keep].reset_index(drop=True)


def fewest_devices(model: ModelSpec, cluster: Cluster, input_len: int, output_len: int, batch: int = 1,
                   dtype: str = "bf16", kv_dtype: str | None = None, headroom: float = DEFAULT_HEADROOM,
                   limit: int = 1 << 16) -> int | None:
    """The fewest devices of this kind on which some tp x pp split holds the model and ``batch`` sequences."""
    hw = cluster.hardware
    usable = hw.hbm_bytes * (1 - headroom)
    dpn = cluster.devices_per_node
    counts = list(range(1, dpn + 1)) + list(range(2 * dpn, limit + 1, dpn))
    for n in counts:
        for tp in _divisors(min(n, dpn)):
            if n % tp or not tp_1d_problem(model, tp) is None:
                continue
            pp = n // tp
            if pp > model.layers:
                continue
            mem = memory_per_device(model, tp, pp, batch, input_len, output_len, dtype, kv_dtype)
            if float(mem["total"]) <= usable:
                return n
    return None


def describe_split(row) -> str:
    """``tp=8 pp=1 replicas=2`` (and ``ep=8`` where an MoE model's experts are expert-parallel)."""
    ep = f" ep={int(row['ep'])}" if "ep" in row and row["ep"] == row["ep"] and int(row["ep"]) > 1 else ""
    return f"tp={row['tp']} pp={row['pp']} replicas={row['replicas']}{ep}"


def plans(model: ModelSpec, cluster: Cluster, *, input_len: int, output_len: int, batch: int | None = None,
          ttft_ms: float | None = None, tpot_ms: float | None = None, dtype: str = "bf16",
          kv_dtype: str | None = None, headroom: float = DEFAULT_HEADROOM, fixed: dict | None = None,
          allow_cross_node_tp: bool = False, software=None):
    """(search DataFrame, ranked plans DataFrame); a one-line ParplanError when nothing fits or meets the targets."""
    df = search_inference(model, cluster, input_len=input_len, output_len=output_len, batch=batch, ttft_ms=ttft_ms,
                          tpot_ms=tpot_ms, dtype=dtype, kv_dtype=kv_dtype, headroom=headroom,
                          allow_cross_node_tp=allow_cross_node_tp, fixed=fixed, software=software)
    if not df["fits"].any():
        need = fewest_devices(model, cluster, input_len, output_len, batch or 1, dtype, kv_dtype, headroom)
        more = (f"; the fewest {cluster.hardware.name} devices that hold it: {need}" if need else
                "; no count of these devices holds it")
        what = f"batch {batch}" if batch else "a single sequence"
        raise ParplanError(f"{model.name} does not fit on {cluster.label} with {what} of {input_len}+{output_len} "
                           f"tokens at any tp x pp split ({100 * headroom:.0f}% HBM headroom){more}")
    ranked = rank_plans(df)
    if ranked.empty:
        fit = df[df["fits"]]
        t = fit.loc[fit["ttft_s"].idxmin()]
        p = fit.loc[fit["tpot_s"].idxmin()]
        wanted = " and ".join(x for x in (f"TTFT <= {ttft_ms:g} ms" if ttft_ms is not None else "",
                                          f"TPOT <= {tpot_ms:g} ms" if tpot_ms is not None else "") if x)
        raise ParplanError(f"no layout of {model.name} on {cluster.label} meets {wanted}: the lowest TTFT is "
                           f"{t['ttft_s'] * 1e3:.3g} ms ({describe_split(t)}), the lowest TPOT {p['tpot_s'] * 1e3:.3g} ms "
                           f"({describe_split(p)}, batch {p['batch']})")
    return df, ranked


# --------------------------------------------------------------------------- published serving measurements


