"""Eager PyTorch element-wise kernels' HBM efficiency per op family, from elementwise.csv of
scripts/gpu_stack_kernels.py: the bytes parplan counts for the op's eager kernels
(parplan.cost.elementwise: TRAFFIC and LOSS_TRAFFIC, per element at 16-bit activations) over the
measured forward plus backward time, as a fraction of the device's datasheet HBM bandwidth. Prints the
profile's ``efficiency.eager`` block.

usage: python scripts/eager_efficiency.py PROFILE elementwise.csv
"""
from __future__ import annotations

import csv
import sys

from parplan.cost.elementwise import LOSS_TRAFFIC, traffic
from parplan.specs.hardware import load_hardware

# measured op -> (profile family, its traffic)
OPS = {"rmsnorm": ("rmsnorm", traffic("rmsnorm", "eager")), "rope_q": ("rope", traffic("rope", "eager")),
       "swiglu": ("swiglu", traffic("swiglu", "eager")), "residual": ("residual", traffic("residual", "eager")),
       "cross_entropy": ("loss", LOSS_TRAFFIC["eager-fp32"])}


def main() -> None:
    hw = load_hardware(sys.argv[1])
    out = {}
    for row in csv.DictReader(open(sys.argv[2])):
        if row["mode"] != "eager" or row["op"] not in OPS:
            continue
        family, t = OPS[row["op"]]
        elems = float(row["tokens"]) * float(row["width"])
        nbytes = elems * (t.fwd_bytes + t.bwd_bytes)
        seconds = float(row["fwd_s"]) + float(row["bwd_s"])
        out[family] = nbytes / seconds / hw.hbm_bandwidth
        print(f"{row['op']:14s} {nbytes / 1e9:7.3f} GB in {seconds * 1e3:7.3f} ms: {out[family]:.3f} of "
              f"{hw.hbm_bandwidth / 1e12:.2f} TB/s", file=sys.stderr)
    print("  eager: {" + ", ".join(f"{k}: {v:.3f}" for k, v in out.items()) + "}")


if __name__ == "__main__":
    main()
