"""Filters: each says why a host cannot take a request, or None when it can."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nubes.conf import Settings


@dataclass(frozen=True)
class HostState:
    id: str
    name: str
    up: bool
    enabled: bool
    vcpus: int
    ram_mb: int
    disk_gb: int
    used_vcpus: int
    used_ram_mb: int
    used_disk_gb: int


@dataclass(frozen=True)
class Request:
    vcpus: int
    ram_mb: int
    disk_gb: int
    force_host: str | None = None  # admin-only --host


Filter = Callable[[HostState, Request, Settings], str | None]


def status_filter(host: HostState, req: Request, s: Settings) -> str | None:
    if not host.up:
        return "host is down (no heartbeat)"
    if not host.enabled:
        return "host is disabled"
    return None


def forced_host_filter(host: HostState, req: Request, s: Settings) -> str | None:
    if req.force_host and req.force_host not in (host.name, host.id):
        return f"not the requested host {req.force_host}"
    return None


def _room(kind: str, need: int, total: int, used: int, ratio: float, unit: str) -> str | None:
    limit = int(total * ratio)
    if used + need > limit:
        return f"{kind}: needs {need}{unit}, {max(limit - used, 0)}{unit} free of {limit}{unit}"
    return None


def ram_filter(host: HostState, req: Request, s: Settings) -> str | None:
    return _room("RAM", req.ram_mb, host.ram_mb, host.used_ram_mb, s.ram_allocation_ratio, " MiB")


def vcpu_filter(host: HostState, req: Request, s: Settings) -> str | None:
    return _room("vCPUs", req.vcpus, host.vcpus, host.used_vcpus, s.cpu_allocation_ratio, "")


def disk_filter(host: HostState, req: Request, s: Settings) -> str | None:
    return _room(
        "disk", req.disk_gb, host.disk_gb, host.used_disk_gb, s.disk_allocation_ratio, " GiB"
    )


DEFAULT_FILTERS: tuple[tuple[str, Filter], ...] = (
    ("status", status_filter),
    ("host", forced_host_filter),
    ("ram", ram_filter),
    ("vcpu", vcpu_filter),
    ("disk", disk_filter),
)
