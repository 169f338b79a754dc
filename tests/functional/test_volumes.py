"""Volumes, snapshots, rebuild and resize through the API with fake drivers (issue 13)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pycdlib
import pytest
from typer.testing import CliRunner

from nubes.agent.agent import Agent
from nubes.cli.main import app
from nubes.client import ApiError, NubesClient
from nubes.hypervisor.base import volume_device
from nubes.hypervisor.fake import FakeHypervisorDriver
from nubes.schemas import resources as s
from nubes.schemas import volumes as sv
from nubes.schemas.quotas import QuotaUpdate
from nubes.storage.disks import disk_info
from tests.cloud import Cloud
from tests.functional.conftest import usage_mismatches


def agent_of(cloud: Cloud, host: str | None) -> Agent:
    return next(a for a, _, _ in cloud.agents if a.host_name == host)


def fake(agent: Agent) -> FakeHypervisorDriver:
    hv = agent.hypervisor
    assert isinstance(hv, FakeHypervisorDriver)
    return hv


def wait_volume(cloud: Cloud, ref: str, status: str) -> sv.Volume:
    def check() -> sv.Volume | None:
        vol = cloud.client.volume(ref)
        if vol.status == "error" and status != "error":
            raise AssertionError(f"volume {ref} went to error: {vol.fault}")
        return vol if vol.status == status else None

    return cloud.wait(check, 30, f"volume {ref} {status}")  # type: ignore[no-any-return]


def boot(cloud: Cloud, name: str, **kw: str) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net", **kw)
    server = cloud.client.create_server(body)
    return cloud.wait_status(server.id, "ACTIVE")  # type: ignore[no-any-return]


def test_a_volume_is_made_attached_moved_and_kept_when_its_server_goes(ready: Cloud) -> None:
    c = ready.client
    web, db = boot(ready, "web"), boot(ready, "db")
    vol = c.create_volume(sv.VolumeCreate(name="data", size_gb=2))
    assert vol.status == "creating" and vol.host == web.host
    vol = wait_volume(ready, "data", "available")
    agent = agent_of(ready, vol.host)
    assert agent.layout.volume(vol.id).exists()  # a real qcow2 on the host
    c.attach_volume("web", "data")
    vol = wait_volume(ready, "data", "in-use")
    assert vol.server == "web"
    assert volume_device(vol.id) in fake(agent).attached_volumes(web.id)
    with pytest.raises(ApiError) as err:  # one server at a time
        c.attach_volume("db", "data")
    assert (err.value.status, err.value.field) == (409, "volume")
    with pytest.raises(ApiError) as err:
        c.delete_volume("data")
    assert (err.value.status, err.value.field) == (409, "volume")
    c.detach_volume("web", "data")
    vol = wait_volume(ready, "data", "available")
    assert fake(agent).attached_volumes(web.id) == set()
    c.attach_volume("db", "data")
    wait_volume(ready, "data", "in-use")
    assert volume_device(vol.id) in fake(agent).attached_volumes(db.id)
    # a stopped and started guest gets it back (a new QEMU has none of its hotplugged disks)
    c.server_action("db", "stop")
    ready.wait_status("db", "SHUTOFF")
    c.server_action("db", "start")
    ready.wait_status("db", "ACTIVE")
    ready.wait(lambda: volume_device(vol.id) in fake(agent).attached_volumes(db.id), 30, "back")
    c.delete_server("db")
    ready.wait(lambda: all(sv_.name != "db" for sv_ in c.servers()), 30, "db gone")
    vol = wait_volume(ready, "data", "available")
    assert vol.server is None and agent.layout.volume(vol.id).exists()  # kept
    c.delete_volume("data")
    ready.wait(lambda: not c.volumes(), 30, "volume gone")
    assert not agent.layout.volume(vol.id).exists()


def test_volume_errors_name_their_field(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    with pytest.raises(ApiError) as err:
        c.request("POST", "/v1/volumes", json={"name": "x", "size_gb": 0})
    assert (err.value.status, err.value.field) == (422, "size_gb")
    with pytest.raises(ApiError) as err:
        c.request("POST", "/v1/volumes", json={"name": "../x", "size_gb": 1})
    assert (err.value.status, err.value.field) == (422, "name")
    with pytest.raises(ApiError) as err:
        c.create_volume(sv.VolumeCreate(name="x", size_gb=1, image="nope"))
    assert (err.value.status, err.value.field) == (404, "image")
    with pytest.raises(ApiError) as err:
        c.create_volume(sv.VolumeCreate(name="x", size_gb=100000 // 50))
    assert (err.value.status, err.value.field) == (409, "size_gb")  # no host has the room
    web = boot(cloud, "web", host="host1")
    other = c.create_volume(sv.VolumeCreate(name="far", size_gb=1, host="host2"))
    assert other.host == "host2"
    wait_volume(cloud, "far", "available")
    with pytest.raises(ApiError) as err:
        c.attach_volume(web.id, "far")
    assert (err.value.status, err.value.field) == (409, "volume")
    assert "host2" in err.value.detail and "host1" in err.value.detail
    with pytest.raises(ApiError) as err:
        c.create_volume(sv.VolumeCreate(name="far", size_gb=1))
    assert (err.value.status, err.value.field) == (409, "name")
    with pytest.raises(ApiError) as err:
        c.detach_volume(web.id, "far")
    assert (err.value.status, err.value.field) == (409, "volume")
    # another project sees none of it
    team = c.create_project(s.ProjectCreate(name="team"))
    with NubesClient(cloud.url, team.token) as member:
        with pytest.raises(ApiError) as err:
            member.volume("far")
        assert err.value.status == 404
        with pytest.raises(ApiError) as err:  # and chooses no host
            member.create_volume(sv.VolumeCreate(name="v", size_gb=1, host="host1"))
        assert (err.value.status, err.value.field) == (403, "host")
        c.set_quotas("team", QuotaUpdate(volumes=1))
        member.create_volume(sv.VolumeCreate(name="v1", size_gb=1))
        with pytest.raises(ApiError) as err:
            member.create_volume(sv.VolumeCreate(name="v2", size_gb=1))
        assert (err.value.status, err.value.field) == (409, "volumes")
        assert "uses 1 of its 1 volumes" in err.value.detail


def test_a_volume_from_an_image_is_a_full_copy(ready: Cloud) -> None:
    vol = ready.client.create_volume(sv.VolumeCreate(name="copy", size_gb=1, image="img"))
    vol = wait_volume(ready, "copy", "available")
    path = agent_of(ready, vol.host).layout.volume(vol.id)
    info = disk_info(path)
    assert info.backing_file is None and info.virtual_size == 1024**3


def _seed_instance_id(agent: Agent, server_id: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(agent.layout.seed(server_id)))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/meta-data")
    finally:
        iso.close()
    meta = out.getvalue().decode()
    return next(
        line.split(":", 1)[1].strip() for line in meta.splitlines() if "instance-id" in line
    )


def test_rebuild_keeps_id_and_addresses_and_changes_the_instance_id(ready: Cloud) -> None:
    web = boot(ready, "web")
    agent = agent_of(ready, web.host)
    assert _seed_instance_id(agent, web.id) == web.id
    disk = agent.layout.disk(web.id)
    disk.write_bytes(disk.read_bytes() + b"old data")  # the old disk's own bytes
    answer = ready.client.rebuild_server("web")
    assert answer.task_state == "rebuilding"
    after = ready.wait_status(web.id, "ACTIVE")
    assert after.id == web.id and after.addresses == web.addresses and after.nics == web.nics
    assert _seed_instance_id(agent, web.id) == f"{web.id}.r1"
    assert not disk.read_bytes().endswith(b"old data")
    assert ("destroy", web.id) in fake(agent).calls  # a new guest on the new disk
    ops = ready.client.operations(server=web.id)
    assert ops[0].kind == "rebuild" and ops[0].status == "done"
    with pytest.raises(ApiError) as err:
        ready.client.rebuild_server("web", image="nope")
    assert (err.value.status, err.value.field) == (404, "image")


def test_resize_is_cold_moves_the_claim_and_refuses_shrinking(ready: Cloud) -> None:
    web = boot(ready, "web")
    agent = agent_of(ready, web.host)
    hv = fake(agent)
    ready.client.resize_server("web", "m1.small")
    after = ready.wait_status(web.id, "ACTIVE")
    assert after.flavor == "m1.small"
    spec = hv.spec(web.id)
    flavor = next(f for f in ready.client.flavors() if f.name == "m1.small")
    assert spec is not None and (spec.vcpus, spec.ram_mb) == (flavor.vcpus, flavor.ram_mb)
    assert ("power_off", web.id) in hv.calls  # cold
    assert disk_info(agent.layout.disk(web.id)).virtual_size == flavor.disk_gb * 1024**3
    assert usage_mismatches(ready) == []
    with pytest.raises(ApiError) as err:
        ready.client.resize_server("web", "m1.tiny")
    assert (err.value.status, err.value.field) == (409, "flavor")
    assert "cannot shrink" in err.value.detail
    with pytest.raises(ApiError) as err:
        ready.client.resize_server("web", "m1.small")
    assert (err.value.status, err.value.field) == (409, "flavor")
    big = s.FlavorCreate(name="huge", vcpus=1, ram_mb=10**6, disk_gb=40)
    ready.client.create_flavor(big)
    with pytest.raises(ApiError) as err:
        ready.client.resize_server("web", "huge")
    assert (err.value.status, err.value.field) == (409, "flavor")
    assert "no room" in err.value.detail
    assert usage_mismatches(ready) == []


def test_a_snapshot_is_an_image_that_boots(ready: Cloud) -> None:
    web = boot(ready, "web")
    image = ready.client.snapshot_server("web", "web-snap")
    assert image.status == "queued"
    done = ready.wait(
        lambda: (i := ready.client.image("web-snap")).status != "queued" and i, 60, "snapshot"
    )
    assert done.status == "active", done.error
    assert done.disk_format == "qcow2" and done.virtual_size > 0
    body = s.ServerCreate(name="copy", image="web-snap", flavor="m1.tiny", network="net")
    copy = ready.client.create_server(body)
    ready.wait_status(copy.id, "ACTIVE")
    ops = ready.client.operations(server=web.id)
    assert any(o.kind == "snapshot" and o.status == "done" for o in ops)
    with pytest.raises(ApiError) as err:
        ready.client.snapshot_server("web", "web-snap")
    assert (err.value.status, err.value.field) == (409, "name")
    # the image of a deleted server's record stays: a 409, never the foreign key's 500
    ready.client.delete_server("copy")
    ready.wait(lambda: len(ready.client.servers()) == 1, 30, "copy gone")
    with pytest.raises(ApiError) as err:
        ready.client.delete("images", "web-snap")
    assert err.value.status == 409 and "deleted servers" in err.value.detail


def test_cli_volume_and_server_lifecycle_commands(ready: Cloud) -> None:
    env = {"NUBES_URL": ready.url, "NUBES_TOKEN": ready.token}
    boot(ready, "web")
    run = CliRunner()
    out = run.invoke(app, ["volume", "create", "data", "--size", "1", "-o", "json"], env=env)
    assert out.exit_code == 0, out.output
    wait_volume(ready, "data", "available")
    out = run.invoke(app, ["server", "add-volume", "web", "data"], env=env)
    assert out.exit_code == 0, out.output
    wait_volume(ready, "data", "in-use")
    out = run.invoke(app, ["volume", "list"], env=env)
    assert out.exit_code == 0 and "data" in out.output
    out = run.invoke(app, ["server", "resize", "web", "--flavor", "m1.tiny"], env=env)
    assert out.exit_code != 0 and "already has flavor" in out.output
    for cmd in ("add-volume", "remove-volume", "snapshot", "rebuild", "resize"):
        helped = run.invoke(app, ["server", cmd, "--help"], env=env)
        assert helped.exit_code == 0 and len(helped.output) > 100
    helped = run.invoke(app, ["volume", "--help"], env=env)
    assert "create" in helped.output and "delete" in helped.output


def test_a_removed_hosts_volumes_are_errors_not_a_500(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud(hosts=2)
    cloud.client.create_volume(sv.VolumeCreate(name="lost", size_gb=1, host="host2"))
    wait_volume(cloud, "lost", "available")
    cloud.stop_agent(agent_of(cloud, "host2"))
    cloud.client.remove_host("host2")
    vol = cloud.client.volume("lost")
    assert (vol.status, vol.host) == ("error", None) and "removed" in vol.fault
    cloud.client.delete_volume("lost")  # on no host: gone at once
    assert cloud.client.volumes() == []


def test_a_hosts_snapshot_upload_is_inspected_as_any_import(ready: Cloud) -> None:
    """A host's upload is untrusted input too: a file that is no qcow2 makes the image `error`,
    and only the host of the server may send it."""
    web = boot(ready, "web")
    agent = agent_of(ready, web.host)
    ready.stop_agent(agent)  # the test plays the host
    image = ready.client.snapshot_server("web", "bad-snap")
    path = f"/v1/agent/hosts/{agent.host_id}/snapshots/{image.id}"
    with NubesClient(ready.url, ready.credentials[agent.host_name]) as host:
        with pytest.raises(ApiError) as err:
            host.request("PUT", path, content=b"not an image at all" * 1000)
        assert err.value.status == 422
    got = ready.client.image("bad-snap")
    assert got.status == "error" and got.error
    assert any(o.kind == "snapshot" and o.status == "failed" for o in ready.client.operations())
