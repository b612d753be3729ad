"""Predict validation records through the ``parplan`` command line, as a user would, and compare with ``validate``.

Each record becomes ``parplan plan`` with its fields as flags and its model (and cluster, where it changes the
hardware's defaults) as spec files (``parplan.validate.cli_args``); where no layout fits, ``parplan estimate``
with the same flags, as ``validate`` falls back. The step time printed is compared with what ``validate``
predicts for the record: they must be the same number (one path for everyone).

    python scripts/validate_via_cli.py [FILE.yaml ...] [--every N]   # default: every shipped file

Per record: the command-line step time, validate's, and the published one; exit 1 if any differ by more than
1e-9 relative or a command fails (the rest are still run and printed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from parplan.validate.cli_args import record_cli_args  # noqa: E402
from parplan.validate.published import load_runs, predict_record  # noqa: E402


def cli_step_time(args: list[str]) -> tuple[float, str]:
    """(step time, how) from ``parplan plan``, or ``parplan estimate`` where no layout fits."""
    cmd = [sys.executable, "-m", "parplan.cli"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    plan = subprocess.run(cmd + ["plan", *args, "--top", "1", "--format", "json"], capture_output=True, text=True,
                          timeout=300, env=env)
    if plan.returncode == 0:
        return float(json.loads(plan.stdout)[0]["step_time_s"]), "plan"
    if "does not fit" not in plan.stderr:
        raise RuntimeError(plan.stderr.strip() or plan.stdout.strip())
    est = subprocess.run(cmd + ["estimate", *args, "--format", "json"], capture_output=True, text=True, timeout=300,
                         env=env)
    if est.returncode != 0:
        raise RuntimeError(est.stderr.strip())
    return float(json.loads(est.stdout)["step_time_s"]), "estimate"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--every", type=int, default=1, help="only every N-th record (a quicker pass)")
    opts = ap.parse_args()
    runs = [r for f in opts.files for r in load_runs(f)] if opts.files else load_runs()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rec in runs[::opts.every]:
            try:
                cli_s, how = cli_step_time(record_cli_args(rec, Path(tmp)))
                lib_s = float(predict_record(rec)[0].step_time_s)
            except Exception as exc:  # noqa: BLE001 - a batch job reports what it could not do and goes on
                bad += 1
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                print(f"{rec['id']:<52} FAILED {why[:120]}", flush=True)
                continue
            same = abs(cli_s - lib_s) <= 1e-9 * lib_s
            bad += not same
            print(f"{rec['id']:<52} cli {cli_s:10.4f} s  validate {lib_s:10.4f} s  published "
                  f"{float(rec['reference_step_time_s']):10.4f} s  {how:<8} {'same' if same else 'DIFFERENT'}",
                  flush=True)
    print(f"{len(runs[::opts.every]) - bad} of {len(runs[::opts.every])} records give validate's step time "
          "through the command line")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
