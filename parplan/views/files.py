"""The one way parplan writes a file: atomically (a temporary file in the same folder, then
``os.replace``), so a reader never sees half of it, and every failure a one-line error."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import ParplanError


def slug(text: str) -> str:
    """A file-name-safe version of a model or cluster name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.").lower() or "unnamed"


def check_writable(path) -> Path:
    """Refuse early (before any work) an output directory that cannot be created or written; creates nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ParplanError(f"output path {p} exists and is not a directory")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ParplanError(f"cannot create output directory {p}: {probe} is not a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ParplanError(f"cannot create output directory {p}: {probe} is not writable")
    return p


def prepare_dir(path) -> Path:
    """Create the output directory; a one-line ParplanError when that is impossible."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ParplanError(f"output path {p} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParplanError(f"cannot create output directory {p}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ParplanError(f"output directory {p} is not writable")
    return p


def write_bytes(path, data: bytes, *, sync: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``;
    with ``sync``, flushed to the disk before the rename (results a crash must not lose)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ParplanError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ParplanError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def write_text(path, text: str, *, sync: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), sync=sync)
