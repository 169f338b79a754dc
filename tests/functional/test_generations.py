"""Each kind of change moves the generation of exactly the hosts whose desired state it alters,
and no other: an agent's long-poll wakes only for what concerns it."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select

from nubes.db.models import Host
from nubes.schemas import resources as s
from tests.cloud import Cloud

MakeCloud = Callable[..., Cloud]


def generations(cloud: Cloud) -> dict[str, int]:
    """By host name."""
    state = cloud.app.state.nubes
    with state.sessions() as session:
        names = {h: n for h, n in session.execute(select(Host.id, Host.name))}
    return {names[h]: g for h, g in state.read_generations().items()}


def moved(cloud: Cloud, change: Callable[[], object]) -> set[str]:
    """The hosts whose generation `change` moved, once the agents are quiet again."""
    settle(cloud)
    before = generations(cloud)
    change()
    settle(cloud)
    after = generations(cloud)
    return {h for h in after if after[h] != before.get(h)}


def settle(cloud: Cloud) -> None:
    """Agents report what they did, which moves their own host once more: let that pass."""
    time.sleep(4 * cloud.settings.sync_interval)


def create(
    cloud: Cloud, name: str, host: str, network: str = "net", groups: list[str] | None = None
) -> s.Server:
    body = s.ServerCreate(
        name=name,
        image="img",
        flavor="m1.tiny",
        network=network,
        host=host,
        security_groups=groups or [],
    )
    server = cloud.client.create_server(body)
    return cloud.wait_status(server.id, "ACTIVE")


def test_each_change_moves_exactly_its_hosts(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=3)
    c = cloud.client
    c.create_network(s.NetworkCreate(name="other", cidr="10.30.0.0/24"))
    c.create_security_group(s.SecurityGroupCreate(name="plain"))  # no remote-group rule
    a = create(cloud, "a", "host1")  # host1 serves "net" (its first port)
    # a create: its host, and every host of its network (remote ports, the gateway's DHCP)
    assert moved(cloud, lambda: create(cloud, "b", "host2")) == {"host1", "host2"}
    # an action: its host alone
    assert moved(cloud, lambda: c.server_action(a.id, "stop")) == {"host1"}
    # a create on another network, in a group no rule names: its host (which serves it) alone
    assert moved(cloud, lambda: create(cloud, "c", "host3", "other", ["plain"])) == {"host3"}
    # joining `default`, whose ingress rule names itself: the hosts of its members (a, b) too
    assert moved(cloud, lambda: c.add_server_security_group("c", "default")) == {
        "host1",
        "host2",
        "host3",
    }
    # a rule of "plain": the hosts of its members alone
    rule = s.SecurityGroupRuleCreate(direction="ingress", protocol="tcp", port_min=22)
    assert moved(cloud, lambda: c.create_security_group_rule("plain", rule)) == {"host3"}
    # a delete: its host, then the other hosts of its network once its port is gone, and
    # those whose `default` rule named its address (c, on host3)
    b = c.server("b")
    assert moved(cloud, lambda: c.delete_server(b.id)) == {"host1", "host2", "host3"}
    # an address that changes: the host, and those that reach it (peers, remote ports)
    host1 = next(agent for agent, _, _ in cloud.agents if agent.host_name == "host1")
    host1.settings = host1.settings.model_copy(update={"host_address": "10.255.0.99"})
    assert moved(cloud, host1.register) == {"host1"}  # host2 has no port left on "net"
    # a host disabled: in nobody's desired state
    assert moved(cloud, lambda: c.set_host_enabled("host2", False)) == set()
    # `nubes gc`: every host
    assert moved(cloud, lambda: c.gc(repair=True)) == {"host1", "host2", "host3"}


def test_a_network_deleted_moves_its_gateway_host(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(hosts=2)
    c = cloud.client
    c.create_network(s.NetworkCreate(name="other", cidr="10.30.0.0/24"))
    gone = create(cloud, "x", "host2", "other")
    c.delete_server(gone.id)
    cloud.wait(lambda: not c.servers(), what="the delete")
    # host2 keeps serving "other" (bridge, dnsmasq) while it exists: it is told it is gone
    assert moved(cloud, lambda: c.delete("networks", "other")) == {"host2"}
