"""Causal kernels over small grids, measured beside the model: ``tile_utilization`` at the run's grid over
the same at the table grid of the same run (``gpu_causal_grid.py`` writes both), so a clock state the two
share cancels.

Each backend's forward is scheduled as the profile's attention table says its blocks reside (FlashAttention-2:
two an SM on Hopper); ``--flash2-residency 1,1`` schedules it one an SM, ``2,0.65`` another lone rate.
Prints log(measured / model) per row and its rms and mean per backend and pass.

usage: python scripts/causal_grid_check.py CSV [--hw h100-sxm] [--min-seq 2048] [--min-tiles 132]
                                           [--flash2-residency BLOCKS,LONE_RATE]
"""
from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict

import click

from parplan.cost.kernels import ATTENTION_BLOCK_ROWS, tile_utilization
from parplan.specs.hardware import load_hardware

KERNELS = {"flash": "flash2", "cudnn": "cudnn"}


def _residency(text: str | None):
    if text is None:
        return None
    try:
        blocks, lone = text.split(",")
        return int(blocks), float(lone)
    except ValueError:
        raise click.BadParameter(f"expected BLOCKS,LONE_RATE such as 2,0.6, got {text!r}") from None


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--hw", "hw_name", default="h100-sxm", show_default=True)
@click.option("--min-seq", default=0, show_default=True, help="Leave out shorter rows from the summary.")
@click.option("--min-tiles", default=0, show_default=True,
              help="Leave out rows of no more query tiles than this from the summary (e.g. the SM count).")
@click.option("--flash2-residency", default=None, help="BLOCKS,LONE_RATE of FlashAttention-2's forward.")
def main(path: str, hw_name: str, min_seq: int, min_tiles: int, flash2_residency: str | None) -> None:
    hw = load_hardware(hw_name)
    residency = {k: (c.forward_blocks_per_sm, c.forward_lone_rate) for k, c in hw.attention_kernels.items()}
    if flash2_residency is not None:
        residency["flash2"] = _residency(flash2_residency)
    rows = list(csv.DictReader(open(path)))
    table = {(r["backend"], r["head_dim"], r["seq"]): r for r in rows if r["grid"] == "table"}
    logs = defaultdict(list)
    print(f"forward residency (blocks an SM, lone rate): {residency}")
    print("backend  d  heads  batch   seq  fwd meas/model  bwd meas/model")
    for r in rows:
        t = table.get((r["backend"], r["head_dim"], r["seq"]))
        if r["grid"] == "table" or t is None:
            continue
        s = int(r["seq"])
        run, ref = int(r["heads"]) * int(r["batch"]), int(t["heads"]) * int(t["batch"])
        summed = s >= min_seq and math.ceil(s / ATTENTION_BLOCK_ROWS) * run > min_tiles
        cells = []
        for col, backward in (("fwd_s", False), ("bwd_s", True)):
            res = None if backward else residency.get(KERNELS.get(r["backend"], ""))
            measured = (run / ref) * float(t[col]) / float(r[col])
            model = float(tile_utilization(hw, s, s, run, True, backward, res) /
                          tile_utilization(hw, s, s, ref, True, backward, res))
            cells.append(f"{measured:.2f}/{model:.2f}")
            if summed:
                logs[(r["backend"], "bwd" if backward else "fwd")].append(math.log(measured / model))
        print(f"{r['backend']:7} {r['head_dim']:>3} {r['heads']:>5} {r['batch']:>6} {s:>6}  {cells[0]:>13}"
              f"  {cells[1]:>14}")
    print("\nlog(measured / model)   n    rms    mean")
    for (backend, side), xs in sorted(logs.items()):
        rms = math.sqrt(sum(x * x for x in xs) / len(xs))
        print(f"{backend:7} {side}          {len(xs):4d}  {rms:.3f}  {sum(xs) / len(xs):+.3f}")


if __name__ == "__main__":
    sys.exit(main())
