"""SM clocks behind a profile's peak, and the same device run at another clock.

A GPU's dense peak is ``SMs x tensor-core FLOP per SM per clock x SM clock`` (stas00/ml-engineering,
compute/accelerator, "How To Calculate Theoretical TFLOPS": H100 SXM ``1830 MHz x 512 FMA x 2 x 528
tensor cores = 989.4 TFLOP/s``). SMs and FLOP per clock are fixed by the silicon, so a device that
sustains another SM clock ``f`` under load reaches ``peak x f / peak_mhz`` in each tensor-core dtype.
NVIDIA states the CUDA-core fp32 peak at the boost clock instead (H100 SXM: ``16896 cores x 2 x 1.98 GHz
= 66.9 TFLOP/s``, glennklockwood.com H100 page; B200's 80 TFLOP/s implies ~2.1 GHz, JAX scaling book
gpus.md), so fp32 scales as ``peak x f / boost_mhz``. HBM bandwidth runs on the memory clock and does not
change.

A power limit below the rated one lowers the sustained clock, but by how much depends on the die,
the memory, the cooling and the kernel; no public measurement maps one to the other for tensor-core
work. So a cluster gives the clock it measured (``nvidia-smi --query-gpu=clocks.sm`` during a
GEMM-heavy step, the command in stas00/ml-engineering "Clock speed"), not a power limit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from ..errors import ParplanError
from .yamlio import check_keys, number, require_mapping

CLOCK_KEYS = ("peak_mhz", "boost_mhz", "power_limit_w")
MAX_MHZ = 10_000.0
VECTOR_DTYPES = ("fp32",)  # CUDA-core rates, stated at the boost clock; the rest are tensor-core rates


@dataclass(frozen=True)
class Clocks:
    """The SM clock a profile's peaks assume, the highest the part runs, and the power they are rated at.

    ``sustained_mhz`` is the clock a cluster set (None: the rated clocks); the Hardware's ``peak_flops``
    always hold the rates at ``clock_of(dtype)``.
    """

    peak_mhz: float
    boost_mhz: float
    power_limit_w: float | None = None
    sustained_mhz: float | None = None

    def clock_of(self, dtype: str) -> float:
        """The SM clock (MHz) the profile's current ``dtype`` peak assumes."""
        if self.sustained_mhz is not None:
            return self.sustained_mhz
        return self.boost_mhz if dtype in VECTOR_DTYPES else self.peak_mhz


def clocks_from_dict(data: Any, what: str) -> Clocks | None:
    """A profile's ``clocks`` block, checked: a boost clock below the peak clock is refused."""
    if data is None:
        return None
    data = require_mapping(data, what)
    check_keys(data, CLOCK_KEYS, what)
    peak = float(number(data, "peak_mhz", what, maximum=MAX_MHZ))
    boost = float(number(data, "boost_mhz", what, maximum=MAX_MHZ))
    if boost < peak:
        raise ParplanError(f"{what}: boost_mhz {boost:g} is below peak_mhz {peak:g}; the boost clock is the highest")
    power = number(data, "power_limit_w", what, required=False, maximum=1e5)
    return Clocks(peak_mhz=peak, boost_mhz=boost, power_limit_w=None if power is None else float(power))


def at_clock(hw, sustained_mhz: Any, what: str = "sustained_clock_mhz"):
    """``hw`` with every peak scaled to ``sustained_mhz``: ``peak x sustained_mhz / clock_of(dtype)``.

    A one-line error for a profile without clock data, a clock that is not a positive number, or one
    above the part's boost clock.
    """
    clocks = hw.clocks
    if clocks is None:
        raise ParplanError(f"{what}: {hw.name} lists no SM clocks, so its peak cannot be scaled to a clock "
                           f"(its profile needs a 'clocks' block with peak_mhz and boost_mhz)")
    mhz = float(number({what: sustained_mhz}, what, f"{hw.name}", maximum=MAX_MHZ))
    if mhz > clocks.boost_mhz:
        raise ParplanError(f"{what} = {mhz:g} MHz is above the {clocks.boost_mhz:g} MHz boost clock of {hw.name}")
    peaks = {dtype: rate * mhz / clocks.clock_of(dtype) for dtype, rate in hw.peak_flops.items()}
    return replace(hw, peak_flops=MappingProxyType(peaks), clocks=replace(clocks, sustained_mhz=mhz))
