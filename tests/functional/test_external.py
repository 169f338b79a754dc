"""The external network through the API: an admin declares it, tenant networks get a router
address on it, floating IPs are held, associated and released, and the serving host is told."""

from __future__ import annotations

import pytest

from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s
from tests.cloud import Cloud

PUBLIC = s.NetworkCreate(
    name="public", cidr="198.51.100.0/24", external=True, uplink="ex0", gateway="198.51.100.1"
)


def test_egress_and_floating_ips_reach_the_serving_host(ready: Cloud) -> None:
    c = ready.client
    public = c.create_network(PUBLIC)
    assert public.external and public.uplink == "ex0" and public.gateway == "198.51.100.1"
    server = c.create_server(s.ServerCreate(name="a", image="img", flavor="m1.tiny", network="net"))
    assert c.network("net").router_ip == "198.51.100.2"  # its router, given at the first server
    ready.wait_status("a", "ACTIVE")
    fip = c.create_floating_ip(s.FloatingIpCreate(server="a"))
    assert (fip.address, fip.server, fip.fixed_ip) == ("198.51.100.3", "a", server.nics[0].ip)

    def external() -> object:
        agent = ready.agents[0][0]
        nets = [n for n in agent._latest.networks if n.serve] if agent._latest else []  # type: ignore[union-attr]
        return nets[0].external if nets else None

    ready.wait(
        lambda: (
            external() is not None and [f.address for f in external().floating] == [fip.address]
        ),  # type: ignore[attr-defined]
        what="the floating IP on the serving host",
    )
    ext = external()
    assert (ext.uplink, ext.address, ext.gateway, ext.prefix) == (
        "ex0",
        "198.51.100.2",
        "198.51.100.1",
        24,
    )  # type: ignore[attr-defined]
    c.disassociate_floating_ip(fip.address)
    ready.wait(lambda: external().floating == [], what="the NAT to go")  # type: ignore[attr-defined]
    assert [x.server for x in c.floating_ips()] == [None]
    c.associate_floating_ip(fip.address, "a")
    c.delete_server("a")
    ready.wait(lambda: not c.servers(), what="a deleted")
    assert [x.server for x in c.floating_ips()] == [None]  # kept by the project, unassociated
    c.delete_floating_ip(fip.address)
    assert c.floating_ips() == []


def test_external_network_rules(ready: Cloud) -> None:
    c = ready.client
    member = NubesClient(ready.url, c.create_project(s.ProjectCreate(name="m")).token)
    try:
        with pytest.raises(ApiError) as err:
            member.create_network(PUBLIC)
        assert err.value.status == 403 and err.value.field == "external"
        with pytest.raises(ApiError) as err:
            c.create_network(s.NetworkCreate(name="p2", cidr="198.51.101.0/24", external=True))
        assert err.value.status == 422 and err.value.field == "uplink"
        with pytest.raises(ApiError) as err:  # no external network yet
            member.create_floating_ip(s.FloatingIpCreate())
        assert err.value.status == 409
        c.create_network(PUBLIC)
        assert [n.name for n in member.networks()] == ["public"]  # everyone sees it
        with pytest.raises(ApiError) as err:  # tenants keep off its range
            member.create_network(s.NetworkCreate(name="x", cidr="198.51.100.0/25"))
        assert err.value.status == 422 and err.value.field == "cidr"
        with pytest.raises(ApiError) as err:  # servers do not go on it
            c.create_server(
                s.ServerCreate(name="x", image="img", flavor="m1.tiny", network="public")
            )
        assert err.value.status == 422 and "floating IP" in err.value.detail
        with pytest.raises(ApiError) as err:
            member.associate_floating_ip("198.51.100.77", "nope")
        assert err.value.status == 404
    finally:
        member.close()


def test_quota_of_floating_ips_and_networks(tmp_path: object) -> None:
    from pathlib import Path

    cloud = Cloud(Path(str(tmp_path)), hosts=0, quota_floating_ips=1, quota_networks=1)
    try:
        cloud.client.create_network(PUBLIC)
        cloud.client.create_network(s.NetworkCreate(name="n1", cidr="10.40.0.0/24"))
        with pytest.raises(ApiError) as err:
            cloud.client.create_network(s.NetworkCreate(name="n2", cidr="10.41.0.0/24"))
        assert err.value.status == 409 and err.value.field == "networks"
        cloud.client.create_floating_ip(s.FloatingIpCreate())
        with pytest.raises(ApiError) as err:
            cloud.client.create_floating_ip(s.FloatingIpCreate())
        assert err.value.status == 409 and err.value.field == "floating_ips"
    finally:
        cloud.close()
