"""A slice of the multi-GPU pass (scripts/multi_gpu_pass8.sh --dry-run) on 2 gloo ranks: the calibration run of
collectives, the profile calibrated against the NVLS-off cluster file, the tables and the pack."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO

pytest.importorskip("torch")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_dry_run_slice_calibrates_with_nvls_off_and_packs(tmp_path):
    out, pack = tmp_path / "pass", tmp_path / "pack"
    proc = subprocess.run(["bash", "scripts/multi_gpu_pass8.sh", "--dry-run", "--nproc", "2", "--only",
                           "coll-calib,calibrate,tables,pack", str(out), str(pack)], cwd=REPO,
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for name in ("coll-calib: exit 0", "calibrate: exit 0", "tables: exit 0"):
        assert name in summary, summary
    assert "compute" not in summary and "step" not in summary  # --only skips the rest
    # The environment of every step keeps NVLink multicast off.
    meta = (out / "collectives-calib" / "meta.json").read_text()
    assert '"NCCL_NVLS_ENABLE": "0"' in meta
    # The calibrated profile keeps the cluster file's in-switch reduction off; the base profile has it on.
    from parplan.specs.hardware import load_hardware
    assert load_hardware("h100-sxm").intra_node.in_switch_reduction
    calibrated = load_hardware(str(out / "calibrated.yaml"))
    assert not calibrated.intra_node.in_switch_reduction
    assert {(f.op, f.ranks) for f in calibrated.collective_fits} >= {("all_reduce", 2), ("all_gather", 2)}
    assert (out / "profiles.txt").read_text().split() == ["shipped", "h100-sxm", "nvls-off", "cluster-nvls-off.yaml",
                                                          "calibrated", "calibrated.yaml"]
    assert "## Collectives" in (pack / "tables.md").read_text()
    with tarfile.open(pack / "multi-gpu-pass.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"pass/calibrated.yaml", "pass/collectives-calib/results.csv", "pass/tables.md"} <= names
