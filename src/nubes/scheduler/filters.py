"""Filters: each says why a host cannot take a request, or None when it can."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from nubes.conf import Settings

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


class HostState(NamedTuple):
    """A host as the filters see it: a tuple, made for every host a scheduler read returns."""

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
    overlays: frozenset[str] = frozenset({"vxlan"})  # what the host's kernel can carry
    runtimes: frozenset[str] = frozenset({"qemu"})  # qemu, runc: what it runs instances with


@dataclass(frozen=True)
class GroupState:
    """A server group as the scheduler sees it: where its live members run."""

    name: str
    policy: str  # one of POLICIES
    members: Mapping[str, int] = field(default_factory=dict)  # host name -> live members


@dataclass(frozen=True)
class Request:
    vcpus: int
    ram_mb: int
    disk_gb: int
    force_host: str | None = None  # admin-only --host
    overlay: str | None = None  # the network's overlay type
    group: GroupState | None = None
    runtime: str = "qemu"  # runc: a container


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


def runtime_filter(host: HostState, req: Request, s: Settings) -> str | None:
    if req.runtime not in host.runtimes:
        what = "containers (runc)" if req.runtime == "runc" else req.runtime
        return f"runtime: this host does not run {what}"
    return None


def overlay_filter(host: HostState, req: Request, s: Settings) -> str | None:
    if req.overlay and req.overlay not in host.overlays:
        has = ", ".join(sorted(host.overlays)) or "none"
        return f"overlay: the network needs {req.overlay}, this host has {has}"
    return None


def affinity_filter(host: HostState, req: Request, s: Settings) -> str | None:
    g = req.group
    if g is None or g.policy != "affinity" or not g.members or host.name in g.members:
        return None
    return f"group {g.name} (affinity): its servers are on {', '.join(sorted(g.members))}"


def anti_affinity_filter(host: HostState, req: Request, s: Settings) -> str | None:
    g = req.group
    if g is None or g.policy != "anti-affinity" or not g.members.get(host.name):
        return None
    return f"group {g.name} (anti-affinity): already has a server on this host"


DEFAULT_FILTERS: tuple[tuple[str, Filter], ...] = (
    ("status", status_filter),
    ("forced-host", forced_host_filter),
    ("ram", ram_filter),
    ("vcpu", vcpu_filter),
    ("disk", disk_filter),
    ("overlay", overlay_filter),
    ("runtime", runtime_filter),
    ("affinity", affinity_filter),
    ("anti-affinity", anti_affinity_filter),
)
