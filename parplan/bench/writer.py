"""Writing bench results as they are measured: rows appended to ``results.csv`` and ``results.jsonl``,
flushed one by one so a run that dies keeps what it finished, and ``meta.json`` written atomically."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any, Mapping

from ..calibrate.rows import COLUMNS, CSV_NAME, JSONL_NAME, META_NAME, Row
from ..errors import ParplanError
from ..views.files import write_text


class ResultWriter:
    """Appends rows to ``results.csv`` and ``results.jsonl`` in ``out_dir``, flushing after each row.

    A run that dies keeps every row written before it died.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            csv_path = self.out_dir / CSV_NAME
            new = not csv_path.exists() or csv_path.stat().st_size == 0
            self._csv = open(csv_path, "a", encoding="utf-8", newline="")
            self._jsonl = open(self.out_dir / JSONL_NAME, "a", encoding="utf-8")
        except OSError as exc:
            raise ParplanError(f"cannot write results to {out_dir}: {exc.strerror or exc}") from None
        self._writer = csv.DictWriter(self._csv, fieldnames=COLUMNS)
        if new:
            self._writer.writeheader()
            self._csv.flush()
        self.rows = 0

    def write(self, row: Row) -> None:
        record = row.as_dict()
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=COLUMNS).writerow({k: _csv_value(v) for k, v in record.items()})
        self._csv.write(buf.getvalue())  # one write per row
        self._csv.flush()
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        self.rows += 1

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def default_out_dir(host: str, now: "_dt.datetime | None" = None) -> Path:
    """``reports/bench/<host>-<YYYYmmdd-HHMMSS>``."""
    now = now or _dt.datetime.now()
    return Path("reports") / "bench" / f"{host}-{now.strftime('%Y%m%d-%H%M%S')}"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


def write_meta(out_dir: Path, meta: Mapping[str, Any]) -> None:
    write_text(Path(out_dir) / META_NAME, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", sync=True)


def finish(out_dir: Path, rows: list[Row], meta: dict, status: str = "finished", error: str = "") -> list[str]:
    """The plots of the rows and ``meta.json`` with the status and row count; the notes to print.

    Called when a run ends, finished or not: an interrupted run or one whose rank died still gets
    the plots and summary of the rows it finished.
    """
    from ..views.bench_plots import plot_results

    notes = []
    try:
        notes = plot_results(rows, out_dir) if rows else []
    except Exception as exc:  # a plot is a convenience; the rows are already safe
        notes = [f"plots skipped: {exc}"]
    meta = dict(meta, status=status, rows=len(rows),
                finished=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    if error:
        meta["error"] = error
    try:
        write_meta(out_dir, meta)
    except (OSError, ParplanError):
        pass
    bad = sum(1 for r in rows if not r.correct)
    notes.append(f"wrote {len(rows)} rows to {out_dir}" + (f"; {bad} rows FAILED the correctness check" if bad else ""))
    return notes


def finish_from_files(out_dir: Path, status: str, error: str = "") -> list[str]:
    """:func:`finish` from what the ranks left on disk (the launcher's view of a run that stopped)."""
    from ..calibrate.load import load_results

    out_dir = Path(out_dir)
    if not (out_dir / CSV_NAME).is_file():
        return []
    try:
        meta = json.loads((out_dir / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    try:
        rows = load_results([out_dir])
    except ParplanError:
        rows = []
    return finish(out_dir, rows, meta, status, error)
