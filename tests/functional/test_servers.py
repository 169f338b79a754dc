"""API + scheduler + agent in one process on fake drivers."""

from __future__ import annotations

from typer.testing import CliRunner

from nubes.cli.main import app
from nubes.schemas import resources as s
from tests.cloud import Cloud


def create(cloud: Cloud, name: str, **kw: str) -> s.Server:
    body = dict(name=name, image="img", flavor="m1.tiny", network="net")
    body.update(kw)
    return cloud.client.create_server(s.ServerCreate(**body))  # type: ignore[arg-type]


def test_create_reaches_active_with_address(ready: Cloud) -> None:
    server = create(ready, "web1")
    assert server.status == "BUILD"
    active = ready.wait_status("web1", "ACTIVE")
    assert active.host == "host1"
    assert active.addresses["net"] == ["10.20.0.2"]
    second = create(ready, "web2")
    assert ready.wait_status(second.id, "ACTIVE").addresses["net"] == ["10.20.0.3"]
    host = ready.client.hosts()[0]
    assert host.used_ram_mb == 2 * 256 and host.instances == 2


def test_delete_frees_address_and_usage(ready: Cloud) -> None:
    server = create(ready, "web1")
    ready.wait_status(server.id, "ACTIVE")
    agent = ready.agents[0][0]
    assert (agent.layout.instance_dir(server.id) / "disk.qcow2").exists()
    ready.client.delete_server("web1")

    def gone() -> bool:
        return not ready.client.servers()

    ready.wait(gone, what="server to be deleted")
    assert not agent.layout.instance_dir(server.id).exists()
    assert agent.hypervisor.list_instances() == []
    assert agent.network.list_ports() == []
    host = ready.client.hosts()[0]
    assert (host.used_vcpus, host.used_ram_mb, host.used_disk_gb, host.instances) == (0, 0, 0, 0)
    again = create(ready, "web1")  # the name and the address are free again
    assert ready.wait_status(again.id, "ACTIVE").addresses["net"] == ["10.20.0.2"]


def test_stop_start_reboot(ready: Cloud) -> None:
    server = create(ready, "web1")
    ready.wait_status(server.id, "ACTIVE")
    ready.client.server_action("web1", "stop")
    ready.wait_status("web1", "SHUTOFF")
    ready.client.server_action("web1", "start")
    ready.wait_status("web1", "ACTIVE")
    fake = ready.agents[0][0].hypervisor
    boots = fake.boots(server.id)  # type: ignore[attr-defined]
    ready.client.server_action("web1", "reboot", hard=True)
    ready.wait(lambda: fake.boots(server.id) > boots, what="reboot")  # type: ignore[attr-defined]
    ready.wait_status("web1", "ACTIVE")


def test_spawn_failure_is_error_and_leaves_nothing(ready: Cloud) -> None:
    agent = ready.agents[0][0]
    agent.hypervisor.fail_spawn("*")  # type: ignore[attr-defined]
    server = create(ready, "bad")
    failed = ready.wait_status(server.id, "ERROR")
    assert failed.fault
    assert not agent.layout.instance_dir(server.id).exists()
    assert agent.network.list_ports() == []
    ready.client.delete_server("bad")
    ready.wait(lambda: not ready.client.servers(), what="delete of the failed server")


def test_guest_dying_is_reported_shutoff_with_reason(ready: Cloud) -> None:
    server = create(ready, "web1")
    ready.wait_status(server.id, "ACTIVE")
    fake = ready.agents[0][0].hypervisor
    fake.crash(server.id, "QEMU process exited")  # type: ignore[attr-defined]
    stopped = ready.wait_status("web1", "SHUTOFF")
    assert "exited" in stopped.fault


def test_agent_restart_keeps_guest(ready: Cloud) -> None:
    server = create(ready, "web1")
    ready.wait_status(server.id, "ACTIVE")
    agent = ready.agents[0][0]
    fake = agent.hypervisor
    boots = fake.boots(server.id)  # type: ignore[attr-defined]
    ready.stop_agent(agent)
    new = ready.start_agent("host1")
    new.hypervisor = fake  # the same "host": its guests live on
    new.instances.hypervisor = fake
    ready.wait_status("web1", "ACTIVE")
    assert fake.boots(server.id) == boots  # type: ignore[attr-defined]


def test_idempotency_key_replays_and_conflicts(ready: Cloud) -> None:
    http = ready.client._http
    body = {"name": "idem", "image": "img", "flavor": "m1.tiny", "network": "net"}
    first = http.post("/v1/servers", json=body, headers={"Idempotency-Key": "k1"})
    again = http.post("/v1/servers", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert len(ready.client.servers()) == 1
    other = dict(body, name="idem2")
    clash = http.post("/v1/servers", json=other, headers={"Idempotency-Key": "k1"})
    assert clash.status_code == 409 and clash.json()["field"] == "Idempotency-Key"
    assert len(ready.client.servers()) == 1


def test_delete_twice_and_delete_while_building(ready: Cloud) -> None:
    server = create(ready, "fleeting")
    ready.client.delete_server(server.id)  # most likely still BUILD
    ready.client.delete_server(server.id)  # again, before the host let go: still fine
    ready.wait(lambda: not ready.client.servers(), what="delete")
    agent = ready.agents[0][0]
    assert agent.hypervisor.list_instances() == []
    assert list(agent.layout.instances.iterdir()) == []
    gone = ready.client._http.delete(f"/v1/servers/{server.id}")
    assert gone.status_code == 404


def test_cli_deletes_several_and_reports_the_one_it_could_not(ready: Cloud) -> None:
    for name in ("a", "b"):
        ready.wait_status(create(ready, name).id, "ACTIVE")
    env = {"NUBES_URL": ready.url, "NUBES_TOKEN": ready.token}
    out = CliRunner().invoke(app, ["server", "delete", "a", "nope", "b", "--wait"], env=env)
    assert out.exit_code == 1, out.output
    assert "error: server 'nope' not found" in out.output
    assert "deleted server a" in out.output and "deleted server b" in out.output
    assert "1 of 3 servers could not be deleted" in out.output
    assert ready.client.servers() == []  # --wait: both gone by the time it answered
