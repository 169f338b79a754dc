"""The metadata service's answers and its instance lookup (pure functions)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from nubes.agent.metadata import metadata_table
from nubes.metadata import InstanceMeta, answer, lookup
from nubes.metadata.server import MetadataServer, MetadataService
from nubes.schemas.agent import DesiredMetadata, DesiredNetwork

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB user@example"
A = InstanceMeta(
    instance_id="aaaaaaaa-0000-4000-8000-000000000001",
    name="web1",
    hostname="web1",
    ip="10.20.0.5",
    mac="fa:16:3e:00:00:01",
    network_id="net-a",
    prefix=24,
    gateway="10.20.0.1",
    mtu=1450,
    key_name="mykey",
    public_keys=(KEY,),
    user_data="#cloud-config\nruncmd: [true]\n",
    project_id="p1",
)
B = InstanceMeta(
    instance_id="bbbbbbbb-0000-4000-8000-000000000002",
    name="web2",
    hostname="web2",
    ip="10.20.0.6",
    mac="fa:16:3e:00:00:02",
    network_id="net-a",
)
# another tenant's network with the same CIDR
C = InstanceMeta(
    instance_id="cccccccc-0000-4000-8000-000000000003",
    name="other",
    hostname="other",
    ip="10.20.0.5",
    mac="fa:16:3e:00:00:03",
    network_id="net-c",
)
TABLE = {"net-a": {A.ip: A, B.ip: B}, "net-c": {C.ip: C}}


def body(meta: InstanceMeta | None, path: str) -> str:
    result = answer(meta, path)
    assert result.status == 200, (path, result)
    return result.body.decode()


def test_lookup_is_by_network_and_source_address() -> None:
    assert lookup(TABLE, "net-a", "10.20.0.5") is A
    assert lookup(TABLE, "net-a", "10.20.0.6") is B
    assert lookup(TABLE, "net-c", "10.20.0.5") is C  # same address, other network
    assert lookup(TABLE, "net-c", "10.20.0.6") is None
    assert lookup(TABLE, "net-x", "10.20.0.5") is None
    assert lookup(TABLE, "net-a", "not an ip") is None
    assert lookup(TABLE, "net-a", "10.20.0.7") is None


def test_unknown_source_gets_nothing() -> None:
    result = answer(None, "/openstack/latest/meta_data.json")
    assert result.status == 404
    assert b"web1" not in result.body


def test_openstack_meta_data() -> None:
    doc = json.loads(body(A, "/openstack/latest/meta_data.json"))
    assert doc["uuid"] == A.instance_id
    assert doc["name"] == "web1" and doc["hostname"] == "web1"
    assert doc["public_keys"] == {"mykey": KEY}
    assert doc["keys"] == [{"name": "mykey", "type": "ssh", "data": KEY}]
    assert doc["project_id"] == "p1"
    # dated versions answer like latest
    assert json.loads(body(A, "/openstack/2018-08-27/meta_data.json")) == doc


def test_openstack_listings_and_user_data() -> None:
    assert body(A, "/openstack") == "latest\n"
    assert "user_data" in body(A, "/openstack/latest/").split()
    assert "user_data" not in body(B, "/openstack/latest/").split()
    assert body(A, "/openstack/latest/user_data") == A.user_data
    assert answer(B, "/openstack/latest/user_data").status == 404
    net = json.loads(body(A, "/openstack/latest/network_data.json"))
    assert net["networks"][0]["ip_address"] == "10.20.0.5"
    assert net["networks"][0]["netmask"] == "255.255.255.0"
    assert net["links"][0]["ethernet_mac_address"] == A.mac
    assert answer(A, "/openstack/nonsense/meta_data.json").status == 404


def test_ec2_paths() -> None:
    listing = body(A, "/latest/meta-data/").split()
    for entry in ("instance-id", "hostname", "local-hostname", "local-ipv4", "public-keys/"):
        assert entry in listing
    assert body(A, "/latest/meta-data/instance-id") == A.instance_id
    assert body(A, "/latest/meta-data/local-ipv4") == "10.20.0.5"
    assert body(A, "/latest/meta-data/hostname") == "web1"
    assert body(A, "/latest/meta-data/public-keys/") == "0=mykey\n"
    assert body(A, "/latest/meta-data/public-keys/0/") == "openssh-key\n"
    assert body(A, "/latest/meta-data/public-keys/0/openssh-key") == KEY + "\n"
    assert answer(A, "/latest/meta-data/public-keys/1/openssh-key").status == 404
    assert body(A, "/latest/user-data") == A.user_data
    assert body(A, "/2009-04-04/meta-data/instance-id") == A.instance_id
    assert body(A, "/").split() == ["latest", "openstack"]


@pytest.mark.parametrize(
    "path",
    ["/latest/meta-data/../../etc/passwd", "/openstack/latest/../../x", "/nope", "/latest/x"],
)
def test_unknown_paths_are_404(path: str) -> None:
    assert answer(A, path).status == 404


def test_query_strings_change_nothing() -> None:
    assert body(A, "/latest/meta-data/instance-id?instance=" + B.instance_id) == A.instance_id


def test_table_from_desired_state_only_for_served_networks() -> None:
    md = DesiredMetadata(
        instance_id=A.instance_id,
        name="Web_1",
        project_id="p1",
        ip="10.20.0.5",
        mac=A.mac,
        key_name="mykey",
        public_keys=[KEY],
        user_data=None,
    )
    common = dict(cidr="10.20.0.0/24", gateway="10.20.0.1", vni=5, mtu=1450, overlay="vxlan")
    served = DesiredNetwork(
        id="net-a", serve=True, peers=[], reservations=[], metadata=[md], **common
    )
    remote = DesiredNetwork(
        id="net-b", serve=False, peers=[], reservations=[], metadata=[md], **common
    )
    table = metadata_table([served, remote])
    assert set(table) == {"net-a"}
    meta = table["net-a"]["10.20.0.5"]
    assert meta.hostname == "web-1"  # as the seed sanitizes it
    assert meta.prefix == 24 and meta.gateway == "10.20.0.1" and meta.mtu == 1450


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_answers_by_peer_address_not_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real HTTP handler on loopback: forged headers change nothing."""
    import nubes.metadata.server as srv

    service = MetadataService()
    service.set_table({"net-a": {"127.0.0.1": A}})
    monkeypatch.setattr(srv, "METADATA_IP", "127.0.0.1")
    server = MetadataServer(service, port=_free_port())
    try:
        server.serve({"net-a": (None, "lo")})
        if not server.endpoints():
            pytest.skip("cannot bind to a device here (needs CAP_NET_RAW)")
        url = f"http://127.0.0.1:{server.port}/openstack/latest/meta_data.json"
        forged = {
            "X-Forwarded-For": B.ip,
            "X-Instance-ID": B.instance_id,
            "X-Real-IP": B.ip,
            "Host": "169.254.169.254",
        }
        req = urllib.request.Request(url, headers=forged)
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            doc = json.loads(resp.read())
        assert doc["uuid"] == A.instance_id
    finally:
        server.close()
    assert server.endpoints() == {}


def test_server_bounds_concurrent_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    import nubes.metadata.server as srv

    service = MetadataService()
    service.set_table({"net-a": {"127.0.0.1": A}})
    monkeypatch.setattr(srv, "METADATA_IP", "127.0.0.1")
    monkeypatch.setattr(srv._Listener, "max_clients", 1)
    server = MetadataServer(service, port=_free_port())
    try:
        server.serve({"net-a": (None, "lo")})
        if not server.endpoints():
            pytest.skip("cannot bind to a device here (needs CAP_NET_RAW)")
        url = f"http://127.0.0.1:{server.port}/latest/meta-data/instance-id"
        idle = socket.create_connection(("127.0.0.1", server.port))  # holds the only slot
        try:
            time.sleep(0.3)
            with pytest.raises(OSError):
                urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 - loopback
        finally:
            idle.close()
        time.sleep(0.3)
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.read().decode() == A.instance_id
    finally:
        server.close()
