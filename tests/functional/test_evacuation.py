"""`host evacuate` on fake drivers: refusals, the move, fencing, and the fenced host's agent
destroying its stale copies when it comes back."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from nubes.agent.main import build_agent, register_until_up
from nubes.cli.main import app
from nubes.client import NubesClient
from nubes.client.core import ApiError
from nubes.errors import HOST_FENCED
from nubes.schemas import resources as s
from tests.cloud import Cloud


def _server(cloud: Cloud, name: str, host: str) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net", host=host)
    cloud.client.create_server(body)
    return cloud.wait_status(name, "ACTIVE")


def _agent_of(cloud: Cloud, host: str):  # type: ignore[no-untyped-def]
    return next(a for a, _, _ in cloud.agents if a.host_name == host)


def test_evacuating_a_host_that_is_up_is_409_naming_host(make_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(hosts=2)
    _server(cloud, "web1", "host1")
    with pytest.raises(ApiError) as err:
        cloud.client.evacuate_host("host1")
    assert err.value.status == 409 and err.value.field == "host", err.value.detail
    assert "is up" in err.value.detail
    assert cloud.client.server("web1").host == "host1"  # nothing moved, nothing fenced
    assert next(h for h in cloud.client.hosts() if h.name == "host1").enabled
    with pytest.raises(ApiError) as missing:
        cloud.client.evacuate_host("no-such-host")
    assert missing.value.status == 404


def test_the_cli_refuses_without_yes_and_says_the_data_is_lost(make_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(hosts=1)
    env = {"NUBES_URL": cloud.url, "NUBES_TOKEN": cloud.token}
    result = CliRunner().invoke(app, ["host", "evacuate", "host1"], env=env)
    assert result.exit_code != 0
    assert "data" in result.output and "lost" in result.output and "--yes" in result.output


def test_a_down_host_is_fenced_and_its_servers_come_up_elsewhere_once(make_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(hosts=2)
    before = _server(cloud, "web1", "host1")
    old = _agent_of(cloud, "host1")
    fake = old.hypervisor
    cloud.stop_agent(old)  # a partition: its guest keeps running, its heartbeats stop
    assert [i.id for i in fake.list_instances()] == [before.id]
    cloud.wait(
        lambda: next(h for h in cloud.client.hosts() if h.name == "host1").state == "down",
        what="host1 to be down",
    )
    env = {"NUBES_URL": cloud.url, "NUBES_TOKEN": cloud.token}
    result = CliRunner().invoke(app, ["host", "evacuate", "host1", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "fenced" in result.output and before.id in result.output
    after = cloud.wait_status("web1", "ACTIVE")
    assert after.host == "host2" and after.id == before.id
    assert after.addresses == before.addresses and after.nics == before.nics  # same port
    host1 = next(h for h in cloud.client.hosts() if h.name == "host1")
    assert not host1.enabled and host1.instances == 0 and host1.used_ram_mb == 0
    assert host1.fenced and not next(h for h in cloud.client.hosts() if h.name == "host2").fenced

    # the fenced credential: 401 with the type that tells the agent, for every request
    with NubesClient(cloud.url, cloud.credentials["host1"]) as fenced:
        with pytest.raises(ApiError) as beat:
            fenced.heartbeat(host1.id)
    assert beat.value.status == 401 and beat.value.type == HOST_FENCED

    # host1 comes back with its stale guest: its agent destroys it instead of running it
    settings = cloud.settings.model_copy(
        update={"host_name": "host1", "host_address": "10.255.0.11"}
    )
    back = build_agent(settings, NubesClient(cloud.url, cloud.credentials["host1"]))
    back.hypervisor = back.instances.hypervisor = fake
    assert back.layout.instance_dir(before.id).exists()
    stop = threading.Event()
    assert not register_until_up(back, stop)
    assert stop.is_set() and back.fenced
    assert fake.list_instances() == []
    assert not back.layout.instance_dir(before.id).exists()
    assert back.network.list_ports() == []
    # and never two: the one on host2 runs on
    host2 = _agent_of(cloud, "host2").hypervisor
    assert [i.id for i in host2.list_instances()] == [before.id]
    with pytest.raises(ApiError) as kept:  # its credential must stay to tell its agent
        cloud.client.remove_host("host1")
    assert kept.value.status == 409 and "fenced" in kept.value.detail
    cloud.client.remove_host("host1", force=True)  # the machine is gone for good


def test_a_running_agent_that_hears_it_is_fenced_destroys_its_guests(make_cloud) -> None:  # type: ignore[no-untyped-def]
    """The partition heals while the agent still runs: its next request answers fenced."""
    cloud = make_cloud(hosts=2, host_down_after=1.0)
    server = _server(cloud, "web1", "host1")
    agent = _agent_of(cloud, "host1")
    entry = next(e for e in cloud.agents if e[0] is agent)
    # the host goes quiet (its requests stop, its guest runs), is evacuated, then heals
    agent.client, real = NubesClient("http://127.0.0.1:9", ""), agent.client
    cloud.wait(
        lambda: next(h for h in cloud.client.hosts() if h.name == "host1").state == "down",
        what="host1 to be down",
    )
    cloud.client.evacuate_host("host1")
    agent.client = real
    cloud.wait(lambda: entry[1].is_set() and not entry[2][0].is_alive(), what="the agent to stop")
    assert agent.fenced and agent.hypervisor.list_instances() == []
    assert not agent.layout.instance_dir(server.id).exists()
    assert cloud.wait_status("web1", "ACTIVE").host == "host2"
