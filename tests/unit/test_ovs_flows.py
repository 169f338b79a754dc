"""Pure builders of the OVS driver: br-int's flow table, the daemons' argv, OVSDB snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nubes.hypervisor.base import NicSpec
from nubes.hypervisor.qemu import cmdline
from nubes.network import openflow
from nubes.network.openflow import OfPort
from nubes.network.ovs import of_ports, parse_snapshot, tunnel_name
from nubes.network.ovs_daemons import OvsPaths, server_argv, vswitchd_argv
from nubes.network.secgroups import Rule

MAC = "52:54:00:0a:00:01"


def test_an_instance_port_lets_in_only_its_own_mac_and_address() -> None:
    c = openflow.cookie("tap1")
    flows = openflow.port_flows(OfPort("tap1", 7, mac=MAC, ip="10.20.0.5", vlan=3))
    to_egress = "load:3->NXM_NX_REG6[],ct(table=10,zone=NXM_NX_REG6[0..15])"
    assert flows[:7] == [
        f"cookie={c:#x},table=0,priority=60,in_port=7,udp,tp_src=67,actions=drop",
        f"cookie={c:#x},table=0,priority=60,in_port=7,icmp6,icmp_type=134,actions=drop",
        f"cookie={c:#x},table=0,priority=60,in_port=7,udp6,tp_src=547,actions=drop",
        f"cookie={c:#x},table=0,priority=50,in_port=7,udp,dl_src={MAC},nw_src=0.0.0.0,"
        "tp_src=68,tp_dst=67,actions=load:3->NXM_NX_REG6[],ct(table=20,zone=NXM_NX_REG6[0..15])",
        f"cookie={c:#x},table=0,priority=50,in_port=7,ip,dl_src={MAC},nw_src=10.20.0.5,"
        f"actions={to_egress}",
        f"cookie={c:#x},table=0,priority=50,in_port=7,arp,dl_src={MAC},arp_sha={MAC},"
        "arp_spa=10.20.0.5,actions=NORMAL",
        # IPv6 from its MAC, as on the Linux bridge: link-local sources are not known to us
        f"cookie={c:#x},table=0,priority=50,in_port=7,ipv6,dl_src={MAC},actions=NORMAL",
    ]
    # no rule: DHCP and metadata out, DHCP replies in, nothing else either way
    assert flows[7:] == [
        f"cookie={c:#x},table=10,priority=60,ct_state=+new+trk,in_port=7,udp,tp_dst=67,"
        "actions=resubmit(,20)",
        f"cookie={c:#x},table=10,priority=60,ct_state=+new+trk,in_port=7,tcp,"
        "nw_dst=169.254.169.254,tp_dst=80,actions=resubmit(,20)",
        f"cookie={c:#x},table=10,priority=1,in_port=7,actions=drop",
        # its copy of a broadcast or multicast: what its rules let in (here DHCP replies)
        f"cookie={c:#x},table=40,priority=100,ct_state=+est+trk,reg7=7,actions=output:7",
        f"cookie={c:#x},table=40,priority=100,ct_state=+rel+trk,reg7=7,actions=output:7",
        f"cookie={c:#x},table=40,priority=60,reg7=7,udp,tp_src=67,tp_dst=68,actions=output:7",
        f"cookie={c:#x},table=20,priority=60,reg6=3,dl_dst={MAC},udp,tp_src=67,tp_dst=68,"
        "actions=ct(commit,zone=NXM_NX_REG6[0..15]),NORMAL",
        f"cookie={c:#x},table=20,priority=40,reg6=3,dl_dst={MAC},actions=drop",
    ]


def test_security_group_rules_become_conntrack_flows() -> None:
    rules = (
        Rule("egress"),
        Rule("ingress", "tcp", 22, 22, ("10.0.0.0/8",)),
        Rule("ingress", "udp", 1000, 1003),
        Rule("ingress", "icmp", remotes=()),  # an empty group: matches nothing
    )
    flows = openflow.sg_flows(OfPort("tap1", 7, mac=MAC, ip="10.20.0.5", vlan=3, rules=rules))
    tails = [f.split(",", 2)[2] for f in flows]
    commit = "actions=ct(commit,zone=NXM_NX_REG6[0..15]),NORMAL"
    assert (
        f"priority=50,ct_state=+new+trk,reg6=3,dl_dst={MAC},tcp,tp_dst=22,nw_src=10.0.0.0/8,{commit}"
        in tails
    )
    assert (
        f"priority=50,ct_state=+new+trk,reg6=3,dl_dst={MAC},udp,tp_dst=0x3e8/0xfffc,{commit}"
        in tails
    )
    assert "priority=50,ct_state=+new+trk,in_port=7,ip,actions=resubmit(,20)" in tails
    assert not [t for t in tails if "icmp" in t]


def test_port_ranges_are_exact_masks() -> None:
    assert openflow.port_ranges(22, 22) == ["22"]
    assert openflow.port_ranges(1000, 1003) == ["0x3e8/0xfffc"]
    assert openflow.port_ranges(1, 65535)[0] == "1" and len(openflow.port_ranges(1, 65535)) == 16
    covered = set()
    for m in openflow.port_ranges(1000, 2000):
        value, _, mask = m.partition("/")
        v, k = int(value, 0), int(mask or "0xffff", 16)
        covered |= {p for p in range(65536) if p & k == v}
    assert covered == set(range(1000, 2001))


def test_rules_round_trip_through_external_ids() -> None:
    rules = (
        Rule("egress"),
        Rule("ingress", "tcp", 22, 22, ("10.0.0.0/8",)),
        Rule("ingress", remotes=()),
    )
    assert openflow.decode_rules(openflow.encode_rules(rules)) == rules


def test_allowed_address_pairs_and_port_security_off() -> None:
    port = OfPort(
        "tap1",
        7,
        mac=MAC,
        ip="10.20.0.5",
        allowed=(("10.9.0.0/24", None), ("10.8.0.1/32", "02:00:00:00:00:09")),
    )
    flows = openflow.port_flows(port)
    assert any(f"dl_src={MAC},nw_src=10.9.0.0/24" in f for f in flows)
    assert any("dl_src=02:00:00:00:00:09,nw_src=10.8.0.1/32" in f for f in flows)
    assert any("arp_sha=02:00:00:00:00:09,arp_spa=10.8.0.1/32" in f for f in flows)
    assert any("dl_dst=02:00:00:00:00:09,actions=drop" in f for f in flows)  # its ingress too
    off = openflow.port_flows(OfPort("tap1", 7, mac=MAC, ip="10.20.0.5", secured=False, vlan=2))
    c = openflow.cookie("tap1")
    assert off == [
        f"cookie={c:#x},table=0,priority=10,in_port=7,actions=NORMAL",
        f"cookie={c:#x},table=0,priority=11,in_port=7,ip,"
        "actions=load:2->NXM_NX_REG6[],ct(table=20,zone=NXM_NX_REG6[0..15])",
        f"cookie={c:#x},table=40,priority=10,reg7=7,actions=output:7",
    ]


def test_the_table_drops_unknown_ports_and_skips_unopened_ones() -> None:
    text = openflow.table(
        [OfPort("nt1", 3, trusted=True), OfPort("tap2", -1, mac=MAC, ip="10.0.0.2")]
    )
    lines = text.splitlines()
    assert lines[0] == "cookie=0x0,table=0,priority=0,actions=drop"
    ours = [x for x in lines if x.startswith(f"cookie={openflow.cookie('nt1'):#x},")]
    assert len(ours) == 3 and all("in_port=3," in x or "reg7=3," in x for x in ours)
    flood = f"cookie={openflow.vlan_cookie(0):#x},table=30,priority=10,reg6=0,"
    assert lines[-1] == flood + "actions=load:3->NXM_NX_REG7[],resubmit(,40)"
    assert len(lines) == len(openflow.SHARED) + 4


def test_each_port_has_its_own_cookie() -> None:
    assert openflow.cookie("tap1") != openflow.cookie("tap2")
    assert 0 < openflow.cookie("tap1") < 2**63


def test_a_bad_address_never_becomes_a_flow() -> None:
    with pytest.raises(ValueError):
        openflow.port_flows(OfPort("tap1", 7, mac=MAC, ip="10.20.0.5,actions=NORMAL"))
    with pytest.raises(ValueError):
        openflow.port_flows(OfPort("tap1", 7, mac=MAC + ",actions=drop", ip="10.20.0.5"))


def test_nubes_port_ids_round_trip() -> None:
    ids = "port-1 52:54:00:0a:00:01 10.20.0.5 off 10.9.0.0/24@- 10.8.0.1/32@02:00:00:00:00:09"
    assert openflow.parse_port_ids(ids) == (
        "port-1", MAC, "10.20.0.5", False,
        (("10.9.0.0/24", None), ("10.8.0.1/32", "02:00:00:00:00:09")),
    )  # fmt: skip


def test_daemons_argv_use_their_own_paths() -> None:
    p = OvsPaths(Path("/s/ovs"))
    assert server_argv(p)[:3] == ["ovsdb-server", "/s/ovs/conf.db", "--remote=punix:/s/ovs/db.sock"]
    assert vswitchd_argv(p, kernel=False)[-1] == "--disable-system"
    assert "--disable-system" not in vswitchd_argv(p, kernel=True)
    assert p.env()["OVS_RUNDIR"] == "/s/ovs"


def test_snapshot_parsing_and_our_ports() -> None:
    ports = {
        "headings": ["name", "tag", "external_ids"],
        "data": [
            ["br-int", ["set", []], ["map", []]],
            ["nt1", 2, ["map", [["nubes-net", "net-a"], ["nubes-peer", "10.0.0.2"]]]],
            ["tap1", 2, ["map", [["nubes-net", "net-a"], ["nubes-port", f"p1 {MAC} 10.20.0.5"]]]],
        ],
    }
    ifaces = {"headings": ["name", "ofport"], "data": [["br-int", 65534], ["nt1", 1], ["tap1", 2]]}
    rows = parse_snapshot(json.dumps(ports) + "\n" + json.dumps(ifaces) + "\n")
    assert [(r.name, r.tag, r.ofport) for r in rows] == [
        ("br-int", None, 65534), ("nt1", 2, 1), ("tap1", 2, 2),
    ]  # fmt: skip
    assert of_ports(rows) == [
        OfPort("nt1", 1, trusted=True, vlan=2, tunnel=True),
        OfPort("tap1", 2, mac=MAC, ip="10.20.0.5", vlan=2),
    ]


def test_tunnel_names_fit_and_differ() -> None:
    a, b = tunnel_name("net-a", "10.0.0.2"), tunnel_name("net-a", "10.0.0.3")
    assert a != b and len(a) <= 15


def test_qemu_nic_offloads_off_only_when_asked() -> None:
    on = cmdline._nic(0, NicSpec("tap1", MAC, 1450))
    off = cmdline._nic(0, NicSpec("tap1", MAC, 1450, offloads=False))
    assert "csum=off" not in on[-1]
    assert off[-1].endswith(
        ",host_mtu=1450,csum=off,gso=off,host_tso4=off,host_tso6=off,host_ufo=off"
    )


def test_group_frames_go_to_each_port_through_its_own_check() -> None:
    """IPv4 broadcast and multicast: never NORMAL's flood, a copy per port of the VLAN through
    that port's ingress check (issue 11)."""
    rules = (Rule("ingress", "udp", 5000, 5000), Rule("ingress", "tcp", 22, 22, ("10.0.0.0/8",)))
    guest = OfPort("tap1", 7, mac=MAC, ip="10.20.0.5", vlan=3, rules=rules)
    tunnel = OfPort("nt1", 4, trusted=True, vlan=3, tunnel=True)
    gateway = OfPort("nvg1", 5, trusted=True, vlan=3)
    other_net = OfPort("tap2", 9, mac="52:54:00:0a:00:02", ip="10.20.0.5", vlan=8)
    lines = openflow.table([guest, tunnel, gateway, other_net]).splitlines()
    assert (
        "cookie=0x0,table=20,priority=110,ip,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,"
        "actions=resubmit(,30)" in lines
    )
    # above table 20's established and invalid flows: a group frame always takes its copies
    others = [x for x in lines if ",table=20," in x and "dl_dst=01:" not in x]
    assert others and all(int(x.split("priority=")[1].split(",")[0]) < 110 for x in others)
    # per network, one flow with its VLAN's cookie: each port's number into reg7, its check
    each = "load:{}->NXM_NX_REG7[],resubmit(,40)"
    assert (
        f"cookie={openflow.vlan_cookie(3):#x},table=30,priority=10,reg6=3,actions="
        + ",".join(each.format(n) for n in (4, 5, 7))  # by name: nt1, nvg1, tap1
    ) in lines
    assert (
        f"cookie={openflow.vlan_cookie(8):#x},table=30,priority=10,reg6=8,actions=" + each.format(9)
    ) in lines
    port_in = [x.split(",", 1)[1] for x in lines if ",table=40," in x]
    # the guest's copy: its ingress rules (without a commit: nothing answers from a group address)
    assert "table=40,priority=50,ct_state=+new+trk,reg7=7,udp,tp_dst=5000,actions=output:7" in (
        port_in
    )
    assert (
        "table=40,priority=50,ct_state=+new+trk,reg7=7,tcp,tp_dst=22,nw_src=10.0.0.0/8,"
        "actions=output:7" in port_in
    )
    assert "table=40,priority=60,reg7=7,udp,tp_src=67,tp_dst=68,actions=output:7" in port_in
    assert "table=40,priority=0,actions=drop" in port_in  # anything else
    assert "table=40,priority=150,ct_state=+inv+trk,actions=drop" in port_in
    # trusted ports unfiltered; a tunnel only what came from no tunnel (split horizon)
    assert "table=40,priority=10,reg7=5,actions=output:5" in port_in
    assert "table=40,priority=10,reg7=4,reg5=0,actions=output:4" in port_in
    assert not [x for x in port_in if "reg7=4," in x and "reg5=0" not in x]
    tunnel_in = [x for x in lines if "table=0," in x and "in_port=4,ip," in x]
    assert tunnel_in == [
        f"cookie={openflow.cookie('nt1'):#x},table=0,priority=11,in_port=4,ip,actions="
        "load:1->NXM_NX_REG5[],load:3->NXM_NX_REG6[],ct(table=20,zone=NXM_NX_REG6[0..15])"
    ]
    gw_in = [x for x in lines if "table=0," in x and "in_port=5,ip," in x]
    assert gw_in and "REG5" not in gw_in[0]


def test_flood_flows_follow_the_ports_of_each_vlan() -> None:
    a = OfPort("tapa", 7, mac=MAC, ip="10.20.0.5", vlan=3)
    b = OfPort("tapb", 8, mac=MAC, ip="10.20.0.6", vlan=3)
    unopened = OfPort("tapc", -1, mac=MAC, ip="10.20.0.7", vlan=3)
    assert openflow.flood_flows([]) == {}
    one, two = openflow.flood_flows([a, unopened]), openflow.flood_flows([b, a])
    assert set(one) == set(two) == {3}
    assert "load:8->" not in one[3] and "load:-1" not in one[3]
    assert two[3].endswith(
        "load:7->NXM_NX_REG7[],resubmit(,40),load:8->NXM_NX_REG7[],resubmit(,40)"
    )
    assert openflow.vlan_cookie(3) not in {openflow.cookie(p.name) for p in (a, b)}
    assert openflow.vlan_cookie(3) != openflow.vlan_cookie(4)
