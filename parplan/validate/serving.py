"""Published serving measurements predicted as a user would serve them: TTFT, ITL and throughput."""
from __future__ import annotations

from pathlib import Path

from ..cost.memory import DEFAULT_HEADROOM
from ..specs.cluster import make_cluster
from ..specs.hardware import load_hardware
from ..specs.model_loader import load_model
from ..specs.yamlio import read_records, require_mapping
from ..step.serve_layout import ServeLayout
from ..step.serve import estimate_inference


PUBLISHED_METRICS = ("ttft_s", "itl_s", "tokens_per_s")


def load_published_serving(path) -> list[dict]:
    """Records of a published-serving YAML file (see ``reports/inference/published-serving.yaml``)."""
    return read_records(Path(path), "published serving")


def predict_published(records: list[dict], headroom: float = DEFAULT_HEADROOM) -> list[dict]:
    """Predict each record's published metrics: rows of id, metric, published, predicted, error (pred/pub - 1)."""

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
        est = estimate_inference(model, cluster, layout, headroom=headroom)
        d = {m: float(getattr(est, m)) for m in PUBLISHED_METRICS} | {"fits": bool(est.fits)}
        published = require_mapping(rec.get("published"), f"serving record {rid}: published")
        for metric in PUBLISHED_METRICS:
            if published.get(metric) is None:
                continue
            pub = float(published[metric])
            rows.append({"id": rid, "metric": metric, "published": pub, "predicted": d[metric],
                         "error": d[metric] / pub - 1.0, "fits": d["fits"]})
    return rows
