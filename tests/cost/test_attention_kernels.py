"""The measured attention curve: its inverse reproduces each measured rate, by hand and on the shipped H100 table."""
import csv
from pathlib import Path

import pytest

from parplan.cost.kernels import attention_curve_fraction, attention_efficiency
from parplan.specs.hardware import load_hardware

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_entry_is_the_rate_over_the_gemm_rate_and_the_last_wave():
    hw = load_hardware("h100-sxm")
    # 1024 tokens over 16 x 64 heads: 8 query tiles of 128 rows per head, 8192 tiles on 132 SMs in 63 waves,
    # the last one partly filled: 8192 / (63 x 132) of the SMs busy on average.
    util = 8192 / (63 * 132)
    want = 500e12 / (989.4e12 * hw.matmul_efficiency * util)
    assert float(attention_curve_fraction(hw, 1024, 16 * 64, 500e12)) == pytest.approx(want, rel=1e-9)


def test_the_shipped_h100_curve_reproduces_its_measurements():
    """Each cuDNN and FlashAttention-2 row measured on the H100 comes back from the profile within the three
    decimals the table keeps."""
    hw = load_hardware("h100-sxm")
    kernels = {"flash": "flash2", "cudnn": "cudnn"}
    rows = [r for r in csv.DictReader(open(ROOT / "reports/gpu-checks/h100-2026-12-06c/attention.csv"))
            if r["backend"] in kernels]
    assert len(rows) == 32
    for r in rows:
        s, dh, heads = int(r["seq"]), int(r["head_dim"]), int(r["heads"]) * int(r["batch"])
        fwd, bwd = attention_efficiency(hw, s, dh, s, heads, (kernels[r["backend"]],))
        peak = hw.peak("bf16")
        assert float(fwd) * peak == pytest.approx(float(r["fwd_tflops"]) * 1e12, rel=0.004)
        assert float(bwd) * peak == pytest.approx(float(r["bwd_tflops"]) * 1e12, rel=0.004)
