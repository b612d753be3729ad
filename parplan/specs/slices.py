"""TPU slices: the torus shape a chip count takes, which of its axes wrap, and shapes written as text.

A slice is a sub-torus of a pod: ``a x b (x c)`` chips joined by ICI links to their nearest
neighbours on each axis. An axis closes into a ring (wraps) only where the hardware provides the
link: on v4 and v5p the optical switches close every axis of a slice made of whole 4x4x4 cubes,
and no axis of a smaller one; on v5e and v6e an axis of 16 chips wraps (JAX scaling book,
tpus.md; Google Cloud TPU docs, v4 / v5p / v5e). Without the wrap a collective along the axis
runs over a line, which the cost of :mod:`parplan.cost.torus` charges.

When only a chip count is given, the slice is the most cubic shape that fits the largest slice,
made of whole cubes where the count allows: the shapes Google lists for v5p (2x2x1, 2x2x2, 2x4x4,
4x4x4, 4x4x8, 4x8x8, 8x8x8, 8x8x16, 8x16x16, 16x16x16, 16x16x24) and v5e (1x1, 2x2, 2x4, 4x4,
4x8, 8x8, 8x16, 16x16) are exactly these.
"""
from __future__ import annotations

import itertools
import re

from ..errors import ParplanError
from .hardware import Torus

AXIS_NAMES = "xyz"
_SHAPE = re.compile(r"^\s*\d+(\s*x\s*\d+)*\s*$")


def format_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def parse_shape(text, dims: int, what: str = "slice") -> tuple[int, ...]:
    """``"16x16x12"`` (or a list of sides) as a tuple of ``dims`` positive sides."""
    if isinstance(text, (list, tuple)):
        sides = list(text)
    elif isinstance(text, str) and _SHAPE.match(text):
        sides = [int(s) for s in text.replace(" ", "").split("x")]
    else:
        raise ParplanError(f"{what}: write the slice shape as sides joined by x, such as "
                           f"{format_shape([4] * dims)}; got {text!r}")
    if len(sides) != dims or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        raise ParplanError(f"{what}: a slice of this torus has {dims} positive whole sides (such as "
                           f"{format_shape([4] * dims)}), got {text!r}")
    return tuple(int(s) for s in sides)


def _factorizations(n: int, dims: int):
    """Every ascending ``dims``-tuple of sides multiplying to ``n``."""
    if dims == 1:
        yield (n,)
        return
    for first in range(1, int(round(n ** (1.0 / dims))) + 2):
        if n % first == 0:
            for rest in _factorizations(n // first, dims - 1):
                if rest[0] >= first:
                    yield (first, *rest)


def fits(torus: Torus, shape) -> bool:
    """Whether a slice of ``shape`` (any axis order) fits inside the largest slice."""
    if not torus.max_slice:
        return True
    return all(s <= m for s, m in zip(sorted(shape), torus.max_slice))


def slice_shapes(torus: Torus, chips: int) -> list[tuple[int, ...]]:
    """The ascending shapes that hold ``chips`` and fit the largest slice, most cubic first."""
    shapes = [s for s in _factorizations(chips, torus.dims) if fits(torus, s)]
    side = torus.wrap_side if torus.wrap_rule == "cubes" else 0
    return sorted(shapes, key=lambda s: (not (side and all(x % side == 0 for x in s)), s[-1] / s[0], s))


def default_slice_shape(torus: Torus, chips: int) -> tuple[int, ...]:
    """The slice ``chips`` chips take when only the count is given (see the module docstring)."""
    shapes = slice_shapes(torus, chips)
    if not shapes:
        raise ParplanError(f"no slice of {format_shape(torus.max_slice) or torus.pod_devices} or less holds "
                           f"{chips} chips; {_nearby(torus, chips)}")
    return shapes[0]


def _nearby(torus: Torus, chips: int) -> str:
    below = next((n for n in range(chips - 1, 0, -1) if slice_shapes(torus, n)), None)
    above = next((n for n in range(chips + 1, torus.max_slice_devices + 1) if slice_shapes(torus, n)), None)
    counts = " or ".join(f"{n} ({format_shape(slice_shapes(torus, n)[0])})" for n in (below, above) if n)
    return f"use a count a slice holds, such as {counts}" if counts else "use fewer chips"


def check_slice(torus: Torus, shape, chips: int | None = None, what: str = "slice") -> tuple[int, ...]:
    """``shape`` if it holds ``chips`` (when given) and fits the largest slice, else a one-line error."""
    n = 1
    for s in shape:
        n *= s
    if chips is not None and n != chips:
        others = ", ".join(format_shape(s) for s in slice_shapes(torus, chips)[:4])
        hint = f"shapes that hold {chips}: {others}" if others else _nearby(torus, chips)
        raise ParplanError(f"{what} {format_shape(shape)} holds {n} chips, not {chips}; {hint}")
    if not fits(torus, shape):
        raise ParplanError(f"{what} {format_shape(shape)} does not fit the largest slice "
                           f"{format_shape(torus.max_slice)}; join smaller slices over the data-centre network "
                           f"(slices: in a cluster file)")
    return tuple(shape)


def wraps(torus: Torus, shape) -> tuple[bool, ...]:
    """Which axes of a slice of ``shape`` close into rings (see the module docstring)."""
    side = torus.wrap_side
    if torus.wrap_rule == "cubes":
        whole = all(s % side == 0 for s in shape)
        return tuple(whole and s > 1 for s in shape)
    if torus.wrap_rule == "full-axis":
        return tuple(s % side == 0 for s in shape)
    return tuple(False for _ in shape)


def multislice_hint(torus: Torus, name: str, chips: int) -> str:
    """How to ask for ``chips`` as several equal slices joined over DCN (for an error message)."""
    for slices in itertools.count(2):
        if slices > chips:
            break
        if chips % slices == 0 and slice_shapes(torus, chips // slices):
            per = chips // slices
            return (f"{name}x{slices}x{per} ({slices} slices of {format_shape(default_slice_shape(torus, per))}"
                    f" joined over the data-centre network)")
    return "a cluster file with slices: and slice:"
