"""Predict stored multi-GPU layer measurements again, with today's model and any profiles (no GPU).

Reads the ``multi_gpu_layers.csv`` files that ``scripts/multi_gpu_layers.py`` wrote, predicts
each (model, micro-batch, layout) with every ``--hw`` profile, and prints one table of
forward, backward and step (forward + backward) errors, plus their median and largest
|error| per profile and layout; ``--csv`` also writes the rows.

    python scripts/repredict_layers.py reports/multi-gpu/h200x2-2026-11-23-pass2/layers-*/multi_gpu_layers.csv \\
        --hw h200 --hw reports/multi-gpu/h200x2-2026-11-23-pass2/calibrated.yaml
"""
from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multi_gpu_predict import predict_layers  # noqa: E402

from parplan.specs.model_loader import load_model  # noqa: E402
from parplan.specs.model import with_seq_len  # noqa: E402


def repredict(paths: list[str], profiles: list[str]) -> pd.DataFrame:
    rows = []
    for path in paths:
        measured = pd.read_csv(path).drop_duplicates("layout")
        first = measured.iloc[0]
        model = with_seq_len(load_model(first.model), int(first.seq))
        for hw in profiles:
            predicted = predict_layers(hw, model, int(first.ranks), int(first.micro_batch), first["dtype"],
                                       list(measured.layout))
            for r in measured.itertuples():
                pf, pb = predicted[r.layout]
                rows.append(dict(case=f"{r.model} mb{r.micro_batch}", layout=r.layout,
                                 profile=os.path.basename(hw), measured_fwd_s=r.measured_fwd_s,
                                 measured_bwd_s=r.measured_bwd_s, predicted_fwd_s=pf, predicted_bwd_s=pb))
    d = pd.DataFrame(rows)
    d["fwd_error_pct"] = 100 * (d.predicted_fwd_s / d.measured_fwd_s - 1)
    d["bwd_error_pct"] = 100 * (d.predicted_bwd_s / d.measured_bwd_s - 1)
    d["step_error_pct"] = 100 * ((d.predicted_fwd_s + d.predicted_bwd_s) / (d.measured_fwd_s + d.measured_bwd_s) - 1)
    return d


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv_files", nargs="+")
    ap.add_argument("--hw", action="append", required=True,
                    help="profile name, profile file or cluster file; repeatable")
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args()
    d = repredict(args.csv_files, args.hw)
    errors = ["fwd_error_pct", "bwd_error_pct", "step_error_pct"]
    pd.set_option("display.width", 200)
    print(d[["case", "layout", "profile", *errors]].round(1).to_string(index=False))
    by = d.groupby(["profile", "layout"])[errors]
    print("\nmedian |error| %\n" + by.agg(lambda s: s.abs().median()).round(1).to_string())
    print("\nlargest |error| %\n" + by.agg(lambda s: s.abs().max()).round(1).to_string())
    if args.csv:
        d.to_csv(args.csv + ".part", index=False)
        os.replace(args.csv + ".part", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
