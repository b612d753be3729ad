"""MoE validation error against the experts each GPU launches, per layer and micro-batch.

Reads the JSON ``parplan validate --format json`` writes and the validation files it predicted, and prints for
each MoE record the local experts (experts / ep), the MoE layer-micro-batches one GPU runs per step (its
micro-batches times its stage's MoE layers), the rows each local expert gets per micro-batch at a balanced
router, and what the prediction misses, in seconds and per layer-micro-batch. A cost the model leaves out that
is paid per local expert and per launch (work the host does for each expert's GEMMs) shows as a miss per
layer-micro-batch that grows with the local experts and does not shrink with the rows; the README's MoE
section quotes this table.

usage: parplan validate --format json validation/moe-runs.yaml > /tmp/v.json
       python scripts/moe_local_experts.py /tmp/v.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from parplan.specs.model import model_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dp_reach import validation_records  # noqa: E402


def shape(rec: dict) -> dict:
    """Per GPU: local experts, MoE layer-micro-batches a step, tokens a micro-batch and rows per local expert."""
    m, lo = rec["model"], rec["layout"]
    tp, pp, cp, dp = (lo.get(k) or 1 for k in ("tp", "pp", "cp", "dp"))
    ep, mb = lo.get("ep") or 1, lo.get("micro_batch") or 1
    moe_layers = model_from_dict(m, rec["id"]).moe_layers
    microbatches = rec["global_batch"] / (dp * mb)
    tokens = m["seq_len"] * mb / cp / (tp if lo.get("sequence_parallel") else 1)
    local = m["experts"] / ep
    return {"local": local, "lm": microbatches * moe_layers / pp, "tokens": tokens,
            "rows": tokens * m["top_k"] * ep / m["experts"]}


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def main(path: str) -> None:
    result = json.loads(Path(path).read_text())
    recs = validation_records(sorted({row["file"] for row in result["rows"]}))
    rows = [r for r in result["rows"] if r.get("error") is not None and recs[r["id"]]["model"].get("experts")]
    if not rows:
        raise click.ClickException("no predicted MoE record in this file")
    print(f"{'record':46} {'hw':9} {'local':>5} {'layer-mb':>8} {'rows/exp':>8} {'predicted s':>11} "
          f"{'published s':>11} {'miss s':>6} {'ms/layer-mb':>11} {'error':>7}")
    for r in sorted(rows, key=lambda r: (recs[r["id"]]["hardware"], shape(recs[r["id"]])["local"])):
        rec, s = recs[r["id"]], shape(recs[r["id"]])
        miss = r["published_s"] - r["predicted_s"]
        print(f"{r['id'][:46]:46} {rec['hardware'][:9]:9} {s['local']:5.0f} {s['lm']:8.0f} {s['rows']:8.0f} "
              f"{r['predicted_s']:11.2f} {r['published_s']:11.2f} {miss:6.2f} {1e3 * miss / s['lm']:11.2f} "
              f"{100 * r['error']:+6.1f}%" + ("  (left out)" if r.get("left_out") else ""))


if __name__ == "__main__":
    sys.exit(main())
