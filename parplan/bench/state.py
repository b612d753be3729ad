"""Per-rank state records and the watchdog that turns a hung collective into a clear error.

Each rank records the item it is in (``rank-R.json`` in the state directory that
``parplan bench`` passes as ``PARPLAN_BENCH_STATE_DIR``); when a run fails, the launcher
reads these records to name the rank and the collective. The watchdog ends a rank whose
current item runs past the timeout, so a dead peer never leaves the run hanging.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..views.files import write_text

STATE_DIR_ENV = "PARPLAN_BENCH_STATE_DIR"
EXIT_ERROR = 1
EXIT_TIMEOUT = 3
EXIT_FAULT = 17
TIMEOUT_TEXT = "did not finish within"


@dataclass(frozen=True)
class RankState:
    rank: int
    status: str  # running | failed | done
    label: str
    message: str = ""
    time: float = 0.0


def state_path(state_dir: Path, rank: int) -> Path:
    return Path(state_dir) / f"rank-{rank}.json"


def write_state(state_dir: Path | None, state: RankState) -> None:
    if state_dir is None:
        return
    try:
        write_text(state_path(state_dir, state.rank), json.dumps(asdict(state)))
    except OSError:
        pass  # the record helps diagnosis; never let it break a measurement


def read_states(state_dir: Path) -> dict[int, RankState]:
    states: dict[int, RankState] = {}
    for path in sorted(Path(state_dir).glob("rank-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = RankState(int(data["rank"]), str(data["status"]), str(data["label"]),
                              str(data.get("message", "")), float(data.get("time", 0.0)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        states[state.rank] = state
    return states


class Watchdog:
    """Tracks the current item of one rank and ends the process if it runs past ``timeout_s``."""

    def __init__(self, rank: int, timeout_s: float, state_dir: Path | None = None):
        self.rank = rank
        self.timeout_s = float(timeout_s)
        self.state_dir = Path(state_dir) if state_dir else None
        self.label = "start-up"
        self._started = time.monotonic()
        self._active = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="parplan-bench-watchdog", daemon=True)
        self._thread.start()

    def begin(self, label: str) -> None:
        self.label = label
        self._started = time.monotonic()
        self._active = True
        write_state(self.state_dir, RankState(self.rank, "running", label, time=time.time()))

    def idle(self) -> None:
        self._active = False

    def fail(self, message: str) -> None:
        self._active = False
        write_state(self.state_dir, RankState(self.rank, "failed", self.label, message, time.time()))

    def done(self) -> None:
        self._active = False
        self._stop.set()
        write_state(self.state_dir, RankState(self.rank, "done", "finished", time=time.time()))

    def _watch(self) -> None:
        period = min(1.0, max(0.05, self.timeout_s / 20))
        while not self._stop.wait(period):
            if self._active and time.monotonic() - self._started > self.timeout_s:
                message = (f"rank {self.rank}: {self.label} {TIMEOUT_TEXT} {self.timeout_s:g} s "
                           f"(a peer rank may have died or hung)")
                self.fail(message)
                sys.stderr.write(f"Error: {message}\n")
                sys.stderr.flush()
                os._exit(EXIT_TIMEOUT)
