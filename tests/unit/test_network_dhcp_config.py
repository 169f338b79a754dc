"""dnsmasq command line, hostsfile and lease parsing: pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from nubes.errors import InvalidInput
from nubes.network.base import DhcpHost
from nubes.network.dhcp import (
    DhcpConfig,
    build_argv,
    parse_leases,
    paths_for,
    render_hosts,
    world_traversable,
)


def test_argv_golden() -> None:
    cfg = DhcpConfig(
        network_id="net-1",
        interface="nbrnet1",
        cidr="10.20.0.0/24",
        gateway="10.20.0.1",
        mtu=1450,
        dns=("9.9.9.9", "1.1.1.1"),
    )
    paths = paths_for(Path("/st"), "net-1")
    assert build_argv(cfg, paths, "nobody") == [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--interface=nbrnet1",
        "--except-interface=lo",
        "--user=nobody",
        "--pid-file=/st/dhcp/net-1/dnsmasq.pid",
        "--log-facility=/st/dhcp/net-1/dnsmasq.log",
        "--dhcp-leasefile=/st/dhcp/net-1/leases",
        "--dhcp-hostsfile=/st/dhcp/net-1/hosts",
        "--dhcp-range=10.20.0.0,static,255.255.255.0,12h",
        "--dhcp-authoritative",
        "--dhcp-option=option:router,10.20.0.1",
        "--dhcp-option=option:mtu,1450",
        "--dhcp-option=option:dns-server,9.9.9.9,1.1.1.1",
    ]


def test_argv_without_dns_sends_no_dns_option() -> None:
    cfg = DhcpConfig("n", "nbrn", "192.168.7.0/26", "192.168.7.1")
    argv = build_argv(cfg, paths_for(Path("/st"), "n"), "root", binary="/usr/sbin/dnsmasq")
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert "--dhcp-range=192.168.7.0,static,255.255.255.192,12h" in argv
    assert not any("dns-server" in a for a in argv)


def test_hostsfile_is_sorted_lowercase_and_validated() -> None:
    hosts = (
        DhcpHost("52:54:00:00:00:0B", "10.20.0.11", "i-b"),
        DhcpHost("52:54:00:00:00:0a", "10.20.0.10", "i-a"),
    )
    assert (
        render_hosts(hosts)
        == "52:54:00:00:00:0a,10.20.0.10,i-a\n52:54:00:00:00:0b,10.20.0.11,i-b\n"
    )
    assert render_hosts(()) == ""


@pytest.mark.parametrize(
    "host",
    [
        DhcpHost("52:54:00:00:00", "10.0.0.1", "ok"),
        DhcpHost("52:54:00:00:00:01", "10.0.0.1", "bad name"),
        DhcpHost("52:54:00:00:00:01", "10.0.0.1", "x,y"),
        DhcpHost("52:54:00:00:00:01", "10.0.0.1", "-x"),
    ],
)
def test_hostsfile_rejects_what_dnsmasq_would_misread(host: DhcpHost) -> None:
    with pytest.raises(InvalidInput):
        render_hosts((host,))


def test_bad_ip_in_reservation() -> None:
    with pytest.raises(ValueError):
        render_hosts((DhcpHost("52:54:00:00:00:01", "10.0.0.256", "x"),))


@pytest.mark.parametrize("network_id", ["../etc", "a/b", "", "x" * 65, ".hidden"])
def test_network_ids_never_escape_the_state_dir(network_id: str) -> None:
    with pytest.raises(InvalidInput):
        paths_for(Path("/st"), network_id)


def test_parse_leases() -> None:
    text = (
        "1700000000 52:54:00:00:00:0a 10.20.0.10 i-a 01:52:54:00:00:00:0a\n"
        "1700000001 52:54:00:00:00:0B 10.20.0.11 * *\n"
        "duid 00:01:00:01:2c:aa\n"
        "\n"
    )
    assert parse_leases(text) == [
        ("52:54:00:00:00:0a", "10.20.0.10"),
        ("52:54:00:00:00:0b", "10.20.0.11"),
    ]


def test_world_traversable(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir(mode=0o700)
    assert not world_traversable(d)
    assert world_traversable(Path("/"))
