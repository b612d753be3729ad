"""Progress bars for long runs (report, sweep, validate, bench): tqdm on stderr.

A bar is drawn only when its stream is a terminal, so pipes, logs and tests stay quiet. The
library floors beneath never import this module: they take a plain ``progress(done, total)``
callable, and the commands pass the one :func:`progress` yields.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

Callback = Callable[[float, float], None]
# Percent and time left, no counts: the report's bar counts searches in fractions.
PERCENT_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(desc: str, total: float | None = None, *, unit: str = "it", stream=None, disable: bool | None = None,
             percent: bool = False) -> Iterator[Callable[..., None]]:
    """A tqdm bar on ``stream`` (stderr) and a callback ``update(done, total=None, note=None)`` that moves it.

    ``update`` sets the count to ``done`` (not an increment), so it is the ``progress(done, total)`` that the
    planner, sweep and validation call; ``note`` shows what runs now. The bar is off when the stream is not
    a terminal (``disable=None``), and closes when the block ends, interrupted or not.
    """
    stream = stream if stream is not None else sys.stderr
    bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True,
               disable=(not is_terminal(stream)) if disable is None else disable,
               bar_format=PERCENT_FORMAT if percent else None)

    def update(done: float, total: float | None = None, note: str | None = None) -> None:
        if total is not None and total != bar.total:
            bar.total = total
        if note is not None:
            bar.set_postfix_str(note, refresh=False)
        bar.update(done - bar.n)

    update.bar = bar  # the tqdm object, for callers that want more of it
    try:
        yield update
    finally:
        bar.close()


def part(update: Callable[..., None] | None, start: float, span: float, total: float) -> Callback | None:
    """The callback of one part of a longer run: its ``(done, n)`` moves ``update`` from ``start`` to
    ``start + span`` of ``total``, so several steps share one bar and one estimate of the time left."""
    if update is None:
        return None
    return lambda done, n: update(start + span * done / max(n, 1), total)


__all__ = ["is_terminal", "part", "progress"]
