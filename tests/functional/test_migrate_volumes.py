"""Volumes travel with a migrating server (control side, fake drivers: the tests report the
migration as the hosts do), and an evacuated host's volumes are marked lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from nubes.cli.main import app
from nubes.client import ApiError, NubesClient
from nubes.schemas import agent as a
from nubes.schemas import resources as s
from nubes.schemas import volumes as sv
from tests.cloud import Cloud

MakeCloud = Callable[..., Cloud]


def make_server(cloud: Cloud, name: str = "web1", host: str = "host1") -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net", host=host)
    cloud.client.create_server(body)
    return cloud.wait_status(name, "ACTIVE")  # type: ignore[no-any-return]


def make_volume(cloud: Cloud, name: str, host: str, size_gb: int = 1) -> sv.Volume:
    cloud.client.create_volume(sv.VolumeCreate(name=name, size_gb=size_gb, host=host))
    return cloud.wait(lambda: (v := cloud.client.volume(name)).status == "available" and v)  # type: ignore[no-any-return]


def refused(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as exc:
        call()
    assert exc.value.status < 500
    return exc.value


def host_id(cloud: Cloud, name: str) -> str:
    return {h.name: h.id for h in cloud.client.hosts()}[name]


def report(cloud: Cloud, host: str, body: a.Report) -> None:
    with NubesClient(cloud.url, cloud.host_credential(host)) as agent:
        agent.report(host_id(cloud, host), body)


def migration_report(cloud: Cloud, host: str, obs: a.ObservedMigration) -> None:
    report(cloud, host, a.Report(instances=[], migrations=[obs]))


def test_volumes_move_with_the_server_at_the_switch_over(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    make_server(cloud)
    vol = make_volume(cloud, "data", "host1", size_gb=2)
    make_volume(cloud, "spare", "host1")
    c.attach_volume("web1", "data")
    cloud.wait(lambda: c.volume("data").status == "in-use", what="attached")

    def started() -> s.Migration | None:
        try:
            return c.migrate_server("web1", host="host2", live=True)
        except ApiError as exc:  # until host1 has reported the hotplug port
            assert (exc.status, exc.field) == (409, "volume"), exc.detail
            return None

    mig = cloud.wait(started, what="the migration to be accepted")
    # the target is told what to make: the same id, size and hotplug port
    target = c.desired(host_id(cloud, "host2"), -1, 0)
    assert target is not None
    [carried] = target.migrations[0].volumes
    assert (carried.id, carried.size_gb, carried.port) == (vol.id, 2, "hp0")
    # while it moves its volumes are fixed: neither attach nor detach
    err = refused(lambda: c.attach_volume("web1", "spare"))
    assert (err.status, err.field) == (409, "server") and "migrating" in err.detail
    err = refused(lambda: c.detach_volume("web1", "data"))
    assert (err.status, err.field) == (409, "server") and "migrating" in err.detail
    assert c.volume("data").host == "host1"
    migration_report(cloud, "host2", a.ObservedMigration(id=mig.id, state="prepared", port=1))
    assert c.volume("data").host == "host1"  # not before the switch-over
    migration_report(cloud, "host1", a.ObservedMigration(id=mig.id, state="completed"))
    assert c.migration(mig.id).phase == "done"
    moved = c.volume("data")
    assert (moved.host, moved.server) == ("host2", "web1")
    assert c.volume("spare").host == "host1"  # not attached: stays
    # the source is told which copies to remove; its late reports change nothing
    source = c.desired(host_id(cloud, "host1"), -1, 0)
    assert source is not None
    assert [v.id for v in source.migrations[0].volumes] == [vol.id]
    assert vol.id not in {v.id for v in source.volumes}
    gone = a.ObservedVolume(id=vol.id, status="error", fault="file removed")
    report(cloud, "host1", a.Report(instances=[], volumes=[gone]))
    assert c.volume("data").status != "error"
    # the target's agent has it in its desired state now and reports it in its guest
    cloud.wait(lambda: c.volume("data").status == "in-use", what="in-use on host2")
    c.detach_volume("web1", "data")  # and it can be detached again


def test_a_failed_migration_leaves_the_volumes_where_they_were(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    make_server(cloud)
    make_volume(cloud, "data", "host1")
    c.attach_volume("web1", "data")
    cloud.wait(lambda: c.volume("data").status == "in-use", what="attached")
    mig = c.migrate_server("web1", host="host2", live=False)  # cold: no port needed
    assert len(c.desired(host_id(cloud, "host2"), -1, 0).migrations[0].volumes) == 1  # type: ignore[union-attr]
    migration_report(cloud, "host2", a.ObservedMigration(id=mig.id, state="prepared", port=1))
    migration_report(cloud, "host1", a.ObservedMigration(id=mig.id, state="failed", error="x"))
    assert c.migration(mig.id).phase == "failed"
    vol = c.volume("data")
    assert (vol.host, vol.server) == ("host1", "web1")
    # the target still lists the volumes it must remove with the rest of what it made
    [failed] = c.desired(host_id(cloud, "host2"), -1, 0).migrations  # type: ignore[union-attr]
    assert failed.phase == "failed" and [v.id for v in failed.volumes] == [vol.id]


def test_volumes_that_cannot_travel_are_409_naming_them(make_cloud: MakeCloud) -> None:
    # hosts stay "up" for a minute without heartbeats: host1 can be silent on purpose
    cloud = make_cloud(hosts=2, host_down_after=60.0)
    c = cloud.client
    make_server(cloud)
    vol = make_volume(cloud, "data", "host1")
    host1 = next(agent for agent, _, _ in cloud.agents if agent.host_name == "host1")
    cloud.stop_agent(host1)
    c.attach_volume("web1", "data")  # host1 never says it is attached
    err = refused(lambda: c.migrate_server("web1", host="host2", live=True))
    assert (err.status, err.field) == (409, "volume")
    assert "data" in err.detail and "attaching" in err.detail
    # in the guest, but its hotplug port unknown: not live (the target could not match it)
    report(
        cloud,
        "host1",
        a.Report(instances=[], volumes=[a.ObservedVolume(id=vol.id, status="in-use")]),
    )
    assert c.volume("data").status == "in-use"
    err = refused(lambda: c.migrate_server("web1", host="host2", live=True))
    assert (err.status, err.field) == (409, "volume") and "data" in err.detail
    # a target without room for the volumes (its disk is taken by a volume of its own)
    hosts = {h.name: h for h in c.hosts()}
    capacity = int(hosts["host2"].disk_gb * cloud.settings.disk_allocation_ratio)
    server_disk = hosts["host1"].used_disk_gb
    make_volume(cloud, "filler", "host2", size_gb=capacity - server_disk)  # room: the disk's
    err = refused(lambda: c.migrate_server("web1", host="host2", live=False))
    assert (err.status, err.field) == (409, "host") and "volumes" in err.detail
    assert {h.name: h.used_ram_mb for h in c.hosts()}["host2"] == 0  # the claim rolled back
    c.delete_volume("filler")
    cloud.wait(lambda: all(v.name != "filler" for v in c.volumes()), what="filler gone")
    mig = c.migrate_server("web1", host="host2", live=False)  # cold: fine
    assert mig.phase == "preparing"
    # the volume on its way counts on the target: the room it had is taken
    late = sv.VolumeCreate(name="late", size_gb=capacity - server_disk, host="host2")
    err = refused(lambda: c.create_volume(late))
    assert (err.status, err.field) == (409, "host")


def test_an_evacuated_hosts_volumes_are_lost_errors_and_detached(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    before = make_server(cloud)
    make_volume(cloud, "data", "host1")
    make_volume(cloud, "spare", "host1")
    make_volume(cloud, "other", "host2")
    c.attach_volume("web1", "data")
    cloud.wait(lambda: c.volume("data").status == "in-use", what="attached")
    env = {"NUBES_URL": cloud.url, "NUBES_TOKEN": cloud.token}
    warned = CliRunner().invoke(app, ["host", "evacuate", "host1"], env=env)
    assert warned.exit_code != 0 and "volumes are lost" in warned.output
    host1 = next(agent for agent, _, _ in cloud.agents if agent.host_name == "host1")
    cloud.stop_agent(host1)
    cloud.wait(lambda: {h.name: h.state for h in c.hosts()}["host1"] == "down", what="host1 down")
    result = CliRunner().invoke(app, ["host", "evacuate", "host1", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "volume data: lost with host1" in result.output
    assert "volume spare: lost with host1" in result.output
    for name in ("data", "spare"):
        vol = c.volume(name)
        assert (vol.status, vol.server, vol.host) == ("error", None, "host1")
        assert "lost with host host1" in vol.fault
    assert c.volume("other").status == "available"  # another host's: untouched
    after = cloud.wait_status("web1", "ACTIVE")
    assert after.host == "host2" and after.id == before.id
    host2 = next(agent for agent, _, _ in cloud.agents if agent.host_name == "host2")
    assert host2.hypervisor.attached_volumes(before.id) == set()  # it came up without them
    # a lost volume can be deleted (its host is gone: nothing to wait for)
    c.delete_volume("data")
    assert all(v.name != "data" for v in c.volumes())
