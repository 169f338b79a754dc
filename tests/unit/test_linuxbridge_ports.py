"""Which links the Linux bridge driver takes for ports: a VM's tap and a container's veth
alike (a veth left out was never listed, so its security groups were never brought up to date
after its plug and its rules never removed at its unplug)."""

from __future__ import annotations

import pytest

from nubes.network.linuxbridge import PORT_ALIAS, _port_alias
from nubes.network.netlink import Link

ALIAS = f"{PORT_ALIAS}0b5c-port 52:54:00:00:00:01 10.0.0.5"


def link(kind: str, alias: str | None = ALIAS) -> Link:
    return Link(7, "tap0b5c", kind, 1450, None, 3, True, True, alias)


@pytest.mark.parametrize("kind", ["tun", "veth"])
def test_taps_and_veths_with_our_alias_are_ports(kind: str) -> None:
    port = _port_alias(link(kind))
    assert port is not None and (port.mac, port.ip, port.secured) == (
        "52:54:00:00:00:01",
        "10.0.0.5",
        True,
    )


@pytest.mark.parametrize(
    ("kind", "alias"), [("bridge", ALIAS), ("vxlan", ALIAS), ("veth", None), ("veth", "other")]
)
def test_other_links_are_not(kind: str, alias: str | None) -> None:
    assert _port_alias(link(kind, alias)) is None
