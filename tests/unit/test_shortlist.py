"""Remembered shortlists: used only while their best host is provably still the best."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nubes.conf import Settings
from nubes.scheduler import shortlist
from nubes.scheduler.filters import HostState, Request
from nubes.scheduler.placement import explain

S = Settings()
REQ = Request(vcpus=1, ram_mb=1024, disk_gb=1)


def host(name: str, used_ram_mb: int) -> HostState:
    return HostState(name, name, True, True, 64, 8192, 1000, 0, used_ram_mb, 0)


def rank(hosts: list[HostState]) -> list[HostState]:
    by_id = {h.id: h for h in hosts}
    return [by_id[v.host_id] for v in explain(hosts, REQ, S) if v.weight is not None]


def test_a_list_is_used_until_its_best_falls_below_the_floor() -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    # read with limit 2: hosts left out had at most 8192 - 2048 free
    lists.remember(key, [host("a", 0), host("b", 2048)], 2, S)
    best = lists.best(key, rank, S)
    assert best is not None and best.name == "a"
    lists.placed(key, best, REQ)  # a: 7168 free, still above the floor (6144)
    assert (b := lists.best(key, rank, S)) is not None and b.name == "a"
    lists.placed(key, b, REQ)  # a: 6144 = the floor: still as good as any left out
    assert (c := lists.best(key, rank, S)) is not None and c.name == "a"
    lists.placed(key, c, REQ)  # a: 5120, b: 6144: b is the best and at the floor
    assert (d := lists.best(key, rank, S)) is not None and d.name == "b"
    lists.placed(key, d, REQ)  # both below the floor: a host left out may be better
    assert lists.best(key, rank, S) is None
    assert lists.best(key, rank, S) is None  # and the list is gone


def test_a_list_holding_every_candidate_has_no_floor() -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    lists.remember(key, [host("a", 0)], 16, S)
    for _ in range(8):
        best = lists.best(key, rank, S)
        assert best is not None
        lists.placed(key, best, REQ)
    assert lists.best(key, rank, S) is None  # a is full: the filters drop it


def test_pack_keeps_filling_the_fullest() -> None:
    pack = S.model_copy(update={"scheduler_weigher": "pack"})
    lists = shortlist.Shortlists()
    key = lists.key(REQ, pack)

    def rank_pack(hosts: list[HostState]) -> list[HostState]:
        by_id = {h.id: h for h in hosts}
        return [by_id[v.host_id] for v in explain(hosts, REQ, pack) if v.weight is not None]

    lists.remember(key, [host("a", 4096), host("b", 2048)], 2, pack)
    assert (best := lists.best(key, rank_pack, pack)) is not None and best.name == "a"


def test_lists_expire_and_differ_by_request(monkeypatch: pytest.MonkeyPatch) -> None:
    lists = shortlist.Shortlists()
    key = lists.key(REQ, S)
    assert key != lists.key(replace(REQ, ram_mb=2048), S)
    lists.remember(key, [host("a", 0)], 16, S)
    now = shortlist.time.monotonic()
    monkeypatch.setattr(shortlist.time, "monotonic", lambda: now + shortlist.TTL + 0.1)
    assert lists.best(key, rank, S) is None


def test_one_registry_entry_per_engine() -> None:
    class Engine:
        pass

    e1, e2 = Engine(), Engine()
    assert shortlist.for_engine(e1) is shortlist.for_engine(e1)
    assert shortlist.for_engine(e1) is not shortlist.for_engine(e2)
