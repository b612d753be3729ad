"""The multi-GPU layer script on CPU: real tensor-parallel and FSDP layers over 2 gloo ranks match one device."""
import csv
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("torch")
ROOT = REPO


def test_tp_and_fsdp_layers_match_the_one_device_layer(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "scripts/multi_gpu_layers.py", "--device", "cpu", "--tiny", "--reps", "2", "--warmup", "1",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["layout"]: r for r in csv.DictReader(open(tmp_path / "multi_gpu_layers.csv"))}
    assert set(rows) == {"one_device", "tp", "fsdp"}
    for r in rows.values():
        assert r["correct"] == "True" and float(r["max_rel_error_vs_reference"]) < 1e-4
        assert int(r["ranks"]) == 2 and float(r["measured_fwd_s"]) > 0
