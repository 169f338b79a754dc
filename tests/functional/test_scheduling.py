"""The scheduler through the API: groups, --explain, --host, hosts going down."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s
from tests.cloud import Cloud
from tests.functional.conftest import usage_mismatches

MakeCloud = Callable[..., Cloud]


def body(name: str, **kw: Any) -> s.ServerCreate:
    fields: dict[str, Any] = dict(name=name, image="img", flavor="m1.tiny", network="net")
    fields.update(kw)
    return s.ServerCreate(**fields)


def create(cloud: Cloud, name: str, **kw: Any) -> s.Server:
    return cloud.client.create_server(body(name, **kw))


def test_group_crud_and_membership(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=1)
    c = cloud.client
    g = c.create_group(s.GroupCreate(name="web", policy="soft-anti-affinity"))
    assert (g.name, g.policy, g.members, g.hosts) == ("web", "soft-anti-affinity", [], [])
    with pytest.raises(ApiError) as dup:
        c.create_group(s.GroupCreate(name="web", policy="affinity"))
    assert dup.value.status == 409 and dup.value.field == "name"
    bad = c._http.post("/v1/groups", json={"name": "x", "policy": "sometimes"})
    assert bad.status_code == 422 and bad.json()["field"] == "policy"
    server = create(cloud, "web1", group="web")
    assert server.group == "web"
    assert c.group("web").members == ["web1"] and c.group(g.id).hosts == ["host1"]
    assert [x.name for x in c.groups()] == ["web"]
    with pytest.raises(ApiError) as busy:
        c.delete("groups", "web")
    assert busy.value.status == 409 and "web1" in busy.value.detail
    with pytest.raises(ApiError) as missing:
        create(cloud, "web2", group="nope")
    assert missing.value.status == 404 and missing.value.field == "group"
    c.delete_server("web1")
    cloud.wait(lambda: not c.servers(), what="web1 to go")
    c.delete("groups", "web")
    assert c.groups() == []


def test_anti_affinity_one_per_host_then_no_host(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    cloud.client.create_group(s.GroupCreate(name="web", policy="anti-affinity"))
    hosts = {create(cloud, f"web{i}", group="web").host for i in range(3)}
    assert hosts == {"host1", "host2", "host3"}
    with pytest.raises(ApiError) as exc:
        create(cloud, "web4", group="web")
    assert exc.value.status == 409
    assert exc.value.detail.count("group web (anti-affinity): already has a server") == 3


def test_affinity_keeps_to_the_first_members_host(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    cloud.client.create_group(s.GroupCreate(name="db", policy="affinity"))
    first = create(cloud, "db0", group="db").host
    assert {create(cloud, f"db{i}", group="db").host for i in range(1, 4)} == {first}
    # the members' host is full for a big flavor: the others do not qualify either
    cloud.client.create_flavor(s.FlavorCreate(name="big", vcpus=1, ram_mb=15500, disk_gb=1))
    with pytest.raises(ApiError) as exc:
        create(cloud, "db9", group="db", flavor="big")
    assert f"its servers are on {first}" in exc.value.detail
    assert f"{first}: RAM: needs 15500 MiB" in exc.value.detail


def test_soft_anti_affinity_spreads_six_over_three(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    cloud.client.create_group(s.GroupCreate(name="web", policy="soft-anti-affinity"))
    placed = Counter(create(cloud, f"web{i}", group="web").host for i in range(6))
    assert placed == {"host1": 2, "host2": 2, "host3": 2}


def test_soft_affinity_packs_the_group(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    cloud.client.create_group(s.GroupCreate(name="web", policy="soft-affinity"))
    assert len({create(cloud, f"web{i}", group="web").host for i in range(4)}) == 1
    # without the group the default weigher spreads
    assert len({create(cloud, f"solo{i}").host for i in range(3)}) >= 2


def test_explain_shows_every_host_and_filter_and_creates_nothing(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    c = cloud.client
    create(cloud, "a", host="host1")
    c.set_host_enabled("host3", False)
    ex = c.explain_server(body("b"))
    assert ex.filters[:5] == ["status", "forced-host", "ram", "vcpu", "disk"]
    assert ex.weighers == ["ram x1"]
    rows = {h.host: h for h in ex.hosts}
    assert set(rows) == {"host1", "host2", "host3"}
    assert ex.chosen == "host2" and ex.hosts[0].host == "host2"  # most free RAM
    assert rows["host2"].weight == 1.0 and rows["host1"].weight == 0.0
    assert rows["host3"].weight is None and not rows["host3"].passed
    status = {f.name: f for f in rows["host3"].filters}["status"]
    assert (status.passed, status.reason) == (False, "host is disabled")
    assert [x.name for x in c.servers()] == ["a"]  # nothing was created
    assert create(cloud, "b").host == ex.chosen
    # an existing name is no reason to refuse an explanation
    assert c.explain_server(body("b")).chosen is not None
    c.set_host_enabled("host3", True)


def test_explain_with_a_group_names_its_weigher(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    cloud.client.create_group(s.GroupCreate(name="web", policy="soft-anti-affinity"))
    create(cloud, "w1", group="web")
    ex = cloud.client.explain_server(body("w2", group="web"))
    assert ex.weighers == ["ram x1", "soft-anti-affinity x-2"]


def test_only_admins_force_a_host_and_it_is_obeyed(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    assert create(cloud, "x", host="host3").host == "host3"
    with pytest.raises(ApiError) as exc:
        create(cloud, "y", host="nowhere")
    assert (exc.value.status, exc.value.field) == (404, "host")
    assert exc.value.detail == "host 'nowhere' not found"
    cloud.client.set_host_enabled("host3", False)
    with pytest.raises(ApiError) as exc:
        create(cloud, "z", host="host3")
    assert exc.value.status == 409
    assert "host3: host is disabled" in exc.value.detail
    assert exc.value.detail.count("not the requested host host3") == 2


def test_down_host_is_skipped_and_its_servers_are_unknown_not_deleted(
    make_cloud: MakeCloud,
) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    server = create(cloud, "web1", host="host2")
    cloud.wait_status(server.id, "ACTIVE")
    agent2 = cloud.agents[1][0]
    cloud.stop_agent(agent2)  # the agent stops; its guests live on (the fake hypervisor)
    cloud.wait(lambda: {h.name: h.state for h in c.hosts()}["host2"] == "down", what="host2 down")
    assert c.server("web1").status == "UNKNOWN"
    assert [x.status for x in c.servers()] == ["UNKNOWN"]
    assert {create(cloud, f"n{i}").host for i in range(3)} == {"host1"}
    with pytest.raises(ApiError) as exc:
        create(cloud, "forced", host="host2")
    assert "host2: host is down (no heartbeat)" in exc.value.detail
    host2 = {h.name: h for h in c.hosts()}["host2"]
    assert host2.instances == 1 and host2.used_ram_mb == 256  # still held, not deleted
    assert usage_mismatches(cloud) == []
    # the agent comes back to its guests: the server is reported again
    cloud.start_agent("host2", "10.255.0.12", hypervisor=agent2.hypervisor)
    cloud.wait_status("web1", "ACTIVE")


def test_host_list_reports_usage_state_and_heartbeat(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    create(cloud, "a", host="host1")
    create(cloud, "b", host="host1", flavor="m1.small")
    hosts = {h.name: h for h in cloud.client.hosts()}
    h1, h2 = hosts["host1"], hosts["host2"]
    assert (h1.state, h1.enabled, h1.accel) == ("up", True, h1.accel)
    assert (h1.vcpus, h1.ram_mb, h1.disk_gb) == (8, 16384, 200)  # the fake host
    assert (h1.used_vcpus, h1.used_ram_mb, h1.used_disk_gb, h1.instances) == (2, 1280, 5, 2)
    assert (h2.used_vcpus, h2.used_ram_mb, h2.used_disk_gb, h2.instances) == (0, 0, 0, 0)
    assert h1.last_heartbeat is not None
    assert usage_mismatches(cloud) == []
