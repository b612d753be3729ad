"""The default CPU sweep size, and a bench run that stops early still plotting and summarising its rows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO
from parplan.bench.config import CPU_MAX_BYTES, BenchConfig, resolve
from parplan.units import GIB


def test_default_largest_buffer_depends_on_the_device():
    assert resolve(BenchConfig(), on_gpu=False).max_bytes == CPU_MAX_BYTES == 64 * 2**20
    assert resolve(BenchConfig(), on_gpu=True).max_bytes == GIB
    assert resolve(BenchConfig(max_bytes=1024), on_gpu=False).max_bytes == 1024
    assert resolve(BenchConfig(min_bytes=2 * GIB), on_gpu=False).max_bytes == 2 * GIB
    assert "auto" in BenchConfig().to_argv()


pytest.importorskip("torch")


def _bench(out, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "parplan.bench", "bench", *args, "-o", str(out)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _rows(out) -> int:
    try:
        return max(0, len((out / "results.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_a_dying_rank_still_leaves_plots_and_a_summary(tmp_path):
    out = tmp_path / "run"
    proc = _bench(out, "--nproc", "2", "--suite", "collectives", "--ops", "all_reduce", "--max-bytes", "1K",
                  "--iters", "2", "--warmup", "1", "--timeout", "60",
                  env={"PARPLAN_BENCH_FAIL_RANK": "1", "PARPLAN_BENCH_FAIL_ITEM": "3"})
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and err.rstrip().splitlines()[-1].startswith("Error: rank 1")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["rows"] == 3 == _rows(out)
    assert (out / "busbw.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote 3 rows" in err


def test_an_interrupted_run_still_leaves_plots_and_a_summary(tmp_path):
    out = tmp_path / "run"
    # the small matmuls finish; the copies up to 1 GiB at 100000 iterations would take hours
    proc = _bench(out, "--nproc", "1", "--suite", "matmul,copy", "--matmul-max", "64", "--max-bytes", "1G",
                  "--iters", "100000", "--warmup", "0")
    deadline = time.monotonic() + 120
    while _rows(out) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _rows(out) >= 3, proc.stderr.read() if proc.poll() is not None else "no rows"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.rstrip().splitlines()[-1].startswith("Error: interrupted; finished rows are kept")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["rows"] == _rows(out)
    assert (out / "matmul.png").read_bytes()[:4] == b"\x89PNG"
