"""Remembered shortlists: used only while their best host is provably still the best."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nubes.conf import Settings
from nubes.scheduler import shortlist
from nubes.scheduler.filters import HostState, Request
from nubes.scheduler.placement import passes

S = Settings()
REQ = Request(vcpus=1, ram_mb=1024, disk_gb=1)


def host(name: str, used_ram_mb: int) -> HostState:
    return HostState(name, name, True, True, 64, 8192, 1000, 0, used_ram_mb, 0)


def ok(h: HostState) -> bool:
    return passes(h, REQ, S)


def place(lists: shortlist.Shortlists, h: HostState) -> None:
    """What a claim tells the lists: the host's usage as its UPDATE's RETURNING gives it."""
    used = (h.used_vcpus + REQ.vcpus, h.used_ram_mb + REQ.ram_mb, h.used_disk_gb + REQ.disk_gb)
    lists.changed(h.id, h.name, h.ram_mb, used)


def test_a_list_is_used_until_its_best_falls_below_the_floor() -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    # read with limit 2: hosts left out had at most 8192 - 2048 free
    lists.remember(key, [host("a", 0), host("b", 2048)], 2, S)
    best = lists.best(key, ok, S)
    assert best is not None and best.name == "a"
    place(lists, best)  # a: 7168 free, still above the floor (6144)
    assert (b := lists.best(key, ok, S)) is not None and b.name == "a"
    place(lists, b)  # a: 6144 = the floor: still as good as any left out
    assert (c := lists.best(key, ok, S)) is not None and c.name == "a"
    place(lists, c)  # a: 5120, b: 6144: b is the best and at the floor
    assert (d := lists.best(key, ok, S)) is not None and d.name == "b"
    place(lists, d)  # both below the floor: a host left out may be better
    assert lists.best(key, ok, S) is None
    assert lists.best(key, ok, S) is None  # and the list is gone


def test_a_list_holding_every_candidate_has_no_floor() -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    lists.remember(key, [host("a", 0)], 16, S)
    for _ in range(8):
        best = lists.best(key, ok, S)
        assert best is not None
        place(lists, best)
    assert lists.best(key, ok, S) is None  # a is full: the filters drop it


def test_pack_keeps_filling_the_fullest() -> None:
    pack = S.model_copy(update={"scheduler_weigher": "pack"})
    lists = shortlist.Shortlists()
    key = lists.key(REQ, pack)

    lists.remember(key, [host("a", 4096), host("b", 2048)], 2, pack)
    assert (best := lists.best(key, lambda h: passes(h, REQ, pack), pack)) is not None
    assert best.name == "a"


def test_lists_expire_and_differ_by_request(monkeypatch: pytest.MonkeyPatch) -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    assert key != lists.key(replace(REQ, ram_mb=2048), S)
    lists.remember(key, [host("a", 0)], 16, S)
    now = shortlist.time.monotonic()
    monkeypatch.setattr(shortlist.time, "monotonic", lambda: now + shortlist.TTL + 0.1)
    assert lists.best(key, ok, S) is None


def test_one_registry_entry_per_engine() -> None:
    class Engine:
        pass

    e1, e2 = Engine(), Engine()
    assert shortlist.for_engine(e1) is shortlist.for_engine(e1)
    assert shortlist.for_engine(e1) is not shortlist.for_engine(e2)


def test_ties_at_the_floor_go_by_name() -> None:
    """A host left out with as much free RAM as the floor comes after the last one by name:
    a remembered host at the floor is still the best only if its name comes first too."""
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    lists.remember(key, [host("b", 0), host("c", 1024)], 2, S)  # left out: <= 7168, after "c"
    assert (b := lists.best(key, ok, S)) is not None and b.name == "b"
    place(lists, b)  # b: 7168 = the floor, and "b" < "c": as good as any
    assert (b2 := lists.best(key, ok, S)) is not None and b2.name == "b"
    lists.remember(key, [host("x", 0), host("c", 1024)], 2, S)
    x = lists.best(key, ok, S)
    assert x is not None
    place(lists, x)  # x: 7168 too, but a host "d" left out at 7168 beats it
    assert (c := lists.best(key, ok, S)) is not None and c.name == "c"
    place(lists, c)
    assert lists.best(key, ok, S) is None


def test_the_first_host_that_passes_the_filters() -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    full = host("a", 0)._replace(used_vcpus=64 * 4)  # cpu_allocation_ratio 4
    lists.remember(key, [full, host("b", 1024)], 16, S)
    assert (b := lists.best(key, ok, S)) is not None and b.name == "b"


def test_a_change_elsewhere_moves_the_host_or_drops_the_list() -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    lists.remember(key, [host("a", 0), host("b", 2048)], 2, S)  # floor: 6144 free, "b"
    lists.changed("b", "b", 8192, (0, 0, 0))  # b freed (a delete): moves ahead by name
    assert (b := lists.best(key, ok, S)) is not None and b.name == "a"
    lists.changed("a", "a", 8192, (1, 4096, 1))  # a claimed by another request shape
    assert (b2 := lists.best(key, ok, S)) is not None and b2.name == "b"
    lists.changed("c", "c", 8192, (0, 7168, 0))  # a host left out, still behind the floor
    assert lists.best(key, ok, S) is not None
    lists.changed("c", "c", 8192, (0, 0, 0))  # now ahead of the floor: the list proves nothing
    assert lists.best(key, ok, S) is None


def test_reads_grow_while_lists_are_used_up_and_start_small_after_a_quiet_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    first = lists.read_size(key, 1024)
    assert first == shortlist.FIRST_READ and lists.read_size(key, 16) == 16
    # a list whose hosts all fall behind its floor within the TTL: the next read is longer
    lists.remember(key, [host("a", 0), host("b", 0)], first, S)
    lists.changed("a", "a", 8192, (0, 8192, 0))  # full now: the filters drop it
    lists.changed("b", "b", 8192, (0, 8192, 0))
    assert lists.best(key, ok, S) is None
    assert lists.read_size(key, 1024) == 2 * first
    assert lists.read_size(key, 100) == 100  # never more than the most asked for
    # a list that expires instead (creates more than a TTL apart): back to a short read
    lists.remember(key, [host("a", 0)], 2 * first, S)
    now = shortlist.time.monotonic()
    monkeypatch.setattr(shortlist.time, "monotonic", lambda: now + shortlist.TTL + 0.1)
    assert lists.best(key, ok, S) is None
    assert lists.read_size(key, 1024) == first
