"""`nubes server migrate` through the API: its refusals and the phases its agents report
(with fake drivers the agents do not migrate: the tests report as the hosts do)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from nubes.client import ApiError, NubesClient
from nubes.schemas import agent as a
from nubes.schemas import resources as s
from tests.cloud import Cloud
from tests.functional.conftest import usage_mismatches

MakeCloud = Callable[..., Cloud]


def make_server(cloud: Cloud, name: str = "web1", host: str = "host1") -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net", host=host)
    cloud.client.create_server(body)
    return cloud.wait_status(name, "ACTIVE")  # type: ignore[no-any-return]


def refused(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as exc:
        call()
    assert exc.value.status < 500
    return exc.value


def test_refusals_name_the_field(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    make_server(cloud)
    err = refused(lambda: c.migrate_server("web1", host="host1", live=True))
    assert (err.status, err.field) == (422, "host")
    assert "already on host1" in err.detail
    err = refused(lambda: c.migrate_server("web1", host="nowhere", live=True))
    assert (err.status, err.field) == (404, "host")
    err = refused(lambda: c.migrate_server("nothing", live=True))
    assert (err.status, err.field) == (404, "server")
    # a member may not migrate, not even its own project's servers
    project = c.create_project(s.ProjectCreate(name="p1"))  # type: ignore[call-arg]
    with NubesClient(cloud.url, project.token) as member:
        err = refused(lambda: member.migrate_server("web1"))
        assert err.status == 403
    # a stopped server does not migrate live
    c.server_action("web1", "stop")
    cloud.wait_status("web1", "SHUTOFF")
    err = refused(lambda: c.migrate_server("web1", host="host2", live=True))
    assert (err.status, err.field) == (409, "live")
    assert usage_mismatches(cloud) == []


def test_a_down_target_is_refused(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    make_server(cloud)
    cloud.stop_agent(cloud.agents[1][0])
    cloud.wait(lambda: {h.name: h.state for h in c.hosts()}["host2"] == "down", what="down")
    err = refused(lambda: c.migrate_server("web1", host="host2", live=True))
    assert (err.status, err.field) == (409, "host")
    assert "host2 is down" in err.detail
    err = refused(lambda: c.migrate_server("web1", live=True))  # nowhere else to go
    assert err.status == 409


def report(cloud: Cloud, host: str, obs: a.ObservedMigration) -> None:
    host_id = {h.name: h.id for h in cloud.client.hosts()}[host]
    with NubesClient(cloud.url, cloud.host_credential(host)) as agent:
        agent.report(host_id, a.Report(instances=[], migrations=[obs]))


def host_of(cloud: Cloud, name: str) -> str:
    return cloud.client.server(name).host or ""


def test_phases_move_the_server_and_its_claim_once(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    make_server(cloud)
    mig = c.migrate_server("web1", host="host2", live=True)
    assert (mig.phase, mig.source, mig.target) == ("preparing", "host1", "host2")
    used = {h.name: h.used_ram_mb for h in c.hosts()}
    assert used == {"host1": 256, "host2": 256}  # both held while it moves
    err = refused(lambda: c.migrate_server("web1", host="host2", live=True))
    assert err.status == 409  # one at a time
    assert not [f for f in c.gc().database if "usage" in f]  # held, not drift
    # the source cannot say it is prepared; the target can
    report(cloud, "host1", a.ObservedMigration(id=mig.id, state="prepared", port=1, nbd_port=2))
    assert c.migration(mig.id).phase == "preparing"
    report(cloud, "host2", a.ObservedMigration(id=mig.id, state="prepared", port=1, nbd_port=2))
    assert c.migration(mig.id).phase == "migrating"
    assert host_of(cloud, "web1") == "host1"
    report(
        cloud,
        "host1",
        a.ObservedMigration(id=mig.id, state="completed", total_ms=900, downtime_ms=40),
    )
    done = c.migration(mig.id)
    assert (done.phase, done.total_ms, done.downtime_ms) == ("done", 900, 40)
    assert host_of(cloud, "web1") == "host2"
    assert c.server("web1").task_state == ""
    # a late or repeated report changes nothing: the claim is released once
    report(cloud, "host1", a.ObservedMigration(id=mig.id, state="completed"))
    report(cloud, "host2", a.ObservedMigration(id=mig.id, state="failed", error="late"))
    assert c.migration(mig.id).phase == "done"
    used = {h.name: h.used_ram_mb for h in c.hosts()}
    assert used == {"host1": 0, "host2": 256}
    assert usage_mismatches(cloud) == []


def test_a_failure_before_the_switch_over_keeps_it_on_the_source(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    make_server(cloud)
    mig = c.migrate_server("web1", live=True)  # the scheduler's choice: the other host
    assert mig.target == "host2"
    report(cloud, "host2", a.ObservedMigration(id=mig.id, state="prepared", port=1, nbd_port=2))
    report(cloud, "host1", a.ObservedMigration(id=mig.id, state="failed", error="mirror broke"))
    failed = c.migration(mig.id)
    assert (failed.phase, failed.error) == ("failed", "mirror broke")
    assert host_of(cloud, "web1") == "host1"
    assert {h.name: h.used_ram_mb for h in c.hosts()} == {"host1": 256, "host2": 0}
    ops = [o for o in c.operations("web1") if o.kind == "migrate"]
    assert ops[0].status == "failed" and "mirror broke" in ops[0].error
    assert usage_mismatches(cloud) == []
    # the target is told to remove what it prepared until it says it has
    host2 = cloud.agents[1][0]
    assert [m.phase for m in cloud.client.desired(host2.host_id, -1, 0).migrations] == ["failed"]  # type: ignore[union-attr]
    report(cloud, "host2", a.ObservedMigration(id=mig.id, state="cleaned"))
    assert cloud.client.desired(host2.host_id, -1, 0).migrations == []  # type: ignore[union-attr]
    # it may try again
    again = c.migrate_server("web1", host="host2", live=True)
    assert again.phase == "preparing"
