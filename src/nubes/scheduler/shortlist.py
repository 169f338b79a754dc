"""Shortlists remembered between placements, so 1,000 hosts are not scanned for every create.

Without a group or a forced host, free RAM is the only weigher and SQL returns the best hosts in
its order, ties by name (see `placement.candidates`). A shortlist read that way also says
something about every host it left out: each comes after its last host in that order (its
*floor*). So as long as the first host of the remembered list that passes the filters, with its
usage as this process last saw it, still comes no later than the floor, it is the host the full
pipeline would choose from that read, and the next placement can use it without reading again.
Nova's scheduler keeps host states in memory the same way.

The list is kept sorted, so finding that host costs a few filter calls, not a pipeline run. A
list is dropped after TTL seconds (other API servers place and free too, hosts come and go),
when its best host falls behind the floor, or when a claim on it loses (the claim's conditional
UPDATE re-checks room, status and heartbeat in the database: a list is only ever a hint). A
successful claim returns the host's usage from the database, which replaces the remembered one.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nubes.conf import Settings
from nubes.scheduler.filters import HostState, Request

TTL = 1.0
FIRST_READ = 64  # hosts a first read keeps; doubled each time a list is used up before its TTL


Rank = tuple[float, str]


def rank(h: HostState, s: Settings) -> Rank:
    """The SQL order of `placement.candidates`: by free RAM (most first, or least for pack),
    then by name; the full pipeline's order too (its weights only rescale free RAM)."""
    return _rank(h.name, h.ram_mb, h.used_ram_mb, s.ram_allocation_ratio, s.scheduler_weigher)


def _rank(name: str, ram_mb: int, used_ram_mb: int, ratio: float, weigher: str) -> Rank:
    free = ram_mb * ratio - used_ram_mb  # as weighers.free_ram, and as SQL computes it
    return (free if weigher == "pack" else -free, name)


@dataclass
class Entry:
    hosts: list[HostState]  # in rank order
    ranks: list[Rank]  # rank of each host, for bisect
    floor: Rank | None  # rank of the last host read; None: the list held every candidate
    at: float
    ram_ratio: float
    weigher: str
    limit: int  # the read's LIMIT
    where: dict[str, Rank] = field(init=False)  # host id -> its rank: finds it by bisection

    def __post_init__(self) -> None:
        self.where = {h.id: r for h, r in zip(self.hosts, self.ranks, strict=True)}

    def index(self, host_id: str) -> int | None:
        r = self.where.get(host_id)
        return None if r is None else bisect.bisect_left(self.ranks, r)  # ranks are unique

    def move(self, i: int, host: HostState) -> None:
        del self.hosts[i], self.ranks[i]
        r = _rank(host.name, host.ram_mb, host.used_ram_mb, self.ram_ratio, self.weigher)
        at = bisect.bisect_left(self.ranks, r)
        self.hosts.insert(at, host)
        self.ranks.insert(at, r)
        self.where[host.id] = r


class Shortlists:
    """One per database (engine), shared by the threads of an API process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lists: dict[tuple[Any, ...], Entry] = {}
        # how many hosts the next read of a key asks for: a list used up within its TTL (many
        # creates) makes the next read twice as long; one that expires (few) starts again small
        self._sizes: dict[tuple[Any, ...], int] = {}

    @staticmethod
    def key(req: Request, s: Settings) -> tuple[Any, ...]:
        ratios = (s.cpu_allocation_ratio, s.ram_allocation_ratio, s.disk_allocation_ratio)
        return (req.vcpus, req.ram_mb, req.disk_gb, req.overlay, s.scheduler_weigher, ratios)

    def remember(self, key: tuple[Any, ...], hosts: list[HostState], limit: int,
                 s: Settings) -> None:  # fmt: skip
        """`hosts`: what SQL returned with LIMIT `limit`, in its order."""
        ordered = sorted(hosts, key=lambda h: rank(h, s))
        ranks = [rank(h, s) for h in ordered]
        floor = ranks[-1] if len(hosts) >= limit else None
        with self._lock:
            entry = Entry(
                ordered, ranks, floor, time.monotonic(),
                s.ram_allocation_ratio, s.scheduler_weigher, limit,
            )  # fmt: skip
            self._lists[key] = entry

    def best(self, key: tuple[Any, ...], passes: Callable[[HostState], bool],
             s: Settings) -> HostState | None:  # fmt: skip
        """The first remembered host that `passes` (the filters), if it is provably still the
        best of all hosts; None if there is no such list or it no longer proves it."""
        with self._lock:
            entry = self._lists.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry.at > TTL:
                del self._lists[key]
                self._sizes.pop(key, None)
                return None
            for h, r in zip(entry.hosts, entry.ranks, strict=True):
                if entry.floor is not None and r > entry.floor:
                    break  # this one and the rest: a host left out may be better
                if passes(h):
                    return h
            del self._lists[key]
            self._sizes[key] = 2 * entry.limit  # used up before it expired
            return None

    def read_size(self, key: tuple[Any, ...], most: int) -> int:
        """How many hosts the next read for `key` should ask for, at most `most`."""
        with self._lock:
            return min(self._sizes.get(key, FIRST_READ), most)

    def changed(self, host_id: str, name: str, ram_mb: int,
                used: tuple[int, int, int]) -> None:  # fmt: skip
        """This process changed a host's usage (a claim, a release): `used` is its usage now
        (vCPUs, RAM, disk), as the UPDATE's RETURNING gave it. Every list holding the host moves
        it to its new place; a list not holding it is dropped if the host may now come before
        its floor (a host left out must come after it: see the module's doc)."""
        with self._lock:
            for key, entry in list(self._lists.items()):
                i = entry.index(host_id)
                if i is not None:
                    h = entry.hosts[i]
                    vcpus, ram, disk = used
                    now = HostState(h.id, h.name, h.up, h.enabled, h.vcpus, h.ram_mb,
                                    h.disk_gb, vcpus, ram, disk, h.overlays)  # fmt: skip
                    entry.move(i, now)
                    continue
                r = _rank(name, ram_mb, used[1], entry.ram_ratio, entry.weigher)
                if entry.floor is None or r <= entry.floor:
                    del self._lists[key]

    def forget(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._lists.pop(key, None)


_BY_ENGINE: weakref.WeakKeyDictionary[Any, Shortlists] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def for_engine(engine: Any) -> Shortlists:
    found = _BY_ENGINE.get(engine)  # a dict read is atomic: the lock only guards the creation
    if found is not None:
        return found
    with _REGISTRY_LOCK:
        found = _BY_ENGINE.get(engine)
        if found is None:
            found = _BY_ENGINE[engine] = Shortlists()
        return found
