"""Networks across hosts on fake drivers: what each host's agent is told (peers, remote ports,
who serves the gateway), the gateway moving off a host that is disabled, down or empty, and
the Geneve/VXLAN choice from what the hosts report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.client import ApiError, NubesClient
from nubes.network.fake import FakeNetworkDriver
from nubes.schemas import agent as a
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image
from tests.functional.conftest import upload


@pytest.fixture
def cloud3(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=3)
    try:
        upload(c.client, "img", make_image(tmp_path / "img.qcow2"))
        c.client.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
        yield c
    finally:
        c.close()


WAIT = 60  # seconds; generous: CI machines are shared and slow


def create_on(cloud: Cloud, name: str, host: str) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net", host=host)
    server = cloud.client.create_server(body)
    return cloud.wait_status(server.id, "ACTIVE", WAIT)


def desired_net(cloud: Cloud, host: str) -> a.DesiredNetwork | None:
    host_id = next(h.id for h in cloud.client.hosts() if h.name == host)
    nets = cloud.client.desired(host_id, -1, 0).networks
    return nets[0] if nets else None


def spec_on(cloud: Cloud, host: str) -> FakeNetworkDriver:
    agent = next(ag for ag, _, _ in cloud.agents if ag.host_name == host)
    assert isinstance(agent.network, FakeNetworkDriver)
    return agent.network


def test_each_host_is_told_its_peers_and_where_every_port_is(cloud3: Cloud) -> None:
    a1 = create_on(cloud3, "a1", "host1")
    a2 = create_on(cloud3, "a2", "host2")
    assert cloud3.client.network("net").gateway_host == "host1"  # the first port's host
    macs = {}
    for server in (a1, a2):
        port = spec_on(cloud3, server.host or "").list_ports()[0]
        macs[server.name] = port.mac
    d1, d2 = desired_net(cloud3, "host1"), desired_net(cloud3, "host2")
    assert desired_net(cloud3, "host3") is None  # no port there: no bridge, no overlay
    assert d1 is not None and d2 is not None
    assert (d1.serve, d1.peers, d1.gateway_host) == (True, ["10.255.0.12"], "")
    assert (d2.serve, d2.peers, d2.gateway_host) == (False, ["10.255.0.11"], "10.255.0.11")
    assert [(r.mac, r.address) for r in d1.remote_ports] == [(macs["a2"], "10.255.0.12")]
    assert [(r.mac, r.address) for r in d2.remote_ports] == [(macs["a1"], "10.255.0.11")]
    assert d2.reservations == [] and {r.mac for r in d1.reservations} == set(macs.values())

    def agent_spec_has_a2() -> bool:
        spec = spec_on(cloud3, "host1").state.networks.get(d1.id)
        return spec is not None and [(r.mac, r.underlay_ip) for r in spec.remote_ports] == [
            (macs["a2"], "10.255.0.12")
        ]

    cloud3.wait(agent_spec_has_a2, WAIT, what="host1's driver to get a2's forwarding entry")
    spec2 = spec_on(cloud3, "host2").state.networks[d2.id]
    assert spec2.gateway_underlay_ip == "10.255.0.11" and not spec2.serve_dhcp

    # a2 leaves host2: host2 drops the network, host1 its peer
    cloud3.client.delete_server("a2")
    cloud3.wait(lambda: not spec_on(cloud3, "host2").list_networks(), WAIT, what="host2 to let go")

    def host1_forgot_a2() -> bool:
        # a2's port goes when the API handles host2's DELETED report, just after host2 let go
        d1 = desired_net(cloud3, "host1")
        return d1 is not None and (d1.peers, d1.remote_ports) == ([], [])

    cloud3.wait(host1_forgot_a2, WAIT, what="host1's desired state to drop a2's host and port")


def test_gateway_moves_off_a_disabled_host_and_stays(cloud3: Cloud) -> None:
    create_on(cloud3, "a1", "host1")
    create_on(cloud3, "a2", "host2")
    net_id = cloud3.client.network("net").id
    cloud3.client.set_host_enabled("host1", False)
    cloud3.wait(lambda: cloud3.client.network("net").gateway_host == "host2", WAIT, what="move")
    cloud3.wait(
        lambda: spec_on(cloud3, "host2").state.networks[net_id].serve_dhcp,
        WAIT,
        what="host2 serving",
    )
    cloud3.wait(
        lambda: not spec_on(cloud3, "host1").state.networks[net_id].serve_dhcp,
        WAIT,
        what="host1 to stop serving",
    )
    assert spec_on(cloud3, "host1").state.networks[net_id].gateway_underlay_ip == "10.255.0.12"
    cloud3.client.set_host_enabled("host1", True)
    assert cloud3.client.network("net").gateway_host == "host2"  # no flapping back


def test_gateway_moves_off_a_down_host(cloud3: Cloud) -> None:
    create_on(cloud3, "a1", "host1")
    create_on(cloud3, "a3", "host3")
    agent1 = next(ag for ag, _, _ in cloud3.agents if ag.host_name == "host1")
    cloud3.stop_agent(agent1)
    cloud3.wait(lambda: cloud3.client.network("net").gateway_host == "host3", WAIT, "move")
    assert {h.name: h.state for h in cloud3.client.hosts()}["host1"] == "down"
    assert {x.name for x in cloud3.client.servers()} == {"a1", "a3"}  # nothing was deleted
    with pytest.raises(ApiError, match="host is down"):
        body = s.ServerCreate(name="b", image="img", flavor="m1.tiny", network="net", host="host1")
        cloud3.client.create_server(body)


def test_gateway_follows_the_ports_when_its_host_has_none_left(cloud3: Cloud) -> None:
    create_on(cloud3, "a1", "host1")
    create_on(cloud3, "a2", "host2")
    cloud3.client.delete_server("a1")
    cloud3.wait(lambda: cloud3.client.network("net").gateway_host == "host2", WAIT, what="move")
    cloud3.wait(lambda: not spec_on(cloud3, "host1").list_networks(), WAIT, what="host1 to let go")


def test_geneve_only_where_every_host_has_it(cloud3: Cloud) -> None:
    with pytest.raises(ApiError) as err:
        cloud3.client.create_network(s.NetworkCreate(name="g", cidr="10.30.0.0/24", type="geneve"))
    assert err.value.status == 422 and err.value.field == "type"
    assert "host1, host2, host3 has no Geneve" in err.value.detail
    assert "--type vxlan" in err.value.detail
    net = cloud3.client.create_network(s.NetworkCreate(name="d", cidr="10.31.0.0/24"))
    assert net.type == "vxlan" and "no Geneve" in net.note
    plain = cloud3.client.create_network(
        s.NetworkCreate(name="v", cidr="10.32.0.0/24", type="vxlan")
    )
    assert plain.type == "vxlan" and plain.note == ""


def test_geneve_by_default_when_every_host_has_it(tmp_path: Path) -> None:
    c = Cloud(tmp_path, hosts=0)
    try:
        for i in (1, 2):
            c.client.register_host(
                a.HostRegister(
                    name=f"g{i}",
                    accel="tcg",
                    state_dir="/x",
                    vcpus=1,
                    ram_mb=1,
                    disk_gb=1,
                    overlays="vxlan,geneve",
                )  # fmt: skip
            )
        net = c.client.create_network(s.NetworkCreate(name="d", cidr="10.31.0.0/24"))
        assert (net.type, net.note) == ("geneve", "")
    finally:
        c.close()


def test_one_host_serves_two_networks_of_the_same_addresses(cloud3: Cloud) -> None:
    """Two tenants pick 10.20.0.0/24 and land on one host: it serves both gateways (each in a
    namespace of its own there)."""
    create_on(cloud3, "a1", "host1")
    assert cloud3.client.network("net").gateway_host == "host1"
    created = cloud3.client.create_project(s.ProjectCreate(name="other"))
    b = NubesClient(cloud3.url, created.token)
    try:
        b.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))  # the same range
        upload(b, "img", make_image(cloud3.root / "b.qcow2"))
        cloud3.client.set_host_enabled("host2", False)
        cloud3.client.set_host_enabled("host3", False)
        body = s.ServerCreate(name="b1", image="img", flavor="m1.tiny", network="net")
        assert b.create_server(body).host == "host1"
        assert b.network("net").gateway_host == "host1"
        spec = spec_on(cloud3, "host1").state.networks
        cloud3.wait(lambda: len(spec) == 2, WAIT, what="host1 to carry both networks")
        assert [n.serve_dhcp for n in spec.values()] == [True, True]
        assert len({n.cidr for n in spec.values()}) == 1
    finally:
        b.close()


def test_tenant_networks_keep_off_the_hosts_own_networks(cloud3: Cloud) -> None:
    """A host registers the ranges it has addresses in; a member's network over any of them
    (or over link-local, or the API machine's) is refused, naming cidr; a range next to
    them is fine."""
    c = cloud3
    c.client.register_host(
        a.HostRegister(
            name="ul",
            address="10.255.0.11",
            accel="tcg",
            state_dir="/x",
            vcpus=1,
            ram_mb=1,
            disk_gb=1,
            networks="10.255.0.0/24,192.168.77.0/24",
        )  # fmt: skip
    )
    member = NubesClient(c.url, c.client.create_project(s.ProjectCreate(name="m")).token)
    try:
        from nubes.control.netranges import api_ranges

        api_side = [str(n) for n in api_ranges() if n.prefixlen >= 16]
        for cidr in ["10.255.0.8/29", "10.255.0.0/16", "192.168.77.0/24", *api_side[:1]]:
            with pytest.raises(ApiError) as err:
                member.create_network(s.NetworkCreate(name="x", cidr=cidr))
            assert err.value.status == 422 and err.value.field == "cidr", cidr
            assert "overlaps" in err.value.detail
        with pytest.raises(ApiError) as err:
            member.create_network(s.NetworkCreate(name="x", cidr="169.254.0.0/24"))
        assert err.value.status == 422 and err.value.field == "cidr"
        assert member.create_network(s.NetworkCreate(name="x", cidr="10.254.1.0/24")).id
    finally:
        member.close()


def test_floating_ip_follows_the_gateway_when_it_moves(cloud3: Cloud) -> None:
    """The 1:1 NAT lives where the network's gateway is: when that host goes down, the host
    that takes the gateway over serves the floating IP (and the network's egress)."""
    cloud3.client.create_network(
        s.NetworkCreate(
            name="public",
            cidr="198.51.100.0/24",
            external=True,
            uplink="ex0",
            gateway="198.51.100.1",
        )  # fmt: skip
    )
    a1 = create_on(cloud3, "a1", "host1")
    create_on(cloud3, "a2", "host2")
    fip = cloud3.client.create_floating_ip(s.FloatingIpCreate(server="a1")).address
    assert cloud3.client.network("net").gateway_host == "host1"

    def floating_on(host: str) -> list[tuple[str, str]]:
        spec = spec_on(cloud3, host).state.networks.get(cloud3.client.network("net").id)
        if spec is None or spec.external is None:
            return []
        return list(spec.external.floating)

    cloud3.wait(lambda: floating_on("host1") == [(fip, a1.nics[0].ip)], WAIT, what="on host1")
    agent1 = next(ag for ag, _, _ in cloud3.agents if ag.host_name == "host1")
    cloud3.stop_agent(agent1)
    cloud3.wait(lambda: cloud3.client.network("net").gateway_host == "host2", WAIT, what="move")
    cloud3.wait(lambda: floating_on("host2") == [(fip, a1.nics[0].ip)], WAIT, what="on host2")
