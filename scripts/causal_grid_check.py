"""Causal kernels over small grids, measured beside the model: ``tile_utilization`` at the run's grid over
the same at the table grid of the same run (``gpu_causal_grid.py`` writes both), so a clock state the two
share cancels.

Prints log(measured / model) per row and its rms and mean per backend and pass.

usage: python scripts/causal_grid_check.py CSV [--hw h100-sxm] [--min-seq 2048]
"""
from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict

import click

from parplan.cost.kernels import tile_utilization
from parplan.specs.hardware import load_hardware


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--hw", "hw_name", default="h100-sxm", show_default=True)
@click.option("--min-seq", default=0, show_default=True, help="Leave out shorter rows from the summary.")
def main(path: str, hw_name: str, min_seq: int) -> None:
    hw = load_hardware(hw_name)
    rows = list(csv.DictReader(open(path)))
    table = {(r["backend"], r["head_dim"], r["seq"]): r for r in rows if r["grid"] == "table"}
    logs = defaultdict(list)
    print("backend  d  heads  batch   seq  fwd meas/model  bwd meas/model")
    for r in rows:
        t = table.get((r["backend"], r["head_dim"], r["seq"]))
        if r["grid"] == "table" or t is None:
            continue
        s = int(r["seq"])
        run, ref = int(r["heads"]) * int(r["batch"]), int(t["heads"]) * int(t["batch"])
        cells = []
        for col, backward in (("fwd_s", False), ("bwd_s", True)):
            measured = (run / ref) * float(t[col]) / float(r[col])
            model = float(tile_utilization(hw, s, s, run, True, backward) /
                          tile_utilization(hw, s, s, ref, True, backward))
            cells.append(f"{measured:.2f}/{model:.2f}")
            if s >= min_seq:
                logs[(r["backend"], "bwd" if backward else "fwd")].append(math.log(measured / model))
        print(f"{r['backend']:7} {r['head_dim']:>3} {r['heads']:>5} {r['batch']:>6} {s:>6}  {cells[0]:>13}"
              f"  {cells[1]:>14}")
    print("\nlog(measured / model)   n    rms    mean")
    for (backend, side), xs in sorted(logs.items()):
        rms = math.sqrt(sum(x * x for x in xs) / len(xs))
        print(f"{backend:7} {side}          {len(xs):4d}  {rms:.3f}  {sum(xs) / len(xs):+.3f}")


if __name__ == "__main__":
    sys.exit(main())
