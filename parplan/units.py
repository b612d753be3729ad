"""Floor 0: binary byte multiples, and reading and writing byte counts as people type them."""
from __future__ import annotations

import re

from .errors import ParplanError

KIB, MIB, GIB, TIB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40

_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(value: str | int, what: str = "size", maximum: int = 64 * GIB) -> int:
    """``8``, ``64K``, ``64KiB``, ``1M``, ``1G``: binary multiples, as nccl-tests' ``-b``/``-e`` read them."""
    if isinstance(value, bool):
        raise ParplanError(f"{what}: expected a byte count such as 8, 64K or 1G, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        m = _BYTES.match(str(value))
        if not m:
            raise ParplanError(f"{what}: expected a byte count such as 8, 64K or 1G, got {value!r}")
        size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 1 or size > maximum:
        raise ParplanError(f"{what}: {value!r} is out of range (1 B to {format_bytes(maximum)})")
    return size


def format_bytes(size: float) -> str:
    """``4 KiB``, ``1 GiB``, ``24 B``."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            v = size / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.3g} {unit}"
    return f"{int(size)} B"
