"""A server's NICs: several networks, asked-for addresses and MACs, port security and allowed
address pairs, from the API down to what the host's network driver is told."""

from __future__ import annotations

import pytest

from nubes.client import ApiError
from nubes.network.fake import FakeNetworkDriver
from nubes.schemas import resources as s
from tests.cloud import Cloud


def nic(network: str, ip: str | None = None, mac: str | None = None) -> s.NicRequest:
    return s.NicRequest(network=network, ip=ip, mac=mac)


def create(cloud: Cloud, name: str, *nics: s.NicRequest, **kw: object) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", networks=list(nics), **kw)  # type: ignore[arg-type]
    return cloud.client.create_server(body)


def ports_on_host(cloud: Cloud) -> dict[str, object]:
    driver = cloud.agents[0][0].network
    assert isinstance(driver, FakeNetworkDriver)
    return {p.spec.ip: p.spec for p in driver.state.ports.values()}


def test_fixed_address_fixed_mac_and_two_nics(ready: Cloud) -> None:
    ready.client.create_network(s.NetworkCreate(name="db", cidr="10.21.0.0/24"))
    server = create(ready, "a", nic("net", "10.20.0.50", "52:54:00:00:00:01"), nic("db"))
    assert [(n.network, n.ip, n.mac) for n in server.nics] == [
        ("net", "10.20.0.50", "52:54:00:00:00:01"),
        ("db", "10.21.0.2", server.nics[1].mac),
    ]
    assert server.addresses == {"net": ["10.20.0.50"], "db": ["10.21.0.2"]}
    ready.wait_status("a", "ACTIVE")
    # the host plugs both, in order, with their own MACs; the guest's seed names both
    ports = ports_on_host(ready)
    assert set(ports) == {"10.20.0.50", "10.21.0.2"}
    want = ready.agents[0][0]._latest.instances[0]  # type: ignore[union-attr]
    assert [(p.ip, p.primary) for p in want.ports] == [("10.20.0.50", True), ("10.21.0.2", False)]
    # the asked-for address is taken now: 409 naming the NIC's field
    with pytest.raises(ApiError) as err:
        create(ready, "b", nic("net", "10.20.0.50"))
    assert err.value.status == 409 and err.value.field == "networks[0].ip"
    with pytest.raises(ApiError) as err:
        create(ready, "b", nic("db"), nic("net", mac="52:54:00:00:00:01"))
    assert err.value.status == 409 and err.value.field == "networks[1].mac"
    assert [x.name for x in ready.client.servers()] == ["a"]  # nothing half-made


@pytest.mark.parametrize(
    ("ip", "mac", "field", "says"),
    [
        ("10.99.0.5", None, "networks[0].ip", "outside"),
        ("10.20.0.1", None, "networks[0].ip", "gateway"),
        ("10.20.0.0", None, "networks[0].ip", "not a host address"),
        ("10.20.0.255", None, "networks[0].ip", "not a host address"),
        ("10.20.0.500", None, "networks[0].ip", "not an IPv4 address"),
        (None, "01:00:5e:00:00:01", "networks[0].mac", "multicast"),
        (None, "52:54:00:zz:00:01", "networks[0].mac", "not a MAC"),
    ],
)
def test_bad_fixed_addresses_are_refused_naming_the_field(
    ready: Cloud, ip: str | None, mac: str | None, field: str, says: str
) -> None:
    with pytest.raises(ApiError) as err:
        create(ready, "x", nic("net", ip, mac))
    assert err.value.status == 422 and err.value.field == field
    assert says in err.value.detail
    assert ready.client.servers() == []


def test_network_or_networks_but_one_of_them(ready: Cloud) -> None:
    with pytest.raises(ApiError) as err:
        ready.client.create_server(
            s.ServerCreate(
                name="x", image="img", flavor="m1.tiny", network="net", networks=[nic("net")]
            )
        )
    assert err.value.status == 422 and err.value.field == "networks"
    with pytest.raises(ApiError) as err:
        ready.client.create_server(s.ServerCreate(name="x", image="img", flavor="m1.tiny"))
    assert err.value.status == 422 and err.value.field == "networks"


def test_port_security_off_and_allowed_address_pairs_reach_the_host(ready: Cloud) -> None:
    create(ready, "open", nic("net"), port_security=False)
    pairs = [s.AllowedAddress(ip="10.20.0.128/25", mac="02:00:00:00:00:09")]
    create(ready, "pairs", nic("net"), allowed_addresses=pairs)
    ready.wait_status("open", "ACTIVE")
    ready.wait_status("pairs", "ACTIVE")
    by_name = {x.name: x for x in ready.client.servers()}
    assert by_name["open"].nics[0].port_security is False
    assert by_name["pairs"].nics[0].allowed_addresses == pairs
    ports = ports_on_host(ready)
    spec_open = ports[by_name["open"].nics[0].ip]
    spec_pairs = ports[by_name["pairs"].nics[0].ip]
    assert spec_open.port_security is False  # type: ignore[attr-defined]
    assert spec_pairs.allowed == (("10.20.0.128/25", "02:00:00:00:00:09"),)  # type: ignore[attr-defined]
    with pytest.raises(ApiError) as err:
        create(ready, "bad", nic("net"), allowed_addresses=[s.AllowedAddress(ip="10.20.0.999")])
    assert err.value.status == 422 and err.value.field == "allowed_addresses[0].ip"


def test_a_network_without_port_security_gives_its_ports_none(ready: Cloud) -> None:
    net = ready.client.create_network(
        s.NetworkCreate(name="lab", cidr="10.22.0.0/24", port_security=False)
    )
    assert net.port_security is False
    server = create(ready, "n1", nic("lab"))
    assert server.nics[0].port_security is False
