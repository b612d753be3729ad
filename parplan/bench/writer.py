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
