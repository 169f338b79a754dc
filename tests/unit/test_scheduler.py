"""Filters, weighers and explain: pure functions over host states."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nubes.conf import Settings
from nubes.scheduler.filters import (
    DEFAULT_FILTERS,
    GroupState,
    HostState,
    Request,
    affinity_filter,
    anti_affinity_filter,
    disk_filter,
    forced_host_filter,
    overlay_filter,
    ram_filter,
    status_filter,
    vcpu_filter,
)
from nubes.scheduler.placement import MAX_LISTED, explain, no_host_message
from nubes.scheduler.weighers import normalise, weigh, weighers_for

S = Settings(cpu_allocation_ratio=4.0, ram_allocation_ratio=1.0, disk_allocation_ratio=2.0)


def host(name: str, **kw: object) -> HostState:
    base = HostState(
        id=f"id-{name}",
        name=name,
        up=True,
        enabled=True,
        vcpus=4,
        ram_mb=4096,
        disk_gb=100,
        used_vcpus=0,
        used_ram_mb=0,
        used_disk_gb=0,
    )
    return base._replace(**kw)


TINY = Request(vcpus=1, ram_mb=256, disk_gb=1)


def test_status_filter_says_down_or_disabled() -> None:
    assert status_filter(host("a"), TINY, S) is None
    assert "down" in (status_filter(host("a", up=False), TINY, S) or "")
    assert "disabled" in (status_filter(host("a", enabled=False), TINY, S) or "")


def test_room_filters_apply_allocation_ratios() -> None:
    # RAM ratio 1.0: 4096 MiB, 3900 used, 196 free
    why = ram_filter(host("a", used_ram_mb=3900), TINY, S)
    assert why == "RAM: needs 256 MiB, 196 MiB free of 4096 MiB"
    assert ram_filter(host("a", used_ram_mb=3840), TINY, S) is None  # exactly fits
    # vCPU ratio 4.0: 4 cores hold 16 vCPUs
    assert vcpu_filter(host("a", used_vcpus=15), TINY, S) is None
    assert "vCPUs: needs 1, 0 free of 16" == vcpu_filter(host("a", used_vcpus=16), TINY, S)
    # disk ratio 2.0: 100 GiB hold 200
    assert disk_filter(host("a", used_disk_gb=199), TINY, S) is None
    assert "disk" in (disk_filter(host("a", used_disk_gb=200), TINY, S) or "")


def test_forced_host_by_name_or_id() -> None:
    req = replace(TINY, force_host="b")
    assert forced_host_filter(host("b"), req, S) is None
    assert forced_host_filter(host("a"), req, S) == "not the requested host b"
    assert forced_host_filter(host("a"), replace(TINY, force_host="id-a"), S) is None


def test_overlay_filter() -> None:
    geneve = replace(TINY, overlay="geneve")
    assert overlay_filter(host("a"), replace(TINY, overlay="vxlan"), S) is None
    assert "needs geneve, this host has vxlan" in (overlay_filter(host("a"), geneve, S) or "")
    assert overlay_filter(host("a", overlays=frozenset({"vxlan", "geneve"})), geneve, S) is None


def group(policy: str, **members: int) -> Request:
    return replace(TINY, group=GroupState("web", policy, members))


def test_affinity_follows_the_members_and_is_free_when_empty() -> None:
    assert affinity_filter(host("a"), group("affinity"), S) is None
    assert affinity_filter(host("a"), group("affinity", a=2), S) is None
    why = affinity_filter(host("b"), group("affinity", a=2), S)
    assert why == "group web (affinity): its servers are on a"
    # other policies are not this filter's business
    assert affinity_filter(host("b"), group("soft-affinity", a=2), S) is None


def test_anti_affinity_refuses_a_host_with_a_member() -> None:
    assert anti_affinity_filter(host("b"), group("anti-affinity", a=1), S) is None
    assert "anti-affinity" in (
        anti_affinity_filter(host("a"), group("anti-affinity", a=1), S) or ""
    )
    assert anti_affinity_filter(host("a"), group("soft-anti-affinity", a=1), S) is None


def test_normalise() -> None:
    assert normalise([10, 20, 30]) == [0.0, 0.5, 1.0]
    assert normalise([5, 5]) == [0.0, 0.0]
    assert normalise([]) == []


def test_spread_prefers_free_ram_and_pack_the_least() -> None:
    hosts = [host("a", used_ram_mb=1024), host("b"), host("c", used_ram_mb=2048)]
    assert weigh(hosts, TINY, S) == [0.5, 1.0, 0.0]
    pack = S.model_copy(update={"scheduler_weigher": "pack"})
    assert weigh(hosts, TINY, pack) == [-0.5, -1.0, -0.0]


def test_soft_anti_affinity_outweighs_free_ram() -> None:
    # b has the most free RAM but already a member: a soft-anti-affinity create goes to a
    hosts = [host("a", used_ram_mb=2048), host("b")]
    req = group("soft-anti-affinity", b=1)
    weights = weigh(hosts, req, S)
    assert weights[0] > weights[1]
    assert [n for n, _, _ in weighers_for(req, S)] == ["ram", "soft-anti-affinity"]


def test_soft_affinity_prefers_the_members_host() -> None:
    hosts = [host("a", used_ram_mb=2048), host("b")]
    weights = weigh(hosts, group("soft-affinity", a=1), S)
    assert weights[0] > weights[1]


def test_explain_gives_every_filter_and_sorts_best_first() -> None:
    hosts = [host("a", used_ram_mb=1024), host("b"), host("c", up=False)]
    verdicts = explain(hosts, TINY, S)
    assert [v.host for v in verdicts] == ["b", "a", "c"]
    assert [name for name, _ in verdicts[0].checks] == [name for name, _ in DEFAULT_FILTERS]
    assert verdicts[0].weight == 1.0 and verdicts[1].weight == 0.0
    assert verdicts[2].weight is None
    assert verdicts[2].reasons == ("host is down (no heartbeat)",)


@pytest.mark.parametrize("n", [1, 3, MAX_LISTED + 5])
def test_no_host_message_lists_each_host_reason(n: int) -> None:
    hosts = [host(f"h{i:03}", used_ram_mb=4096) for i in range(n)]
    message = no_host_message(explain(hosts, TINY, S))
    assert message.startswith("no valid host: h000: RAM: needs 256 MiB, 0 MiB free")
    assert message.count("RAM:") == min(n, MAX_LISTED)
    if n > MAX_LISTED:
        assert message.endswith("and 5 more hosts (see --explain)")
    assert no_host_message([]) == "no valid host: no hosts are registered"
