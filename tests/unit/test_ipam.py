"""IPAM: lowest free address in small networks, next-fit by index probes in large ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from nubes.db import ipam
from nubes.db.models import Base, Flavor, Image, Instance, Network, Port, Project


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s


def network(session: Session, cidr: str) -> tuple[Network, Instance]:
    project = Project(name="p")
    session.add(project)
    session.flush()
    net = Network(
        project_id=project.id, name=cidr, cidr=cidr, gateway=ipam.gateway_for(cidr), vni=len(cidr)
    )
    image = Image(project_id=project.id, name="i", disk_format="raw")
    flavor = Flavor(name="f", vcpus=1, ram_mb=64, disk_gb=1)
    session.add_all([net, image, flavor])
    session.flush()
    inst = Instance(
        project_id=project.id,
        name="x",
        image_id=image.id,
        flavor_id=flavor.id,
        vcpus=1,
        ram_mb=64,
        disk_gb=1,
    )
    session.add(inst)
    session.flush()
    return net, inst


def take(session: Session, net: Network, inst: Instance) -> Port:
    port = Port(
        network_id=net.id,
        instance_id=inst.id,
        mac=ipam.allocate_mac(session),
        ip=ipam.allocate_ip(session, net),
    )
    session.add(port)
    session.flush()
    return port


def test_small_network_reuses_the_lowest_free_address(session: Session) -> None:
    net, inst = network(session, "10.1.0.0/24")
    ports = [take(session, net, inst) for _ in range(5)]
    assert [p.ip for p in ports] == [f"10.1.0.{i}" for i in range(2, 7)]
    session.delete(ports[1])
    session.flush()
    assert take(session, net, inst).ip == "10.1.0.3"


def test_large_network_allocates_next_fit_without_reading_every_port(session: Session) -> None:
    net, inst = network(session, "10.2.0.0/20")
    ips = [take(session, net, inst).ip for _ in range(300)]
    assert len(set(ips)) == 300 and "10.2.0.1" not in ips  # never the gateway
    assert ips[:3] == ["10.2.0.2", "10.2.0.3", "10.2.0.4"]
    ipam._hint.pop(net.id)  # another process: its hint starts at the bottom, probes, then scans
    assert take(session, net, inst).ip == "10.2.1.46"


def test_full_network_is_a_clear_conflict(session: Session) -> None:
    net, inst = network(session, "10.3.0.0/29")  # 6 hosts, one the gateway
    for _ in range(5):
        take(session, net, inst)
    with pytest.raises(ipam.Conflict, match="no free addresses"):
        ipam.allocate_ip(session, net)
