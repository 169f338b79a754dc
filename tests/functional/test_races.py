"""Racing creates never overcommit a host nor break a group's policy.

On SQLite every create holds the database's write lock; on PostgreSQL (two API servers on one
database here) the claim's conditional UPDATE and the group's row lock do the work.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from nubes.client import NubesClient
from nubes.control import compute
from nubes.db.models import Instance
from nubes.schemas import resources as s
from tests.cloud import Cloud
from tests.functional.conftest import usage_mismatches

MakeCloud = Callable[..., Cloud]
# 40 creates on a busy 2-core machine can take seconds, and a heartbeat waits its turn behind
# them: these tests are about races, not about hosts going down.
RACE = dict(apis=2, host_down_after=60.0)


def race(cloud: Cloud, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body at once, each from its own thread and client, spread over the APIs."""
    clients = [
        NubesClient(cloud.apis[i % len(cloud.apis)].url, cloud.token) for i in range(len(bodies))
    ]
    answers: list[httpx.Response | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def one(i: int) -> None:
        start.wait()
        answers[i] = clients[i]._http.post("/v1/servers", json=bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for c in clients:
        c.close()
    assert all(a is not None for a in answers), "a create never answered"
    return [a for a in answers if a is not None]


def server(name: str, **kw: str) -> dict[str, Any]:
    return {"name": name, "image": "img", "flavor": "m1.tiny", "network": "net", **kw}


def test_forty_creates_for_room_for_ten(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=1, **RACE)
    # the fake host has 16384 MiB (RAM ratio 1.0): room for 10 of these, not 11
    cloud.client.create_flavor(s.FlavorCreate(name="tenth", vcpus=1, ram_mb=1638, disk_gb=1))
    answers = race(cloud, [server(f"r{i}", flavor="tenth") for i in range(40)])
    codes = Counter(a.status_code for a in answers)
    assert codes == {202: 10, 409: 30}, [a.text for a in answers if a.status_code not in (202, 409)]
    for a in answers:
        if a.status_code == 409:
            detail = a.json()["detail"]
            assert detail.startswith("no valid host: host1: RAM: needs 1638 MiB"), detail
    host = cloud.client.hosts()[0]
    assert (host.used_ram_mb, host.instances) == (16380, 10)
    assert len(cloud.client.servers()) == 10
    assert len({ip for x in cloud.client.servers() for ip in x.addresses["net"]}) == 10
    assert usage_mismatches(cloud) == []


def test_racing_anti_affinity_creates_take_one_host_each(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3, **RACE)
    cloud.client.create_group(s.GroupCreate(name="web", policy="anti-affinity"))
    answers = race(cloud, [server(f"w{i}", group="web") for i in range(8)])
    placed = [a.json()["host"] for a in answers if a.status_code == 202]
    assert sorted(placed) == ["host1", "host2", "host3"]
    assert Counter(a.status_code for a in answers) == {202: 3, 409: 5}
    assert usage_mismatches(cloud) == []


def test_racing_affinity_creates_share_one_host(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3, **RACE)
    cloud.client.create_group(s.GroupCreate(name="db", policy="affinity"))
    answers = race(cloud, [server(f"d{i}", group="db") for i in range(8)])
    assert [a.status_code for a in answers] == [202] * 8
    assert len({a.json()["host"] for a in answers}) == 1
    assert usage_mismatches(cloud) == []


def test_racing_creates_on_many_hosts_get_distinct_addresses(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3, **RACE)
    answers = race(cloud, [server(f"n{i}") for i in range(12)])
    assert [a.status_code for a in answers] == [202] * 12
    ips = [ip for a in answers for ip in a.json()["addresses"]["net"]]
    assert len(set(ips)) == 12
    assert usage_mismatches(cloud) == []


def test_racing_same_name_creates_one_wins(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2, **RACE)
    answers = race(cloud, [server("same") for _ in range(6)])
    assert Counter(a.status_code for a in answers) == {202: 1, 409: 5}
    assert all(a.json()["field"] == "name" for a in answers if a.status_code == 409)
    assert usage_mismatches(cloud) == []


def test_an_agent_sees_what_another_api_server_did(make_cloud: MakeCloud) -> None:
    """Agents long-poll the first API (8 s here); the second's commits reach them through the
    host's generation, which the long-polls' watcher re-reads every second."""
    cloud = make_cloud(hosts=1, apis=2, sync_interval=8.0)
    other = NubesClient(cloud.apis[1].url, cloud.token)
    try:
        time.sleep(1)  # let the agent settle into a long-poll
        begin = time.monotonic()
        body = s.ServerCreate(name="x", image="img", flavor="m1.tiny", network="net")
        created = other.create_server(body)
        cloud.wait_status(created.id, "ACTIVE", timeout=10)
        assert time.monotonic() - begin < 4.0  # not the long-poll's 8 s
        other.delete_server(created.id)
        cloud.wait(lambda: not cloud.client.servers(), timeout=4, what="the delete")
    finally:
        other.close()


def test_a_delete_finished_twice_releases_its_claim_once(ready: Cloud) -> None:
    """Two finishers with the same view (a report and a delete on another API server)."""
    server = ready.client.create_server(
        s.ServerCreate(name="x", image="img", flavor="m1.tiny", network="net")
    )
    sessions = ready.app.state.nubes.sessions
    with sessions() as session:  # the second finisher read the instance before the first ends
        stale = session.get(Instance, server.id)
        assert stale is not None
        session.expunge(stale)
    for inst in (None, stale):
        with sessions() as session:
            if inst is None:
                inst = session.get(Instance, server.id)
            else:
                session.add(inst)
            assert inst is not None
            compute.finish_delete(session, inst)
            session.commit()
    host = ready.client.hosts()[0]
    assert (host.used_vcpus, host.used_ram_mb, host.used_disk_gb) == (0, 0, 0)
    assert usage_mismatches(ready) == []
