"""The multi-GPU layer script on CPU: real tensor-parallel (with and without sequence parallel), FSDP and
FSDP x TP layers over 4 gloo ranks match one device, and each is predicted."""
import csv
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("torch")
ROOT = REPO


def test_sharded_layers_match_the_one_device_layer(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                           "scripts/multi_gpu_layers.py", "--device", "cpu", "--tiny", "--reps", "2", "--warmup", "1",
                           "--hw", "h100-sxm", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["layout"]: r for r in csv.DictReader(open(tmp_path / "multi_gpu_layers.csv"))}
    assert set(rows) == {"one_device", "tp2", "tp2-sp", "tp4", "tp4-sp", "fsdp4", "fsdp2-tp2"}
    for r in rows.values():
        assert r["correct"] == "True" and float(r["max_rel_error_vs_reference"]) < 1e-4
        assert int(r["ranks"]) == 4 and float(r["measured_fwd_s"]) > 0
        assert float(r["predicted_fwd_s"]) > 0 and float(r["predicted_bwd_s"]) > 0
    # Sharding the layer over more ranks shortens the predicted compute of each.
    assert float(rows["tp4"]["predicted_fwd_s"]) < float(rows["one_device"]["predicted_fwd_s"]) * 4
