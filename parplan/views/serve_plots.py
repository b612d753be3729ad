"""Serving figures: the Pareto front of throughput per device against per-user speed, and decode time
split into GEMMs and TP all-reduces against batch."""
from __future__ import annotations

from pathlib import Path

from ..errors import ParplanError
from ..plan.serve_search import pareto_front


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
    one_batch = bool(fit.groupby(["tp", "pp"])["batch"].nunique().max() == 1)  # --batch fixed: a point per split
    for (tp, pp), g in fit.groupby(["tp", "pp"]):
        g = g.sort_values("batch")
        ax.plot(g["tokens_per_s_per_user"], g["tokens_per_s_per_device"], marker="o" if one_batch else ".",
                markersize=7 if one_batch else 3, linewidth=0.8, alpha=0.9 if one_batch else 0.6, zorder=3,
                label=f"tp={tp} pp={pp} (x{g['replicas'].iloc[0]} replica{'s' if g['replicas'].iloc[0] > 1 else ''})")
    front = pareto_front(df)
    # drawn beneath the splits, so a split on the front stays visible
    ax.plot(front["tokens_per_s_per_user"], front["tokens_per_s_per_device"], color="black",
            linewidth=1.2 if one_batch else 2, linestyle="--" if one_batch else "-", alpha=0.7, zorder=2,
            label="Pareto front")
    if a.get("tpot_ms") is not None:
        ax.axvline(1e3 / a["tpot_ms"], color="red", linestyle="--", linewidth=1,
                   label=f"TPOT target {a['tpot_ms']:g} ms")
    ax.set_xlabel("per-user decode speed (tokens/s per user = 1 / TPOT)")
    ax.set_ylabel("throughput per device (generated tokens/s per device)")
    batch = f"batch {int(fit['batch'].iloc[0])}: each point one tp x pp split" if one_batch else \
        "each line: one tp x pp split, batch growing to the left"
    ax.set_title(f"{a.get('model', '')} on {a.get('cluster_label', a.get('cluster', ''))}: {a.get('input_len')} in / "
                 f"{a.get('output_len')} out tokens, weights {a.get('dtype', '')}, "
                 f"KV cache {a.get('kv_dtype') or a.get('dtype', '')}\n{batch}")
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
