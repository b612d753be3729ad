"""Start the bench workers on this machine with ``python -m torch.distributed.run`` and watch them.

The launcher (torchrun, ``--standalone --max-restarts 0``) ends every rank as soon as one fails.
Its own "root cause" is the first failure it happened to observe, often a rank that only saw
its peer vanish, so the diagnosis here reads the ranks' state records and exit codes instead:
a rank that exited on its own without recording an error died first; otherwise the earliest
recorded error (a failed or timed-out collective) is the cause.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..calibrate.rows import META_NAME
from ..errors import ParplanError
from ..views.progress import is_terminal, progress
from .state import STATE_DIR_ENV, TIMEOUT_TEXT, RankState, read_states
from .writer import finish_from_files

LOG_NAME = "torchrun.log"
_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
# torchrun ends the surviving ranks with SIGTERM, then SIGKILL.
_SIGNALS_FROM_LAUNCHER = (-int(signal.SIGTERM), -int(signal.SIGKILL), -int(signal.SIGINT))
_PROGRESS = re.compile(r"^\[bench\] (\d+)/(\d+) \(\d+%\) (.*)$")


@dataclass(frozen=True)
class LaunchResult:
    returncode: int
    log_path: Path


def package_root() -> str:
    """The directory holding the ``parplan`` package, so the workers import the same code."""
    return str(Path(__file__).resolve().parents[2])


def torchrun_command(nproc: int, worker_argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "0.2",
            "-m", "parplan.bench", *worker_argv]


def exit_codes(log_text: str) -> dict[int, int]:
    """Per-rank exit codes from torchrun's failure report (empty when it printed none)."""
    return {int(rank): int(code) for rank, code in _FAILURE.findall(log_text)}


def diagnose(states: dict[int, RankState], codes: dict[int, int], nproc: int, returncode: int,
             log_path: Path, log_text: str = "") -> str:
    """One line naming the failing rank and what it was doing."""
    def doing(rank: int) -> str:
        state = states.get(rank)
        return state.label if state else "start-up"

    died = [r for r, c in sorted(codes.items())
            if c not in _SIGNALS_FROM_LAUNCHER and (r not in states or states[r].status == "running")]
    if died:
        rank = died[0]
        code = codes[rank]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"rank {rank} {how} during {doing(rank)}; finished rows are kept (log: {log_path})"
    failed = sorted((s for s in states.values() if s.status == "failed"), key=lambda s: s.time)
    if failed:
        extra = ""
        silent = [str(r) for r in range(nproc) if r not in states or states[r].status == "running"]
        if silent and TIMEOUT_TEXT in failed[0].message:  # a timeout: the rank that never answered is the suspect
            extra = f"; rank {', '.join(silent)} reported no error (the likely cause)" if len(silent) == 1 else \
                f"; ranks {', '.join(silent)} reported no error"
        elif len(failed) > 1:
            extra = f"; ranks {', '.join(str(s.rank) for s in failed[1:])} failed too"
        return f"{failed[0].message}{extra}; finished rows are kept (log: {log_path})"
    if not states and not codes:
        lines = [line.strip() for line in log_text.splitlines() if line.strip()]
        last = f": {lines[-1][:200]}" if lines else ""
        return f"torchrun failed with exit code {returncode}{last} (log: {log_path})"
    running = [r for r in range(nproc) if states.get(r) is None or states[r].status == "running"]
    if running:
        rank = running[0]
        return (f"rank {rank} stopped during {doing(rank)} (torchrun exit code {returncode}); "
                f"finished rows are kept (log: {log_path})")
    return f"torchrun failed with exit code {returncode} (log: {log_path})"


def launch(nproc: int, worker_argv: Sequence[str], out_dir: Path, stream=None) -> LaunchResult:
    """Run the workers; forward rank 0's progress lines; raise a one-line ParplanError on failure."""
    stream = stream or sys.stderr
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParplanError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    log_path = out_dir / LOG_NAME
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    tty = is_terminal(stream)
    if tty:
        env["PARPLAN_BENCH_PROGRESS"] = "every"
    with tempfile.TemporaryDirectory(prefix="parplan-bench-") as state_dir, \
            open(log_path, "w", encoding="utf-8") as log:
        env[STATE_DIR_ENV] = state_dir
        try:
            proc = subprocess.Popen(torchrun_command(nproc, worker_argv), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
        except OSError as exc:
            raise ParplanError(f"cannot start torchrun: {exc.strerror or exc}") from None
        log_text: list[str] = []
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminated)
        try:
            with progress("bench", unit="item", stream=stream, disable=not tty) as update:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    log_text.append(line)
                    if line.startswith("[bench]"):
                        step = _PROGRESS.match(line.rstrip("\n")) if tty else None
                        if step:
                            update(int(step.group(1)), int(step.group(2)), step.group(3)[:40])
                        else:
                            update.bar.write(line.rstrip("\n"), file=stream)
                        stream.flush()
                returncode = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            _finish_rows(out_dir, "interrupted", stream)
            raise ParplanError(f"interrupted; finished rows are kept in {out_dir}") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        if returncode != 0:
            states = read_states(Path(state_dir))
            text = "".join(log_text)
            message = diagnose(states, exit_codes(text), nproc, returncode, log_path, text)
            _finish_rows(out_dir, "failed", stream, message)
            raise ParplanError(message)
    return LaunchResult(returncode, log_path)


def _finish_rows(out_dir: Path, status: str, stream, error: str = "") -> None:
    """Plots and summary of the rows a stopped run finished, unless rank 0 wrote them itself."""
    try:
        meta = json.loads((out_dir / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    if meta.get("status", "running") != "running":
        return
    for note in finish_from_files(out_dir, status, error):
        stream.write(f"[bench] {note}\n")
    stream.flush()


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt  # ends the workers too (they run in their own session)


def _stop(proc: subprocess.Popen) -> None:
    """End torchrun and its workers (their own process group), politely first."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
