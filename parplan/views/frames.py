"""pandas DataFrame views of plans and estimates, for notebooks.

```python
from parplan import frames
plans = frames.plan_frame("gpt3-13b", "a100x64")          # every candidate, ranked
best = frames.plan_estimates(plans, "gpt3-13b", "a100x64", top=3)  # Estimates of the top plans
frames.estimate_frame(best)                              # one row per Estimate
frames.explain_frames(best[0])["ops"]                    # per-op table of one layer
```

The columns keep the names of ``parplan estimate --format json`` and of
``search.search`` (``step_time_s``, ``tokens_per_s``, ``mfu``, ``memory_bytes``,
``fits``, ``<component>_s``); memory parts are ``memory_<part>_bytes``.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import ParplanError
from ..step.train import Estimate, estimate
from .op_table import op_table
from ..layouts.strategies import breakdown_keys
from ..cost.memory import DEFAULT_HEADROOM
from ..specs.cluster import Cluster, load_cluster
from ..specs.framework import resolve_software
from ..specs.framework_loader import load_framework
from ..specs.model import ModelSpec, with_seq_len
from ..specs.model_loader import load_model
from ..units import GIB
from .records import collective_rows, estimate_dict
from ..plan.candidates import SearchSpace, default_global_batch
from ..step.train import bottleneck
from ..plan.search import describe_row, layout_of, rank, search

__all__ = ["as_cluster", "as_model", "as_software", "best_batch_frame", "estimate_frame", "explain_frames",
           "memory_part_columns", "plan_estimates", "plan_frame", "search_space"]

LAYOUT_COLUMNS = ("tp", "pp", "dp", "cp", "zero", "micro_batch", "global_batch", "seq_len", "sp", "vpp",
                  "recompute", "recompute_layers", "schedule", "dtype")


def as_model(model: ModelSpec | str, seq: int | None = None) -> ModelSpec:
    """A ModelSpec from itself or a name/path, optionally at another sequence length."""
    m = load_model(model) if isinstance(model, str) else model
    if not isinstance(m, ModelSpec):
        raise ParplanError(f"expected a model name or ModelSpec, got {type(model).__name__}")
    return with_seq_len(m, seq)


def as_cluster(cluster: Cluster | str) -> Cluster:
    """A Cluster from itself or a spec such as ``a100x64``."""
    c = load_cluster(cluster) if isinstance(cluster, str) else cluster
    if not isinstance(c, Cluster):
        raise ParplanError(f"expected a cluster spec or Cluster, got {type(cluster).__name__}")
    return c


def as_software(software, cluster: Cluster, dtype: str = "bf16"):
    """A Software from itself, a framework name or YAML path, or None (the device's default framework)."""
    if software is None or not isinstance(software, str):
        return software
    return resolve_software(load_framework(software), dtype=dtype, device_kind=cluster.hardware.kind)


def search_space(model: ModelSpec, cluster: Cluster, *, global_batch: int | None = None, dtype: str = "bf16",
                 headroom: float = DEFAULT_HEADROOM, fixed: dict | None = None, allow_cross_node_tp: bool = False,
                 software=None) -> SearchSpace:
    """The search space ``parplan plan`` uses: the default global batch unless one is given."""
    if global_batch is not None and (isinstance(global_batch, bool) or int(global_batch) != global_batch
                                     or global_batch < 1):
        raise ParplanError(f"global batch must be a positive whole number, got {global_batch!r}")
    cluster.hardware.peak(dtype)
    gb = int(global_batch) if global_batch is not None else default_global_batch(model, cluster, model.seq_len)
    return SearchSpace(global_batch=gb, seq_len=model.seq_len, dtype=dtype, allow_cross_node_tp=allow_cross_node_tp,
                       fixed=dict(fixed or {}), software=as_software(software, cluster, dtype), headroom=headroom)


def plan_frame(model: ModelSpec | str, cluster: Cluster | str, *, global_batch: int | None = None,
               seq: int | None = None, dtype: str = "bf16", objective: str = "throughput",
               headroom: float = DEFAULT_HEADROOM, fixed: dict | None = None, allow_cross_node_tp: bool = False,
               software=None, feasible_only: bool = False, progress=None):
    """Every candidate layout the search evaluates, ranked.

    The plans that fit come first in ``objective`` order (``rank`` 1, 2, ...), then
    those that do not (``rank`` missing) by step time. Added columns: ``rank``,
    ``layout`` (as ``parplan plan`` prints it), ``placement``, ``bottleneck`` and
    ``memory_gib``. ``frame.attrs`` holds the model and cluster names, the
    ``SearchSpace`` (for ``search.layout_of``), ``hbm_bytes``, ``headroom`` and
    the number of candidates ``evaluated``. ``progress(done, total)`` follows the search.
    """
    import pandas as pd

    m, cl = as_model(model, seq), as_cluster(cluster)
    space = search_space(m, cl, global_batch=global_batch, dtype=dtype, headroom=headroom, fixed=fixed,
                         allow_cross_node_tp=allow_cross_node_tp, software=software)
    df, evaluated = search(m, cl, space, progress=progress)
    ranked = rank(df, objective)
    parts = [ranked]
    if not feasible_only:
        parts.append(df[~df["fits"]].sort_values(["step_time_s", "memory_bytes"], kind="stable"))
    out = pd.concat(parts, ignore_index=True)
    records = out.to_dict("records")
    out.insert(0, "rank", pd.array(list(range(1, len(ranked) + 1)) + [None] * (len(out) - len(ranked)),
                                   dtype="Int64"))
    out.insert(1, "layout", [describe_row(r) for r in records])
    out.insert(2, "placement", out["order"].str.replace("tp,cp,", "", regex=False))
    out["bottleneck"] = [bottleneck(r) for r in records]
    out["memory_gib"] = out["memory_bytes"] / GIB
    out.attrs.update(model=m.name, cluster=cl.name, hardware=cl.hardware.name, devices=cl.devices, space=space,
                     hbm_bytes=float(cl.hardware.hbm_bytes), headroom=headroom, evaluated=int(evaluated),
                     objective=objective, global_batch=space.global_batch, seq_len=space.seq_len, dtype=dtype)
    return out


def best_batch_frame(model: ModelSpec | str, cluster: Cluster | str, batches, *, objective: str = "throughput",
                     progress=None, **kw):
    """The :func:`plan_frame` of the global batch, among ``batches`` (None: the default), whose best plan ranks
    first by ``objective``: one search per batch, ranked together as ``parplan plan --global-batch 512..4096``
    ranks them. ``frame.attrs["global_batch"]`` is the batch chosen."""
    frames, error = [], None
    for i, gb in enumerate(batches):
        step = None if progress is None else (lambda done, n, i=i: progress(i + done / max(n, 1), len(batches)))
        try:
            frames.append(plan_frame(model, cluster, global_batch=gb, objective=objective, progress=step, **kw))
        except ParplanError as exc:
            error = exc
    if not frames:
        raise error
    firsts = [f[f["rank"] == 1] for f in frames if (f["rank"] == 1).any()]
    if len(firsts) < 2:
        return next((f for f in frames if (f["rank"] == 1).any()), frames[0])
    import pandas as pd

    best = rank(pd.concat(firsts, ignore_index=True), objective).iloc[0]
    return next(f for f in frames if f.attrs["global_batch"] == int(best["global_batch"]))


def plan_estimates(frame, model: ModelSpec | str, cluster: Cluster | str, top: int = 5,
                   space: SearchSpace | None = None) -> list[Estimate]:
    """Full Estimates (per-op, per-collective, memory parts) of the first ``top`` rows of a plan frame."""
    space = space or frame.attrs.get("space")
    if space is None:
        raise ParplanError("this frame carries no search space; pass space= (plan_frame sets it)")
    m, cl = as_model(model, space.seq_len), as_cluster(cluster)
    return [estimate(m, cl, layout_of(row, space, cl), headroom=space.headroom, software=space.software)
            for _, row in frame.head(top).iterrows()]


def memory_part_columns(frame) -> list[str]:
    """The ``memory_<part>_bytes`` columns of an estimate frame (``memory_bytes`` is the total)."""
    cols = frame.columns if hasattr(frame, "columns") else list(frame)
    return [c for c in cols if c.startswith("memory_") and c.endswith("_bytes") and c != "memory_bytes"]


def _estimate_row(est: Estimate) -> dict[str, Any]:
    d = estimate_dict(est)
    lay = d["layout"]
    row: dict[str, Any] = {"model": d["model"], "hardware": d["hardware"], "cluster": d["cluster"],
                           "devices": d["devices"], "layout": est.layout.describe()}
    row.update({k: lay[k] for k in LAYOUT_COLUMNS})
    row["order"] = ",".join(lay["order"])
    for k in ("step_time_s", "tokens_per_s", "tokens_per_s_per_device", "tflops_per_device", "mfu", "hfu",
              "model_flops_per_step", "hardware_flops_per_step"):
        row[k] = d[k]
    row["memory_bytes"] = d["memory_bytes"]["total"]
    row.update({f"memory_{k}_bytes": v for k, v in d["memory_bytes"].items() if k != "total"})
    row.update(hbm_bytes=d["hbm_bytes"], headroom=d["headroom"], fits=d["fits"])
    row.update({f"{k}_s": d["breakdown_s"][k] for k in breakdown_keys()})
    row.update(layer_forward_s=d["layer"]["forward_s"], layer_backward_s=d["layer"]["backward_s"])
    return row


def estimate_frame(estimates: Estimate | Iterable[Estimate]):
    """One row per Estimate: layout, step time, throughput, MFU/HFU, memory parts, fits, breakdown."""
    import pandas as pd

    ests = [estimates] if isinstance(estimates, Estimate) else list(estimates)
    return pd.DataFrame([_estimate_row(e) for e in ests])


def explain_frames(est: Estimate) -> dict[str, Any]:
    """The tables of ``parplan explain`` as DataFrames.

    Keys: ``summary`` (one row, as ``estimate_frame``), ``breakdown`` (component,
    seconds, share of the step), ``memory`` (part, bytes, GiB, share of HBM),
    ``ops`` (one layer, one micro-batch, one device: FLOPs, bytes, intensity,
    bound, times, achieved FLOP/s, share of the layer) and ``collectives`` (per
    step, with the exposed time).
    """
    import pandas as pd

    d = estimate_dict(est)
    step = d["step_time_s"]
    breakdown = pd.DataFrame({"component": list(breakdown_keys()),
                              "seconds": [d["breakdown_s"][k] for k in breakdown_keys()]})
    breakdown["share"] = breakdown["seconds"] / step
    mem = {k: v for k, v in d["memory_bytes"].items() if k != "total"}
    memory = pd.DataFrame({"part": list(mem), "bytes": list(mem.values())})
    memory["gib"] = memory["bytes"] / GIB
    memory["share_of_hbm"] = memory["bytes"] / d["hbm_bytes"]
    ops = pd.DataFrame(op_table(est))
    if not ops.empty:
        ops["total_s"] = ops["forward_s"] + ops["backward_s"]
        ops["forward_flops_per_s"] = ops["fwd_flops"] / ops["forward_s"].where(ops["forward_s"] > 0)
        ops["backward_flops_per_s"] = ops["bwd_flops"] / ops["backward_s"].where(ops["backward_s"] > 0)
        ops["share_of_layer"] = ops["total_s"] / ops["total_s"].sum()
    collectives = pd.DataFrame(collective_rows(est), columns=[
        "name", "op", "axis", "group", "bytes", "per", "phase", "calls_per_step", "time_s", "link_s", "exposed_s",
        "overlaps_with"])
    return {"summary": estimate_frame(est), "breakdown": breakdown, "memory": memory, "ops": ops,
            "collectives": collectives}
