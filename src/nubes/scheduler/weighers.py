"""Weighers score hosts; scores are normalised to 0..1 and multiplied, as Nova does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nubes.conf import Settings
from nubes.scheduler.filters import HostState, Request

Weigher = Callable[[HostState, Request, Settings], float]


def free_ram(host: HostState, req: Request, s: Settings) -> float:
    return host.ram_mb * s.ram_allocation_ratio - host.used_ram_mb


def normalise(values: Sequence[float]) -> list[float]:
    lo, hi = min(values, default=0.0), max(values, default=0.0)
    if hi == lo:
        return [0.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def weigh(hosts: Sequence[HostState], req: Request, s: Settings) -> list[float]:
    """Spread (default) prefers the most free RAM; pack prefers the least."""
    multiplier = -1.0 if s.scheduler_weigher == "pack" else 1.0
    weighers: list[tuple[Weigher, float]] = [(free_ram, multiplier)]
    totals = [0.0] * len(hosts)
    for weigher, mult in weighers:
        for i, value in enumerate(normalise([weigher(h, req, s) for h in hosts])):
            totals[i] += mult * value
    return totals
