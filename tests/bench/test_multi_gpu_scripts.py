"""The overlap and ring-attention scripts of the multi-GPU pass on 2 gloo ranks, and the formulas they report."""
import csv
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("torch")
sys.path.insert(0, str(REPO / "scripts"))


def _torchrun(script, *args, out):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           f"scripts/{script}", "--device", "cpu", "--tiny", *args, "--hw", "h100-sxm",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_ring_attention_over_two_ranks_matches_one_device(tmp_path):
    _torchrun("multi_gpu_context.py", "--seq", "64", "--reps", "1", "--warmup", "0", out=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "context.csv")))
    assert [(r["seq"], r["cp"], r["correct"]) for r in rows] == [("64", "2", "True")]
    r = rows[0]
    assert float(r["max_rel_error_vs_reference"]) < 1e-4 and float(r["measured_fwd_s"]) > 0
    # parplan's rank: half the one-device kernel's work plus merges and what the ring outlasts
    assert float(r["predicted_kernels_fwd_s"]) < float(r["predicted_one_device_fwd_s"])
    assert float(r["predicted_fwd_s"]) >= float(r["predicted_kernels_fwd_s"]) + float(r["predicted_merges_fwd_s"])


def test_overlap_script_reports_exposed_hidden_and_the_models_prediction(tmp_path):
    _torchrun("multi_gpu_overlap.py", "--tokens", "32", "--reps", "2", "--warmup", "1", out=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "overlap.csv")))
    assert [(r["phase"], r["tokens"]) for r in rows] == [("forward", "32"), ("backward", "32")]
    for r in rows:
        f = {k: float(v) for k, v in r.items() if k.startswith(("measured_", "predicted_", "model_"))}
        assert f["measured_exposed_s"] == pytest.approx(f["measured_both_s"] - f["measured_compute_s"])
        assert f["predicted_slowdown"] > 0
        link, window, s = f["measured_comm_s"], f["measured_compute_s"], f["predicted_slowdown"]
        assert f["model_exposed_on_measured_s"] == pytest.approx(max(link - window, link * s / (1 + s)))
    assert int(rows[1]["reduce_scatter_bytes"]) > 0 and int(rows[0]["reduce_scatter_bytes"]) == 0


def test_implied_slowdown_inverts_the_overlap_model():
    from multi_gpu_overlap import implied_slowdown

    w, link, s = 10.0, 4.0, 0.25
    # The collective ends first: the compute is stretched by L s / (1 + s) = 0.8.
    assert implied_slowdown(w, w + link * s / (1 + s), link, w + link * s / (1 + s)) == pytest.approx(s)
    # The compute ends last beside a longer collective: stretched whole, to W (1 + s).
    assert implied_slowdown(2.0, 2.0 * (1 + s), 30.0, 30.0) == pytest.approx(s)
