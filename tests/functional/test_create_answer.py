"""A create's answer is built from the rows it wrote, without reading them back
(control/compute.py: `Placed.wire`): it must be exactly what a read of the server shows."""

from __future__ import annotations

from nubes.schemas import resources as s
from tests.cloud import Cloud


def test_a_creates_answer_is_what_a_read_shows(ready: Cloud) -> None:
    c = ready.client
    c.create_network(s.NetworkCreate(name="second", cidr="10.21.0.0/24"))
    c.create_security_group(s.SecurityGroupCreate(name="web"))
    c.create_security_group(s.SecurityGroupCreate(name="app"))
    c.create_keypair(s.KeypairCreate(name="key"))
    c.create_group(s.GroupCreate(name="spread", policy="soft-anti-affinity"))
    body = s.ServerCreate(
        name="full",
        image="img",
        flavor="m1.tiny",
        # the fixed address first on the second NIC: ports are made in another order than shown
        networks=[
            s.NicRequest(network="net"),
            s.NicRequest(network="second", ip="10.21.0.50", mac="52:54:00:12:34:56"),
        ],
        allowed_addresses=[s.AllowedAddress(ip="10.20.0.0/28")],
        security_groups=["web", "app", "default"],
        key_name="key",
        group="spread",
    )
    made = c.create_server(body)
    assert made == c.server(made.id)
    assert [n.network for n in made.nics] == ["net", "second"]
    assert made.nics[1].ip == "10.21.0.50" and made.security_groups == ["app", "default", "web"]
    assert made.group == "spread" and made.key_name == "key" and made.host is not None
    # the plainest create too (the project's default group, one network)
    plain = c.create_server(
        s.ServerCreate(name="plain", image="img", flavor="m1.tiny", network="net")
    )
    assert plain == c.server(plain.id) and plain.security_groups == ["default"]
