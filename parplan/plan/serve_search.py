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
from pathlib import Path

import numpy as np

from ..errors import ParplanError
from ..layouts.rules import tp_1d_problem
from ..cost.memory import DEFAULT_HEADROOM
from ..specs.hardware import Cluster
from ..step.serve import (ServeLayout, bottleneck, check_serve_layout, estimate_inference, inference_dict, max_batch,
    memory_per_device)
from ..specs.model import ModelSpec
from ..units import GIB

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
    tp_max = n if allow_cross_node_tp else max(1, min(n, cluster.devices_per_node))
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
    })
    df["meets_targets"] = _targets_ok(df["ttft_s"].to_numpy(), df["tpot_s"].to_numpy(), ttft_ms, tpot_ms)
    names = []
    for i in range(len(df)):
        parts = {k: np.broadcast_to(v, shape)[i] for k, v in est.decode_breakdown_s.items()}
        names.append(bottleneck(parts))
    df["bottleneck"] = names
    return df


def search_inference(model: ModelSpec, cluster: Cluster, *, input_len: int, output_len: int, batch: int | None = None,
                     ttft_ms: float | None = None, tpot_ms: float | None = None, dtype: str = "bf16",
                     kv_dtype: str | None = None, headroom: float = DEFAULT_HEADROOM,
                     allow_cross_node_tp: bool = False, fixed: dict | None = None):
    """Evaluate every split and batch; a pandas DataFrame of all candidates (columns: ``COLUMNS``)."""
    import pandas as pd

    splits = serve_splits(model, cluster, allow_cross_node_tp, fixed)
    if not splits:
        raise ParplanError(f"no tp x pp split of the {cluster.devices} devices of {cluster.name} suits "
                           f"{model.name} ({model.heads} heads, {model.kv_heads} KV heads)"
                           + (f" with {', '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed else ""))
    frames = []
    for tp, pp, replicas in splits:
        base = ServeLayout(tp=tp, pp=pp, replicas=replicas, batch=1, input_len=input_len, output_len=output_len,
                           dtype=dtype, kv_dtype=kv_dtype)
        check_serve_layout(base, model, cluster)
        mb = max_batch(model, cluster.hardware, tp, pp, input_len, output_len, dtype, kv_dtype, headroom)
        if batch is not None:
            batches = np.array([batch])
        else:
            batches = batch_grid(max(mb, 1))
        est = estimate_inference(model, cluster, replace(base, batch=batches), headroom=headroom, check=False)
        df = _frame(est, batches, mb, ttft_ms, tpot_ms)
        if batch is None and tpot_ms is not None and mb > 1:
            df = _refine_tpot(model, cluster, base, df, mb, ttft_ms, tpot_ms, headroom)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(model=model.name, cluster=cluster.name, hardware=cluster.hardware.name,
                     devices=cluster.devices, input_len=input_len, output_len=output_len, dtype=dtype,
                     kv_dtype=kv_dtype or "", ttft_ms=ttft_ms, tpot_ms=tpot_ms, headroom=headroom)
    return out


def _refine_tpot(model, cluster, base, df, mb, ttft_ms, tpot_ms, headroom):
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
                                        check=False).tpot_s)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if tpot(mid) <= tpot_ms / 1e3 else (lo, mid)
    if lo in set(df["batch"]):
        return df
    est = estimate_inference(model, cluster, replace(base, batch=np.array([lo])), headroom=headroom, check=False)
    return pd.concat([df, _frame(est, np.array([lo]), mb, ttft_ms, tpot_ms)], ignore_index=True)


def rank_plans(df):
    """One row per split: its highest-throughput batch among those that fit and meet the targets; best first."""
    ok = df[df["fits"] & df["meets_targets"]]
    if ok.empty:
        return ok
    best = ok.sort_values(["tokens_per_s", "tpot_s"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates(subset=["tp", "pp", "replicas"], keep="first")
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


def _describe(row) -> str:
    return f"tp={row['tp']} pp={row['pp']} replicas={row['replicas']}"


def plans(model: ModelSpec, cluster: Cluster, *, input_len: int, output_len: int, batch: int | None = None,
          ttft_ms: float | None = None, tpot_ms: float | None = None, dtype: str = "bf16",
          kv_dtype: str | None = None, headroom: float = DEFAULT_HEADROOM, fixed: dict | None = None,
          allow_cross_node_tp: bool = False):
    """(search DataFrame, ranked plans DataFrame); a one-line ParplanError when nothing fits or meets the targets."""
    df = search_inference(model, cluster, input_len=input_len, output_len=output_len, batch=batch, ttft_ms=ttft_ms,
                          tpot_ms=tpot_ms, dtype=dtype, kv_dtype=kv_dtype, headroom=headroom,
                          allow_cross_node_tp=allow_cross_node_tp, fixed=fixed)
    if not df["fits"].any():
        need = fewest_devices(model, cluster, input_len, output_len, batch or 1, dtype, kv_dtype, headroom)
        more = (f"; the fewest {cluster.hardware.name} devices that hold it: {need}" if need else
                "; no count of these devices holds it")
        what = f"batch {batch}" if batch else "a single sequence"
        raise ParplanError(f"{model.name} does not fit on {cluster.name} with {what} of {input_len}+{output_len} "
                           f"tokens at any tp x pp split ({100 * headroom:.0f}% HBM headroom){more}")
    ranked = rank_plans(df)
    if ranked.empty:
        fit = df[df["fits"]]
        t = fit.loc[fit["ttft_s"].idxmin()]
        p = fit.loc[fit["tpot_s"].idxmin()]
        wanted = " and ".join(x for x in (f"TTFT <= {ttft_ms:g} ms" if ttft_ms is not None else "",
                                          f"TPOT <= {tpot_ms:g} ms" if tpot_ms is not None else "") if x)
        raise ParplanError(f"no layout of {model.name} on {cluster.name} meets {wanted}: the lowest TTFT is "
                           f"{t['ttft_s'] * 1e3:.3g} ms ({_describe(t)}), the lowest TPOT {p['tpot_s'] * 1e3:.3g} ms "
                           f"({_describe(p)}, batch {p['batch']})")
    return df, ranked


def plan_dicts(model: ModelSpec, cluster: Cluster, ranked, *, input_len: int, output_len: int, dtype: str,
               kv_dtype: str | None, headroom: float, top: int) -> list[dict]:
    """The JSON plans, best first: each the full estimate of its layout."""
    out = []
    for _, row in ranked.head(top).iterrows():
        lay = ServeLayout(tp=int(row["tp"]), pp=int(row["pp"]), replicas=int(row["replicas"]), batch=int(row["batch"]),
                          input_len=input_len, output_len=output_len, dtype=dtype, kv_dtype=kv_dtype)
        out.append(inference_dict(estimate_inference(model, cluster, lay, headroom=headroom)))
    return out


def format_plans(df, ranked, top: int = 10) -> str:
    a = df.attrs
    targets = [f"TTFT <= {a['ttft_ms']:g} ms" if a.get("ttft_ms") is not None else "",
               f"TPOT <= {a['tpot_ms']:g} ms" if a.get("tpot_ms") is not None else ""]
    targets = " and ".join(t for t in targets if t) or "none"
    lines = [f"{a['model']} serving on {a['cluster']}: {a['input_len']} in / {a['output_len']} out tokens, "
             f"weights {a['dtype']}, KV {a['kv_dtype'] or 'same as activations'}; {len(df)} candidates, "
             f"{int(df['fits'].sum())} fit, {len(ranked)} split{'s meet' if len(ranked) != 1 else ' meets'} the "
             f"targets ({targets})",
             "",
             f"{'#':>3}  {'layout':<28}{'batch':>6}{'TTFT ms':>10}{'TPOT ms':>10}{'ITL ms':>9}{'tok/s':>11}"
             f"{'tok/s/dev':>11}{'tok/s/user':>11}{'mem GiB':>9}  bottleneck"]
    for i, (_, r) in enumerate(ranked.head(top).iterrows(), 1):
        lines.append(f"{i:>3}  {_describe(r):<28}{r['batch']:>6}{r['ttft_s'] * 1e3:10.1f}{r['tpot_s'] * 1e3:10.2f}"
                     f"{r['itl_s'] * 1e3:9.2f}{r['tokens_per_s']:11.1f}{r['tokens_per_s_per_device']:11.1f}"
                     f"{r['tokens_per_s_per_user']:11.1f}{r['memory_bytes'] / GIB:9.1f}  {r['bottleneck']}")
    lines += ["", format_pareto(pareto_front(df))]
    return "\n".join(lines)


def format_pareto(front, limit: int = 25) -> str:
    """The Pareto front as a table: per-user speed down, throughput per device up."""
    rows = front
    if len(rows) > limit:  # keep the ends and an even spread
        idx = np.unique(np.round(np.linspace(0, len(rows) - 1, limit)).astype(int))
        rows = rows.iloc[idx]
    lines = [f"Pareto front (throughput per device vs per-user speed; {len(front)} points"
             + (f", {len(rows)} shown" if len(rows) < len(front) else "") + "):",
             f"  {'layout':<28}{'batch':>6}{'TPOT ms':>10}{'tok/s/user':>11}{'tok/s/dev':>11}{'TTFT ms':>10}  targets"]
    for _, r in rows.iterrows():
        lines.append(f"  {_describe(r):<28}{r['batch']:>6}{r['tpot_s'] * 1e3:10.2f}{r['tokens_per_s_per_user']:11.1f}"
                     f"{r['tokens_per_s_per_device']:11.1f}{r['ttft_s'] * 1e3:10.1f}  "
                     f"{'met' if r['meets_targets'] else 'missed'}")
    return "\n".join(lines)


def pareto_plot(df, path) -> Path:
    """Save a PNG of throughput per device against per-user decode speed, every split, with the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ParplanError(f"the Pareto plot is a PNG; give a path ending in .png, got {path}")
    fit = df[df["fits"]]
    if fit.empty:
        raise ParplanError("no candidate fits, so there is no Pareto front to plot")
    path.parent.mkdir(parents=True, exist_ok=True)
    a = df.attrs
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (tp, pp), g in fit.groupby(["tp", "pp"]):
        g = g.sort_values("batch")
        ax.plot(g["tokens_per_s_per_user"], g["tokens_per_s_per_device"], marker=".", markersize=3, linewidth=0.8,
                alpha=0.6, label=f"tp={tp} pp={pp} (x{g['replicas'].iloc[0]} replicas)")
    front = pareto_front(df)
    ax.plot(front["tokens_per_s_per_user"], front["tokens_per_s_per_device"], color="black", linewidth=2,
            label="Pareto front")
    if a.get("tpot_ms") is not None:
        ax.axvline(1e3 / a["tpot_ms"], color="red", linestyle="--", linewidth=1,
                   label=f"TPOT target {a['tpot_ms']:g} ms")
    ax.set_xlabel("per-user decode speed (tokens/s per user = 1 / TPOT)")
    ax.set_ylabel("throughput per device (generated tokens/s per device)")
    ax.set_title(f"{a.get('model', '')} on {a.get('cluster', '')}: {a.get('input_len')} in / "
                 f"{a.get('output_len')} out tokens, weights {a.get('dtype', '')}\n"
                 "each line: one tp x pp split, batch growing to the left")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def crossover_plot(tables: dict, path, title: str = "") -> Path:
    """Save a PNG of decode-step time split (GEMM vs TP all-reduce) against batch for several clusters.

    ``tables`` maps a label (e.g. the cluster name) to a ``decode_breakdown`` DataFrame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (label, t) in enumerate(tables.items()):
        color = f"C{i}"
        ax.plot(t["batch"], t["matmul_s"] * 1e3, color=color, linestyle="-", label=f"{label}: GEMMs (weight reads)")
        ax.plot(t["batch"], t["allreduce_s"] * 1e3, color=color, linestyle="--", label=f"{label}: TP all-reduces")
        ax.plot(t["batch"], t["attention_s"] * 1e3, color=color, linestyle=":", label=f"{label}: attention (KV reads)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("decode batch (sequences per step)")
    ax.set_ylabel("time per decode step (ms)")
    ax.set_title(title or "decode step: GEMM time vs TP all-reduce time")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- published serving measurements

PUBLISHED_METRICS = ("ttft_s", "itl_s", "tokens_per_s")


def load_published_serving(path) -> list[dict]:
    """Records of a published-serving YAML file (see ``reports/inference/published-serving.yaml``)."""
    from ..specs.yamlio import read_records

    return read_records(Path(path), "published serving")


def predict_published(records: list[dict], headroom: float = DEFAULT_HEADROOM) -> list[dict]:
    """Predict each record's published metrics: rows of id, metric, published, predicted, error (pred/pub - 1)."""
    from ..specs.hardware import load_hardware, make_cluster
    from ..specs.model import load_model
    from ..specs.yamlio import require_mapping

    rows = []
    for rec in records:
        rid = str(rec.get("id", "?"))
        lay = require_mapping(rec.get("layout"), f"serving record {rid}: layout")
        model = load_model(str(rec.get("model")))
        hw = load_hardware(str(rec.get("hardware")))
        cluster = make_cluster(hw, int(rec.get("devices", 1)))
        layout = ServeLayout(tp=int(lay.get("tp", 1)), pp=int(lay.get("pp", 1)), replicas=int(lay.get("replicas", 1)),
                             batch=int(lay.get("batch", 1)), input_len=int(lay["input_len"]),
                             output_len=int(lay["output_len"]), dtype=str(lay.get("dtype", "bf16")),
                             kv_dtype=lay.get("kv_dtype"))
        d = inference_dict(estimate_inference(model, cluster, layout, headroom=headroom))
        published = require_mapping(rec.get("published"), f"serving record {rid}: published")
        for metric in PUBLISHED_METRICS:
            if published.get(metric) is None:
                continue
            pub = float(published[metric])
            rows.append({"id": rid, "metric": metric, "published": pub, "predicted": d[metric],
                         "error": d[metric] / pub - 1.0, "fits": d["fits"]})
    return rows


def format_published(rows: list[dict]) -> str:
    lines = [f"{'record':<58}{'metric':<14}{'published':>11}{'predicted':>11}{'error':>9}"]
    for r in rows:
        lines.append(f"{r['id']:<58}{r['metric']:<14}{r['published']:11.4g}{r['predicted']:11.4g}"
                     f"{100 * r['error']:+8.1f}%")
    errs = np.abs([r["error"] for r in rows])
    if len(errs):
        lines.append(f"mean |error| {100 * errs.mean():.1f}%, median {100 * np.median(errs):.1f}%, "
                     f"max {100 * errs.max():.1f}%")
    return "\n".join(lines)
