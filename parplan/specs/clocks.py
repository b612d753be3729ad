"""SM clocks behind a profile's peak, and the same device run at another clock.

A GPU's dense peak is ``SMs x tensor-core FLOP per SM per clock x SM clock`` (stas00/ml-engineering,
compute/accelerator, "How To Calculate Theoretical TFLOPS": H100 SXM ``1830 MHz x 512 FMA x 2 x 528
tensor cores = 989.4 TFLOP/s``). SMs and FLOP per clock are fixed by the silicon, so every compute rate
is proportional to the SM clock the device holds. NVIDIA states the CUDA-core fp32 peak at the boost clock
instead (H100 SXM: ``16896 cores x 2 x 1.98 GHz = 66.9 TFLOP/s``, glennklockwood.com H100 page). HBM
bandwidth runs on the memory clock and does not change.

A profile's efficiencies are fractions of those peaks measured on a real part, and a real part at its
rated power does not hold ``peak_mhz`` under tensor-core load: an H100 SXM at 700 W held 1380 MHz through
two minutes of 8192^3 bf16 GEMMs ("SW Power Cap" active, no thermal slowdown), and layer GEMMs timed in
that loaded state run within 1.7% of the profile's rate (after an idle spell 13% faster: the cap takes
hold within 0.3 s), so the efficiency corresponds to about 1400 MHz (reports/gpu-checks/h100-2026-12-06b).
The efficiency carries the clock of its measurement, ``loaded_mhz``, and a device that holds ``f`` runs
every rate at ``f / loaded_mhz`` of the profile's. Scaling by ``f / peak_mhz`` would charge an H100 that
reports 1380 MHz under load 25% of its speed where it loses 1.5%. A profile without a measured
``loaded_mhz`` cannot be clocked.

A power limit below the rated one lowers the sustained clock, but by how much depends on the die,
the memory, the cooling and the kernel; no public measurement maps one to the other for tensor-core
work. So a cluster gives the clock it measured (``nvidia-smi --query-gpu=clocks.sm`` during a
GEMM-heavy step, the command in stas00/ml-engineering "Clock speed"; scripts/gpu_sustained_clock.py
measures it and the profile's reference the same way), not a power limit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from ..errors import ParplanError
from .yamlio import check_keys, number, require_mapping

CLOCK_KEYS = ("peak_mhz", "boost_mhz", "power_limit_w", "loaded_mhz")
MAX_MHZ = 10_000.0


@dataclass(frozen=True)
class Clocks:
    """The SM clock a profile's peaks assume, the highest the part runs, the power they are rated at, and
    the clock the part held under load while its efficiencies were measured.

    ``sustained_mhz`` is the clock a cluster set (None: the part as measured); the Hardware's
    ``peak_flops`` are then the rated peaks times ``sustained_mhz / loaded_mhz``.
    """

    peak_mhz: float
    boost_mhz: float
    power_limit_w: float | None = None
    loaded_mhz: float | None = None
    sustained_mhz: float | None = None



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
    loaded = number(data, "loaded_mhz", what, required=False, maximum=MAX_MHZ)
    if loaded is not None and loaded > boost:
        raise ParplanError(f"{what}: loaded_mhz {loaded:g} is above boost_mhz {boost:g}")
    return Clocks(peak_mhz=peak, boost_mhz=boost, power_limit_w=None if power is None else float(power),
                  loaded_mhz=None if loaded is None else float(loaded))


def at_clock(hw, sustained_mhz: Any, what: str = "sustained_clock_mhz"):
    """``hw`` run at ``sustained_mhz`` under load: every rate times ``sustained_mhz / loaded_mhz`` (the
    clock its efficiencies were measured at), HBM unchanged.

    A one-line error for a profile without clock data or a measured ``loaded_mhz``, a clock that is not
    a positive number, or one above the part's boost clock.
    """
    clocks = hw.clocks
    if clocks is None:
        raise ParplanError(f"{what}: {hw.name} lists no SM clocks, so its peak cannot be scaled to a clock "
                           f"(its profile needs a 'clocks' block with peak_mhz, boost_mhz and loaded_mhz)")
    if clocks.loaded_mhz is None:
        raise ParplanError(f"{what}: the clock {hw.name} held while its efficiencies were measured is unknown "
                           f"(clocks.loaded_mhz), so another clock cannot be scaled from it; measure it with "
                           f"scripts/gpu_sustained_clock.py")
    mhz = float(number({what: sustained_mhz}, what, f"{hw.name}", maximum=MAX_MHZ))
    if mhz > clocks.boost_mhz:
        raise ParplanError(f"{what} = {mhz:g} MHz is above the {clocks.boost_mhz:g} MHz boost clock of {hw.name}")
    was = clocks.sustained_mhz or clocks.loaded_mhz
    peaks = {dtype: rate * mhz / was for dtype, rate in hw.peak_flops.items()}
    return replace(hw, peak_flops=MappingProxyType(peaks), clocks=replace(clocks, sustained_mhz=mhz))
