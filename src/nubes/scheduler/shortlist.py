"""Shortlists remembered between placements, so 1,000 hosts are not scanned for every create.

Without a group, free RAM is the only weigher and SQL returns the best hosts in its order (see
`placement.candidates`). A shortlist read that way also says something about every host it left
out: none had more free RAM than its last host (its *floor*; for `pack`, none had less). So as
long as the best host of the remembered list, with what this process has placed on it since, is
still at least as good as the floor, it is still the best of all hosts, and the next placement
can use it without reading them again. Nova's scheduler keeps host states in memory the same way.

A list is dropped after TTL seconds (other API servers place and free too, hosts come and go),
when its best host falls below the floor, or when a claim on it loses (the claim's conditional
UPDATE re-checks room, status and heartbeat in the database: a list is only ever a hint).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from nubes.conf import Settings
from nubes.scheduler.filters import HostState, Request

TTL = 1.0


def free_ram(h: HostState, s: Settings) -> float:
    return h.ram_mb * s.ram_allocation_ratio - h.used_ram_mb


@dataclass
class Entry:
    hosts: list[HostState]
    floor: float | None  # free RAM of the last host read; None: the list held every candidate
    at: float

    def usable(self, best: HostState, s: Settings) -> bool:
        if self.floor is None:
            return True
        free = free_ram(best, s)
        return free <= self.floor if s.scheduler_weigher == "pack" else free >= self.floor


class Shortlists:
    """One per database (engine), shared by the threads of an API process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lists: dict[tuple[Any, ...], Entry] = {}

    @staticmethod
    def key(req: Request, s: Settings) -> tuple[Any, ...]:
        ratios = (s.cpu_allocation_ratio, s.ram_allocation_ratio, s.disk_allocation_ratio)
        return (req.vcpus, req.ram_mb, req.disk_gb, req.overlay, s.scheduler_weigher, ratios)

    def remember(self, key: tuple[Any, ...], hosts: list[HostState], limit: int,
                 s: Settings) -> None:  # fmt: skip
        floor = free_ram(hosts[-1], s) if len(hosts) >= limit else None
        with self._lock:
            self._lists[key] = Entry(list(hosts), floor, time.monotonic())

    def best(
        self, key: tuple[Any, ...], rank: Callable[[list[HostState]], list[HostState]],
        s: Settings,
    ) -> HostState | None:  # fmt: skip
        """The remembered best host for this request if it is provably still the best."""
        with self._lock:
            entry = self._lists.get(key)
            if entry is None or time.monotonic() - entry.at > TTL:
                self._lists.pop(key, None)
                return None
            ranked = rank(entry.hosts)
            if not ranked or not entry.usable(ranked[0], s):
                del self._lists[key]
                return None
            return ranked[0]

    def placed(self, key: tuple[Any, ...], host: HostState, req: Request) -> None:
        """Count what this process just claimed on the host."""
        with self._lock:
            entry = self._lists.get(key)
            if entry is None:
                return
            for i, h in enumerate(entry.hosts):
                if h.id == host.id:
                    entry.hosts[i] = replace(
                        h,
                        used_vcpus=h.used_vcpus + req.vcpus,
                        used_ram_mb=h.used_ram_mb + req.ram_mb,
                        used_disk_gb=h.used_disk_gb + req.disk_gb,
                    )

    def forget(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._lists.pop(key, None)


_BY_ENGINE: weakref.WeakKeyDictionary[Any, Shortlists] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def for_engine(engine: Any) -> Shortlists:
    with _REGISTRY_LOCK:
        found = _BY_ENGINE.get(engine)
        if found is None:
            found = _BY_ENGINE[engine] = Shortlists()
        return found
