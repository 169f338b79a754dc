"""Weighers score hosts; scores are normalised to 0..1 and multiplied, as Nova does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nubes.conf import Settings
from nubes.scheduler.filters import HostState, Request

Weigher = Callable[[HostState, Request, Settings], float]

# A soft policy is what the user asked for: it outweighs a host's free RAM (1.0).
GROUP_MULTIPLIER = 2.0


def free_ram(host: HostState, req: Request, s: Settings) -> float:
    return host.ram_mb * s.ram_allocation_ratio - host.used_ram_mb


def group_members(host: HostState, req: Request, s: Settings) -> float:
    return float(req.group.members.get(host.name, 0)) if req.group else 0.0


def normalise(values: Sequence[float]) -> list[float]:
    lo, hi = min(values, default=0.0), max(values, default=0.0)
    if hi == lo:
        return [0.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def weighers_for(req: Request, s: Settings) -> list[tuple[str, Weigher, float]]:
    """(name, weigher, multiplier). Spread (default) prefers free RAM; pack the least of it."""
    chosen: list[tuple[str, Weigher, float]] = [
        ("ram", free_ram, -1.0 if s.scheduler_weigher == "pack" else 1.0)
    ]
    policy = req.group.policy if req.group else ""
    if policy == "soft-affinity":
        chosen.append(("soft-affinity", group_members, GROUP_MULTIPLIER))
    elif policy == "soft-anti-affinity":
        chosen.append(("soft-anti-affinity", group_members, -GROUP_MULTIPLIER))
    return chosen


def weigh(hosts: Sequence[HostState], req: Request, s: Settings) -> list[float]:
    totals = [0.0] * len(hosts)
    for _, weigher, mult in weighers_for(req, s):
        for i, value in enumerate(normalise([weigher(h, req, s) for h in hosts])):
            totals[i] += mult * value
    return totals
