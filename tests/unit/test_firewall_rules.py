"""The nftables scripts are pure text: check them without touching any firewall."""

from __future__ import annotations

import pytest

from nubes.errors import DriverError
from nubes.network import firewall


def test_scripts_touch_only_our_tables() -> None:
    scripts = [
        firewall.guard_script("nbrx"),
        firewall.guard_remove_script("nbrx"),
        firewall.port_script("tapx", "52:54:00:00:00:01", "10.0.0.5"),
        firewall.port_remove_script("tapx"),
    ]
    for script in scripts:
        for line in script.splitlines():
            words = line.split()
            if words and words[0] in ("add", "flush", "delete"):
                assert words[2:4] in (["inet", "nubes"], ["bridge", "nubes"]), line
            assert "flush ruleset" not in line
            assert "flush table" not in line


@pytest.mark.parametrize("name", ['eth0" accept', "eth 0", "", "a" * 16, "eth0;flush"])
def test_interface_names_cannot_escape_their_quotes(name: str) -> None:
    with pytest.raises(DriverError):
        firewall.guard_script(name)


def test_guard_lets_guests_reach_dhcp_icmp_and_metadata_only() -> None:
    script = firewall.guard_script("nbrx")
    rules = [ln for ln in script.splitlines() if ln.startswith("add rule inet nubes input")]
    assert rules == [
        'add rule inet nubes input iifname "nbr*" fib daddr . iif type != '
        "{ local, broadcast, multicast } drop",
        'add rule inet nubes input iifname "nbr*" ct state established,related accept',
        'add rule inet nubes input iifname "nbr*" udp dport 67 accept',
        'add rule inet nubes input iifname "nbr*" meta l4proto { icmp, ipv6-icmp } accept',
        'add rule inet nubes input iifname "nbr*" ip daddr 169.254.169.254 tcp dport 80 accept',
        'add rule inet nubes input iifname "nbr*" drop',
    ]
    assert "flush chain inet nubes input\n" in script


def test_guard_stops_routing_to_other_bridges_but_not_bridging() -> None:
    script = firewall.guard_script("nbrx")
    # bridged traffic crosses `forward` too when br_netfilter is on: it must go through
    assert 'add rule inet nubes fwd_nbrx oifname "nbrx" return\n' in script
    assert 'add rule inet nubes fwd_nbrx oifname "nbr*" drop\n' in script
    assert script.count("add rule inet nubes forward iifname vmap @fwd_bridges") == 1
    removal = firewall.guard_remove_script("nbrx")
    assert removal.endswith("delete chain inet nubes fwd_nbrx\n")


def test_port_rules_pin_mac_and_ip() -> None:
    rules = firewall.port_rules("52:54:00:AB:CD:EF", "10.20.0.5")
    assert rules[0] == "ether saddr != 52:54:00:ab:cd:ef drop"
    assert "ether type arp arp saddr ether != 52:54:00:ab:cd:ef drop" in rules
    assert "ether type arp arp saddr ip != { 0.0.0.0, 10.20.0.5 } drop" in rules
    assert "ether type ip ip saddr != 10.20.0.5 drop" in rules
    assert "ether type ip6 icmpv6 type nd-router-advert drop" in rules
    assert "ether type ip udp sport 67 drop" in rules
    assert rules[-1] == "drop"
    # a DHCP request from 0.0.0.0 passes before the source check drops it
    dhcp = rules.index(
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept"
    )
    assert dhcp < rules.index("ether type ip ip saddr != 10.20.0.5 drop")
    # no rogue DHCP server even from the right address
    assert rules.index("ether type ip udp sport 67 drop") < dhcp


def test_port_script_is_one_chain_reached_through_the_ports_map() -> None:
    script = firewall.port_script("tap0123456789a", "52:54:00:00:00:01", "10.20.0.5")
    assert script.startswith("table bridge nubes {")
    assert "type filter hook prerouting priority -200; policy accept;" in script
    assert "flush chain bridge nubes port_tap0123456789a\n" in script
    assert script.count("add rule bridge nubes port_tap0123456789a ") == len(
        firewall.port_rules("52:54:00:00:00:01", "10.20.0.5")
    )
    assert script.rstrip().endswith(
        'add element bridge nubes ports { "tap0123456789a" : jump port_tap0123456789a }'
    )


@pytest.mark.parametrize(
    ("mac", "ip"), [("52:54:00:00:00", "10.0.0.1"), ("zz:54:00:00:00:01", "10.0.0.1")]
)
def test_port_rules_reject_bad_macs(mac: str, ip: str) -> None:
    with pytest.raises(DriverError):
        firewall.port_rules(mac, ip)


def test_port_rules_reject_bad_ips() -> None:
    with pytest.raises(ValueError):
        firewall.port_rules("52:54:00:00:00:01", "10.0.0.300")


def test_delete_tables_names_only_present_families() -> None:
    assert firewall.delete_tables_script([]) == ""
    assert firewall.delete_tables_script(["inet", "bridge"]) == (
        "delete table inet nubes\ndelete table bridge nubes\n"
    )


def test_allowed_address_pairs_widen_the_port_rules_without_overlaps() -> None:
    rules = firewall.port_rules(
        "52:54:00:00:00:01",
        "10.20.0.5",
        (("10.20.0.0/25", None), ("10.20.0.9", "02:00:00:00:00:09")),
    )
    # the port's own address falls inside the pair's range: one interval, as nft needs
    assert "ether type ip ip saddr != 10.20.0.0/25 drop" in rules
    assert rules[0] == "ether saddr != { 52:54:00:00:00:01, 02:00:00:00:00:09 } drop"
    assert "ether type arp arp saddr ip != { 0.0.0.0, 10.20.0.0/25 } drop" in rules
    with pytest.raises(DriverError):
        firewall.port_rules("52:54:00:00:00:01", "10.20.0.5", (("10.1.0.0/24", "bad"),))
