"""The fused AdamW step's HBM efficiency from whole-step rows of `parplan bench --suite step`.

torch.optim.AdamW(fused=True) on fp32 parameters with fp32 gradients reads the parameter, gradient and
both moments and writes the parameter and moments: 28 bytes per parameter
(parplan.cost.elementwise.optimizer_bytes_per_param). The rate is those bytes over the measured
optimizer time, as a fraction of the device's datasheet HBM bandwidth.

usage: python scripts/optimizer_efficiency.py PROFILE ROWS_DIR [ROWS_DIR ...]
"""
from __future__ import annotations

import statistics
import sys

from parplan.calibrate.load import load_results
from parplan.cost.elementwise import optimizer_bytes_per_param
from parplan.specs.hardware import load_hardware


def main() -> None:
    hw = load_hardware(sys.argv[1])
    per_param = optimizer_bytes_per_param("fused", "fp32-params", 4)
    fractions = []
    for row in load_results(sys.argv[2:]):
        if row.kind != "step" or not row.optimizer_s or not row.params:
            continue
        frac = row.params * per_param / row.optimizer_s / hw.hbm_bandwidth
        fractions.append(frac)
        print(f"{row.model:16s} {row.op:26s} {row.params / 1e9:6.3f} B params {row.optimizer_s * 1e3:7.2f} ms "
              f"{frac:.3f} of {hw.hbm_bandwidth / 1e12:.2f} TB/s")
    print(f"median {statistics.median(fractions):.3f} over {len(fractions)} rows")


if __name__ == "__main__":
    main()
