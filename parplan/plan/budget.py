"""Time and money: what training on a given number of tokens takes at a plan's throughput."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParplanError

MAX_TOKENS = 1e16


@dataclass(frozen=True)
class Budget:
    """Training ``tokens`` tokens: wall time, device-hours, and the cost where a price is known."""

    tokens: float
    time_to_train_s: float
    device_hours: float
    price_per_device_hour: float | None
    cost: float | None

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "time_to_train_s": self.time_to_train_s, "days": self.time_to_train_s / 86400,
                "device_hours": self.device_hours, "price_per_device_hour": self.price_per_device_hour,
                "cost": self.cost}


def check_budget_inputs(tokens: float | None, price: float | None) -> None:
    if tokens is not None and not 0 < tokens <= MAX_TOKENS:
        raise ParplanError(f"--tokens must be between 1 and {MAX_TOKENS:.0e} tokens, got {tokens:g}")
    if price is not None and not 0 < price <= 1e6:
        raise ParplanError(f"--price-per-device-hour must be a positive number, got {price:g}")


def budget(tokens: float, tokens_per_s: float, devices: int, price_per_device_hour: float | None = None) -> Budget:
    """``tokens`` at ``tokens_per_s`` on ``devices``: time = tokens / throughput; device-hours = time x devices."""
    check_budget_inputs(tokens, price_per_device_hour)
    time_s = float(tokens) / float(tokens_per_s)
    hours = time_s * devices / 3600.0
    cost = None if price_per_device_hour is None else hours * price_per_device_hour
    return Budget(float(tokens), time_s, hours, price_per_device_hour, cost)


def cost_per_token(tokens_per_s: float, devices: int, price_per_device_hour: float) -> float:
    """What one token costs: the cluster's price per second over its throughput."""
    return devices * price_per_device_hour / 3600.0 / float(tokens_per_s)
