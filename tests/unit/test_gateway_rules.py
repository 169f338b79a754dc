"""The gateway namespace's table: what guests reach there, egress NAT, floating IPs, and the
hosts' own networks never forwarded to."""

from __future__ import annotations

from nubes.network.base import ExternalSpec, NetworkSpec
from nubes.network.gateway import namespace_script

NET = NetworkSpec(id="n1", bridge="nbrn1", cidr="10.0.0.0/24", gateway="10.0.0.1", vni=5)


def test_without_an_external_network_nothing_is_forwarded() -> None:
    script = namespace_script(NET)
    forward = script[script.index("chain forward") :]
    assert "policy drop;\n  }" in forward
    assert "nat" not in script
    assert 'iifname "gw0" udp dport 67 accept' in script
    assert 'iifname "gw0" ip daddr 169.254.169.254 tcp dport 80 accept' in script


def test_egress_and_floating_ips_are_nat_and_the_underlay_is_off_limits() -> None:
    ext = ExternalSpec(
        uplink="ex0",
        address="198.51.100.2",
        prefix=24,
        gateway="198.51.100.1",
        floating=(("198.51.100.10", "10.0.0.5"),),
        off_limits=("10.255.0.0/24", "10.255.0.11/32", "192.0.2.0/24"),
    )
    script = namespace_script(NetworkSpec(**{**NET.__dict__, "external": ext}))
    lines = [ln.strip() for ln in script.splitlines()]
    drop = 'oifname "qg0" ip daddr { 10.255.0.0/24, 192.0.2.0/24 } drop'
    assert lines.index(drop) < lines.index(
        "ct state established,related accept", lines.index(drop) - 3
    )
    assert 'iifname "gw0" oifname "qg0" ip saddr 10.0.0.0/24 accept' in lines
    assert 'iifname "qg0" oifname "gw0" ct status dnat accept' in lines
    assert 'iifname "qg0" ip daddr 198.51.100.10 dnat ip to 10.0.0.5' in lines
    # the floating IP's own SNAT comes before the network's router address
    fip = lines.index('oifname "qg0" ip saddr 10.0.0.5 snat ip to 198.51.100.10')
    router = lines.index('oifname "qg0" ip saddr 10.0.0.0/24 snat ip to 198.51.100.2')
    assert fip < router
