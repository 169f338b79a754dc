"""The security groups' nftables scripts of the Linux bridge driver, as text: group frames
(broadcast, multicast) meet the ingress rules of the port they leave by (issue 11)."""

from __future__ import annotations

import pytest

from nubes.errors import DriverError
from nubes.network import secgroups
from nubes.network.secgroups import Rule

RULES = (
    Rule("egress"),
    Rule("ingress", "udp", 5000, 5001, ("10.20.0.0/24",)),
    Rule("ingress", "tcp", 22, 22),
    Rule("ingress", remotes=()),  # an empty group: nothing
)


def test_group_frames_go_to_the_output_ports_chain() -> None:
    script = secgroups.bridge_script("nbrx", 42)
    assert (
        "add rule bridge nubes sg_groups_fwd ether type ip "
        "ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 oifname vmap @sg_groups\n"
    ) in script
    assert "chain sg_groups_fwd { type filter hook forward priority filter; policy accept; }" in (
        script
    )


def test_a_ports_group_chain_holds_its_ingress_rules_and_dhcp_replies() -> None:
    script = secgroups.port_script("nbrx", "tap1", "10.20.0.5", RULES)
    chain = [
        line.split(" sgg_tap1 ", 1)[1]
        for line in script.splitlines()
        if line.startswith("add rule bridge nubes sgg_tap1 ")
    ]
    assert chain == [
        "udp sport 67 udp dport 68 accept",
        "ip saddr { 10.20.0.0/24 } meta l4proto udp th dport 5000-5001 accept",
        "meta l4proto tcp th dport 22 accept",
        "drop",
    ]
    flush = script.index("flush chain bridge nubes sgg_tap1")
    assert flush < script.index("add rule bridge nubes sgg_tap1 ")
    assert 'add element bridge nubes sg_groups { "tap1" : jump sgg_tap1 }' in script


def test_removing_a_port_removes_its_group_chain_present_or_not() -> None:
    for script in (
        secgroups.port_remove_script("nbrx", "tap1", "10.20.0.5"),
        secgroups.group_remove_script("tap1"),
    ):
        lines = script.splitlines()
        add = lines.index('add element bridge nubes sg_groups { "tap1" : jump sgg_tap1 }')
        assert lines[add + 1 :][:3] == [
            'delete element bridge nubes sg_groups { "tap1" }',
            "flush chain bridge nubes sgg_tap1",
            "delete chain bridge nubes sgg_tap1",
        ]


def test_a_bad_tap_name_never_reaches_a_script() -> None:
    with pytest.raises(DriverError):
        secgroups.group_script('tap1" }', RULES)


def test_the_bridge_tables_skeleton_brings_the_group_hook_back() -> None:
    """Whenever the driver makes its bridge table anew (first plug, lost table), the hook that
    sends group frames to the ports' chains comes with it."""
    from nubes.network import firewall

    assert secgroups.group_skeleton() in firewall.bridge_skeleton()
    assert firewall.port_script("tap1", "52:54:00:00:00:01", "10.0.0.5").startswith(
        firewall.bridge_skeleton()
    )
