"""Records that never cost a disk: a damaged agent record keeps the instance as it is, and an
agent destroys only what its own cloud's API says is deleted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from nubes.agent import records
from nubes.agent.agent import Agent
from nubes.hypervisor.fake import FakeHypervisorDriver
from nubes.schemas import resources as s
from nubes.schemas.agent import DesiredState
from tests.cloud import Cloud


def _add_field(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "disk_bus": "scsi"}))


def _newer(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 2}))


def _empty(path: Path) -> None:
    path.write_text("")


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:25])


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "unknown-field": (_add_field, "unknown field disk_bus"),
    "newer-version": (_newer, "written by a newer agent (version 2 > 1)"),
    "empty": (_empty, "empty"),
    "truncated": (_truncate, "truncated or invalid JSON"),
    "missing": (lambda p: p.unlink(), "missing"),
}


def boot(cloud: Cloud) -> tuple[s.Server, Agent, FakeHypervisorDriver]:
    body = dict(name="web1", image="img", flavor="m1.tiny", network="net")
    server = cloud.client.create_server(s.ServerCreate(**body))  # type: ignore[arg-type]
    cloud.wait_status(server.id, "ACTIVE")
    agent = cloud.agents[0][0]
    assert isinstance(agent.hypervisor, FakeHypervisorDriver)
    return server, agent, agent.hypervisor


def restart_with_damage(
    cloud: Cloud, agent: Agent, server_id: str, case: str, crash: bool = False
) -> Agent:
    """Stop the agent, damage the record (and, with `crash`, the guest), start a new agent on
    the same host."""
    fake = agent.hypervisor
    assert isinstance(fake, FakeHypervisorDriver)
    cloud.stop_agent(agent)
    if crash:
        fake.crash(server_id)
    DAMAGE[case][0](agent.layout.record(server_id))
    fake.calls.clear()
    return cloud.start_agent("host1", "10.255.0.11", hypervisor=fake)


def assert_kept(cloud: Cloud, agent: Agent, server_id: str, why: str, action: str) -> None:
    fault = f"agent record agent.json {why}: kept the disk, {action}"
    server = cloud.wait(
        lambda: (x := cloud.client.server(server_id)).fault.startswith(fault) and x,
        what=f"the fault {fault!r}",
    )
    assert server.status == "ACTIVE"
    loaded = agent.layout.load_state(server_id)  # repaired: current format, nothing damaged
    assert loaded.damage == "" and loaded.state.built and loaded.state.running_expected
    assert json.loads(agent.layout.record(server_id).read_text())["version"] == records.VERSION


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_record_adopts_the_running_guest(ready: Cloud, case: str) -> None:
    server, agent, fake = boot(ready)
    disk = agent.layout.disk(server.id)
    inode, boots = disk.stat().st_ino, fake.boots(server.id)
    marker = agent.layout.instance_dir(server.id) / "marker"  # a teardown would remove it
    marker.touch()
    new = restart_with_damage(ready, agent, server.id, case)
    assert_kept(ready, new, server.id, DAMAGE[case][1], "adopted the running guest")
    assert disk.stat().st_ino == inode and marker.exists()
    assert fake.boots(server.id) == boots and ("destroy", server.id) not in fake.calls
    if case != "missing":  # what could not be understood is kept for a look (or a newer agent)
        assert list(agent.layout.instance_dir(server.id).glob("agent.json.damaged-*"))


@pytest.mark.parametrize("case", ["truncated", "newer-version"])
def test_damaged_record_restarts_a_stopped_guest_from_its_disk(ready: Cloud, case: str) -> None:
    server, agent, fake = boot(ready)
    disk = agent.layout.disk(server.id)
    inode, boots = disk.stat().st_ino, fake.boots(server.id)
    new = restart_with_damage(ready, agent, server.id, case, crash=True)
    assert_kept(ready, new, server.id, DAMAGE[case][1], "restarted the guest from its disk")
    assert disk.stat().st_ino == inode and fake.boots(server.id) == boots + 1
    spec = fake.spec(server.id)
    assert spec is not None and spec.disk == disk and ("destroy", server.id) not in fake.calls


def test_fault_is_cleared_by_the_users_next_reboot(ready: Cloud) -> None:
    server, agent, _ = boot(ready)
    new = restart_with_damage(ready, agent, server.id, "empty")
    assert_kept(ready, new, server.id, "empty", "adopted the running guest")
    ready.client.server_action(server.id, "reboot")
    ready.wait(lambda: not ready.client.server(server.id).fault, what="the fault to clear")


def quiet(cloud: Cloud) -> tuple[Agent, DesiredState]:
    """The agent's loop stopped; its last desired state, to hand it variants by hand."""
    agent = cloud.agents[0][0]
    cloud.stop_agent(agent)
    desired = agent.client.desired(agent.host_id, -1, 0)
    assert desired is not None
    return agent, desired


def assert_nothing_destroyed(agent: Agent, server_id: str) -> None:
    fake = agent.hypervisor
    assert isinstance(fake, FakeHypervisorDriver)
    assert ("destroy", server_id) not in fake.calls
    assert agent.layout.disk(server_id).exists() and fake.info(server_id).state.value == "running"
    assert agent.network.list_ports() and agent.network.list_networks()


def test_empty_desired_state_destroys_nothing(ready: Cloud) -> None:
    server, _, _ = boot(ready)
    agent, desired = quiet(ready)
    empty = desired.model_copy(update={"instances": [], "networks": []})
    for _ in range(3):
        report = agent.converge(empty)
    assert_nothing_destroyed(agent, server.id)
    assert f"instance {server.id}" in report.leftovers  # reported, for `nubes gc` to remove


def test_desired_state_of_another_cloud_is_refused(ready: Cloud) -> None:
    server, _, _ = boot(ready)
    agent, desired = quiet(ready)
    mine = desired.cloud_id
    deleted = [i.model_copy(update={"desired_state": "deleted"}) for i in desired.instances]
    for foreign in (
        desired.model_copy(update={"cloud_id": "0123456789abcdef", "instances": []}),
        desired.model_copy(update={"cloud_id": "0123456789abcdef", "instances": deleted}),
        desired.model_copy(update={"cloud_id": "", "instances": deleted}),
    ):
        report = agent.converge(foreign)
        assert report.instances == [] and report.leftovers[0].startswith("error: ")
    assert (
        "this host belongs to cloud " + mine
        in agent.converge(desired.model_copy(update={"cloud_id": "0123456789abcdef"})).leftovers[0]
    )
    assert_nothing_destroyed(agent, server.id)
    assert agent.converge(desired).leftovers == []  # its own cloud's is still acted on


def test_cloud_id_is_remembered_private_and_stable(ready: Cloud) -> None:
    boot(ready)
    agent, desired = quiet(ready)
    path = agent.layout.cloud
    assert json.loads(path.read_text())["cloud_id"] == desired.cloud_id != ""
    assert path.stat().st_mode & 0o777 == 0o600
    again = agent.client.desired(agent.host_id, -1, 0)
    assert again.cloud_id == desired.cloud_id


def test_gc_removes_a_leftover_instance_only_when_asked(ready: Cloud) -> None:
    server, agent, fake = boot(ready)
    with ready.app.state.nubes.sessions() as session:  # the API forgets it (a restore, say)
        from nubes.db.models import Host, Instance

        session.get(Instance, server.id).host_id = None  # type: ignore[union-attr]
        session.get(Host, agent.host_id).generation -= 1  # type: ignore[union-attr]
        session.commit()
    left = {"host1": [f"instance {server.id}"]}
    ready.wait(lambda: ready.client.gc(repair=False).hosts.get("host1", [])[:1] == left["host1"])
    assert ("destroy", server.id) not in fake.calls and agent.layout.disk(server.id).exists()
    ready.client.gc(repair=True)
    ready.wait(lambda: not agent.layout.instance_dir(server.id).exists(), what="gc")
    ready.wait(lambda: ready.client.gc(repair=False).hosts == {"host1": []}, what="no leftovers")


def test_instance_deleted_while_its_host_was_down_is_torn_down_on_return(ready: Cloud) -> None:
    server, agent, fake = boot(ready)
    ready.stop_agent(agent)
    ready.wait(lambda: ready.client.hosts()[0].state == "down", what="host1 down")
    ready.client.delete_server(server.id)  # the API lets go at once: the host gets a tombstone
    ready.wait(lambda: not ready.client.servers(), what="the delete")
    new = ready.start_agent("host1", "10.255.0.11", hypervisor=fake)
    ready.wait(lambda: not new.layout.instance_dir(server.id).exists(), what="the teardown")
    assert ("destroy", server.id) in fake.calls and fake.list_instances() == []
    ready.wait(lambda: ready.client.gc(repair=False).hosts == {"host1": []}, what="no leftovers")
