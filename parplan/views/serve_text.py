"""The serving views: the JSON record and terminal table of a serving estimate, its per-op rows,
the serving plans and their Pareto front."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..plan.serve_search import describe_split, pareto_front
from ..specs.cluster import Cluster
from ..specs.model import ModelSpec
from ..step.serve import DECODE_KEYS, PREFILL_KEYS, InferenceEstimate, decode_bottleneck, estimate_inference
from ..step.serve_layout import ServeLayout
from ..units import GIB


def inference_dict(est: InferenceEstimate) -> dict[str, Any]:
    """The JSON object of ``estimate --mode inference --format json`` (stable names)."""
    lay = est.layout
    return {
        "mode": "inference",
        "model": est.model.name,
        "hardware": est.cluster.hardware.name,
        "cluster": est.cluster.name,
        "devices": lay.devices,
        "layout": {"tp": lay.tp, "pp": lay.pp, "replicas": lay.replicas, "batch": int(lay.batch),
                   "input_len": lay.input_len, "output_len": lay.output_len, "dtype": lay.dtype,
                   "kv_dtype": lay.kv, **({"ep": lay.ep} if est.model.is_moe else {})},
        "tp": lay.tp, "pp": lay.pp, "replicas": lay.replicas, "batch": int(lay.batch),
        "framework": est.software.name if est.software is not None else None,
        "software": est.software.describe() if est.software is not None else None,
        "cuda_graphs": bool(est.software.graphed(lay.batch)) if est.software is not None else None,
        "ttft_s": float(est.ttft_s),
        "tpot_s": float(est.tpot_s),
        "itl_s": float(est.itl_s),
        "request_latency_s": float(est.request_latency_s),
        "tokens_per_s": float(est.tokens_per_s),
        "tokens_per_s_per_device": float(est.tokens_per_s_per_device),
        "tokens_per_s_per_user": float(est.tokens_per_s_per_user),
        "kv_cache_bytes": float(est.kv_cache_bytes),
        "memory_bytes": {k: float(v) for k, v in est.memory_bytes.items()},
        "hbm_bytes": float(est.cluster.hardware.hbm_bytes),
        "headroom": est.headroom,
        "fits": bool(est.fits),
        "max_batch": int(est.max_batch),
        "tp_allreduce_bytes_per_layer": float(est.tp_allreduce_bytes_per_layer),
        "prefill_breakdown_s": {k: float(est.prefill_breakdown_s[k]) for k in PREFILL_KEYS},
        "decode_breakdown_s": {k: float(est.decode_breakdown_s[k]) for k in DECODE_KEYS},
        "bottleneck": decode_bottleneck(est.decode_breakdown_s),
        "prefill_layers_s": float(est.prefill_layers_s) if est.prefill_layers_s is not None else None,
        "decode_layers_s": float(est.decode_layers_s) if est.decode_layers_s is not None else None,
        "notes": list(est.notes) + (list(est.software.notes) if est.software is not None else []),
    }


def format_inference(est: InferenceEstimate) -> str:
    d = inference_dict(est)
    lay = est.layout
    hbm = est.cluster.hardware.hbm_bytes
    m = d["memory_bytes"]
    lines = [
        f"{d['model']} on {est.cluster.label}: serving tp={lay.tp} pp={lay.pp} replicas={lay.replicas}"
        f"{f' ep={lay.ep}' if lay.ep > 1 else ''}, "
        f"batch {d['batch']} per replica, {lay.input_len} in / {lay.output_len} out tokens, "
        f"weights {lay.dtype}, KV {lay.kv}",
        f"  software          {d['software']}" + ("" if d["cuda_graphs"] else " (this batch runs without a graph)"
                                                   if est.software.cuda_graphs else ""),
        f"  TTFT              {d['ttft_s'] * 1e3:10.2f} ms   (prefill of one prompt, queueing ignored)",
        f"  TPOT              {d['tpot_s'] * 1e3:10.2f} ms   (one decode step at batch {d['batch']}, "
        f"context {lay.input_len + lay.output_len // 2})",
        f"  ITL               {d['itl_s'] * 1e3:10.2f} ms   (TPOT plus other requests' prefills, spread)",
        f"  request latency   {d['request_latency_s']:10.3f} s",
        f"  throughput        {d['tokens_per_s']:10.1f} generated tokens/s "
        f"({d['tokens_per_s_per_device']:.1f} per device, {d['tokens_per_s_per_user']:.1f} per user)",
        f"  memory / device   {m['total'] / GIB:10.2f} GiB of {hbm / GIB:.0f} GiB "
        f"(weights {m['weights'] / GIB:.2f}, KV cache {m['kv_cache'] / GIB:.2f}, workspace {m['workspace'] / GIB:.2f})"
        f" -> {'fits' if d['fits'] else 'DOES NOT FIT'} with {100 * est.headroom:.0f}% headroom; "
        f"max batch {d['max_batch']}",
        "  decode step       " + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in d["decode_breakdown_s"].items()
                                           if v > 0),
        "  prefill           " + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in d["prefill_breakdown_s"].items()
                                           if v > 0),
        f"  TP all-reduce     {d['tp_allreduce_bytes_per_layer'] / 1e6:.3g} MB per layer per decode step; "
        f"bottleneck: {d['bottleneck']}",
    ]
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)


def op_rows(est: InferenceEstimate, phase: str = "decode") -> list[dict]:
    """Per-op rows of one layer for the prefill or one decode step."""
    pairs = est.decode_ops if phase == "decode" else est.prefill_ops
    return [{"op": o.name, "kind": o.kind, "flops": float(o.fwd_flops), "bytes": float(o.fwd_bytes),
             "time_s": float(t)} for o, t in pairs]


def plan_dicts(model: ModelSpec, cluster: Cluster, ranked, *, input_len: int, output_len: int, dtype: str,
               kv_dtype: str | None, headroom: float, top: int, software=None) -> list[dict]:
    """The JSON plans, best first: each the full estimate of its layout."""
    out = []
    for _, row in ranked.head(top).iterrows():
        lay = ServeLayout(tp=int(row["tp"]), pp=int(row["pp"]), replicas=int(row["replicas"]), batch=int(row["batch"]),
                          input_len=input_len, output_len=output_len, dtype=dtype, kv_dtype=kv_dtype,
                          ep=int(row["ep"]) if "ep" in row else 1)
        out.append(inference_dict(estimate_inference(model, cluster, lay, headroom=headroom, software=software)))
    return out


def format_plans(df, ranked, top: int = 10) -> str:
    a = df.attrs
    targets = [f"TTFT <= {a['ttft_ms']:g} ms" if a.get("ttft_ms") is not None else "",
               f"TPOT <= {a['tpot_ms']:g} ms" if a.get("tpot_ms") is not None else ""]
    targets = " and ".join(t for t in targets if t)
    meet = (f"{'s meet' if len(ranked) != 1 else ' meets'} the targets ({targets})" if targets else
            f"{'s' if len(ranked) != 1 else ''} (no latency targets: --ttft-ms, --tpot-ms)")
    lines = [f"{a['model']} serving on {a.get('cluster_label', a['cluster'])}: {a['input_len']} in / "
             f"{a['output_len']} out tokens, weights {a['dtype']}, KV {a['kv_dtype'] or 'same as activations'}; "
             f"{len(df)} candidates, {int(df['fits'].sum())} fit, {len(ranked)} split{meet}",
             f"software: {a.get('framework', '')}",
             "",
             f"{'#':>3}  {'layout':<28}{'batch':>6}{'TTFT ms':>10}{'TPOT ms':>10}{'ITL ms':>9}{'tok/s':>11}"
             f"{'tok/s/dev':>11}{'tok/s/user':>11}{'mem GiB':>9}  bottleneck"]
    for i, (_, r) in enumerate(ranked.head(top).iterrows(), 1):
        lines.append(f"{i:>3}  {describe_split(r):<28}{r['batch']:>6}{r['ttft_s'] * 1e3:10.1f}{r['tpot_s'] * 1e3:10.2f}"
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
        lines.append(f"  {describe_split(r):<28}{r['batch']:>6}{r['tpot_s'] * 1e3:10.2f}{r['tokens_per_s_per_user']:11.1f}"
                     f"{r['tokens_per_s_per_device']:11.1f}{r['ttft_s'] * 1e3:10.1f}  "
                     f"{'met' if r['meets_targets'] else 'missed'}")
    return "\n".join(lines)
