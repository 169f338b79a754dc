"""The Open vSwitch network driver: br-int with a local VLAN per network (Neutron's OVS agent
shape), Geneve or VXLAN tunnel ports to the network's peer hosts, port security in OpenFlow
(openflow.py), gateways (gateway.py) as veth ports of br-int.

The host's own ovsdb-server/ovs-vswitchd (ovs_daemons.py) are ensured on every call: a dead
vswitchd is restarted, and as it forgets every flow, the whole table is put back from what
OVSDB holds. Our ports carry external_ids (`nubes-net`, `nubes-port`, `nubes-peer`): that is
how a restarted agent finds what it owns.

With the userspace datapath, tunnels leave through the kernel routes of an OVS bridge: the
underlay address moves from its device onto br-phy, which holds the device as a port.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import ipaddress
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nubes.errors import DriverError, InvalidInput
from nubes.network import netns, openflow
from nubes.network.base import NetworkDriver, NetworkSpec, PortInfo, PortSpec, bridge_name
from nubes.network.dhcp import Dnsmasq, check_id
from nubes.network.gateway import GW_DEV, Gateways, veth_name
from nubes.network.linuxbridge import _ifname, port_alias, validate_network
from nubes.network.netlink import Netlink
from nubes.network.ovs_daemons import OvsDaemons

log = logging.getLogger(__name__)

BR_INT = "br-int"
BR_PHY = "br-phy"
TUNNEL_PREFIX = "nt"
PORT_ALIAS = "nubes port "
UDP_PORTS = {"geneve": 6081, "vxlan": 4789}


def tunnel_name(network_id: str, peer_ip: str) -> str:
    return TUNNEL_PREFIX + hashlib.sha1(f"{network_id}/{peer_ip}".encode()).hexdigest()[:13]


def tx_checksum_off(dev: str) -> None:
    """`ethtool -K dev tx off` (ETHTOOL_STXCSUM): the userspace datapath reads frames with
    AF_PACKET and sends them on with a checksum the sender left to offload (OVS issue #273)."""
    value = array.array("B", struct.pack("II", 0x17, 0))
    ifreq = struct.pack("16sP", dev.encode(), value.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), 0x8946, ifreq)  # SIOCETHTOOL
        except OSError as e:
            raise DriverError(f"tx checksum offload off on {dev}: {e}") from e


@dataclass
class _Row:
    name: str
    tag: int | None
    ids: dict[str, str]
    ofport: int = -1


def _ovs_value(v: object) -> object:
    if isinstance(v, list) and len(v) == 2 and v[0] == "map":
        return {k: val for k, val in v[1]}
    if isinstance(v, list) and len(v) == 2 and v[0] == "set":
        return None if not v[1] else v[1]
    return v


def parse_snapshot(text: str) -> list[_Row]:
    """Two `ovs-vsctl -f json list` documents: Port (name, tag, external_ids), then Interface
    (name, ofport)."""
    dec = json.JSONDecoder()
    docs, pos = [], 0
    text = text.strip()
    while pos < len(text):
        doc, end = dec.raw_decode(text, pos)
        docs.append(doc)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    ports, ifaces = docs
    # the port number vswitchd gave, else the one we asked for (vswitchd may not have it yet)
    ofports = {}
    for r in ifaces["data"]:
        given, asked = _ovs_value(r[1]), _ovs_value(r[2]) if len(r) > 2 else None
        ofports[r[0]] = given if isinstance(given, int) and given > 0 else asked
    rows = []
    for name, tag, ids in ports["data"]:
        t = _ovs_value(tag)
        of = ofports.get(name, -1)
        rows.append(
            _Row(
                name,
                t if isinstance(t, int) else None,
                _ovs_value(ids),  # type: ignore[arg-type]
                of if isinstance(of, int) else -1,
            )
        )
    return rows


def _ofport_for(name: str, rows: list[_Row]) -> int:
    """The port's number if it has one, else the lowest one free (OVS's own LOCAL is 65534)."""
    for r in rows:
        if r.name == name and r.ofport > 0:
            return r.ofport
    used = {r.ofport for r in rows}
    return next(n for n in range(1, 65280) if n not in used)


def of_ports(rows: list[_Row]) -> list[openflow.OfPort]:
    out = []
    for r in rows:
        if "nubes-port" in r.ids:
            try:
                _, mac, ip, secured, allowed = openflow.parse_port_ids(r.ids["nubes-port"])
            except ValueError:
                continue
            try:
                rules = openflow.decode_rules(r.ids.get("nubes-rules", ""))
            except (ValueError, TypeError):
                rules = ()  # unreadable: no rule, so nothing but DHCP and metadata
            out.append(
                openflow.OfPort(
                    r.name, r.ofport, False, mac, ip, secured, allowed, r.tag or 0, rules
                )
            )
        elif "nubes-net" in r.ids:  # tunnels and gateways
            tunnel = "nubes-peer" in r.ids
            out.append(
                openflow.OfPort(r.name, r.ofport, trusted=True, vlan=r.tag or 0, tunnel=tunnel)
            )
    return out


@dataclass
class _State:
    table: str | None = None  # the flow table last applied (None: unknown, apply again)
    underlay: str | None = None  # local underlay address, put on br-phy
    underlay_cidr: str | None = None  # with its prefix
    vlans: dict[str, int] = field(default_factory=dict)


class _Background(threading.Thread):
    """A call in a thread of its own, started from (so in the namespaces of) the caller's;
    join() gives back its exception."""

    def __init__(self, fn: Callable[..., None], *args: object) -> None:
        super().__init__(daemon=True)
        self._call = (fn, args)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        fn, args = self._call
        try:
            fn(*args)
        except BaseException as e:  # handed to the caller
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class OvsDriver(NetworkDriver):
    """Acts on the network namespace of the calling thread (the agent runs in its host's)."""

    def __init__(self, state_dir: Path, daemons: OvsDaemons | None = None) -> None:
        self.state_dir = state_dir
        self.ovs = daemons or OvsDaemons(state_dir / "ovs")
        self.dhcp = Dnsmasq(state_dir)
        self.gateways = Gateways(state_dir, self.dhcp, attach=self._attach_gateway)
        self._lock = threading.RLock()
        self._st = _State()
        self._rules: dict[str, str] = {}  # tap -> its rules as last written to OVSDB
        # The ports as of our last listing or plug. The agent is br-int's only writer (under
        # _lock), and every other write forgets it, so a plug needs no listing of its own:
        # a third of its ovs-* processes (bench/network.py's port plug, docs/architecture.md).
        self._known: list[_Row] | None = None

    # -- the switch ----------------------------------------------------------------------------

    def _ensure_switch(self) -> None:
        if not self.ovs.ensure() and self._st.table is not None:
            return
        self._st.table = None  # a new vswitchd has no flows
        dp = self.ovs.datapath_type
        self._write(
            "--may-exist", "add-br", BR_INT, "--",
            "set", "Bridge", BR_INT, f"datapath_type={dp}", "fail_mode=secure",
            "other_config:mac-aging-time=300",
        )  # fmt: skip
        with Netlink() as nl:
            nl.set_link(BR_INT, state="up")
        if self._st.underlay:
            self._ensure_underlay(self._st.underlay)

    def _ensure_underlay(self, local_ip: str) -> None:
        """Userspace datapath: the underlay address and its device onto br-phy. Checked on
        every pass (one netlink dump): a new vswitchd's br-phy may have lost the address, and
        `lab up` run again puts it back on the device."""
        if self.ovs.kernel:
            return
        with Netlink() as nl:
            found = [(d, c) for d, c in nl.all_addresses() if c.split("/")[0] == local_ip]
            if not found and nl.get_link(BR_PHY) is not None:
                # a new vswitchd's br-phy: the address as we moved it (OVSDB keeps it)
                cidr = self._st.underlay_cidr or self._saved_underlay()
                if cidr and cidr.split("/")[0] == local_ip:
                    nl.ensure_address(BR_PHY, cidr)
                    found = [(BR_PHY, cidr)]
            if not found:
                raise DriverError(f"no device here has the underlay address {local_ip}")
            for dev, cidr in found:
                if dev != BR_PHY:  # also after `lab up` put it back on the device
                    self._move_underlay(nl, dev, cidr)
                self._st.underlay_cidr = cidr
            nl.set_link(BR_PHY, state="up")
        self._st.underlay = local_ip

    def _saved_underlay(self) -> str | None:
        out = self.ovs.vsctl("--if-exists", "get", "Bridge", BR_PHY, "external_ids:nubes-underlay")
        return json.loads(out) if out.strip() else None

    def _move_underlay(self, nl: Netlink, dev: str, cidr: str) -> None:
        link = nl.get_link(dev)
        if link is None:
            raise DriverError(f"underlay device {dev} went away")
        self._write(
            "--may-exist", "add-br", BR_PHY, "--",
            "set", "Bridge", BR_PHY, f"datapath_type={self.ovs.datapath_type}",
            f"other_config:hwaddr={link.mac}", f"external_ids:nubes-underlay={cidr}", "--",
            "--may-exist", "add-port", BR_PHY, dev,
        )  # fmt: skip
        # the address onto br-phy first, then off the device: the host stays reachable
        nl.set_link(BR_PHY, state="up", mtu=link.mtu or 1500)
        nl.ensure_address(BR_PHY, cidr)
        nl.remove_addresses(dev)
        log.info("underlay %s moved from %s onto %s", cidr, dev, BR_PHY)

    def _write(self, *args: str) -> str:
        self._known = None  # forgotten first: a failed write may have done part of its work
        return self.ovs.vsctl(*args)

    def _rows(self) -> list[_Row]:
        self._known = None
        out = self.ovs.vsctl(
            "-f", "json", "--", "--columns=name,tag,external_ids", "list", "Port",
            "--", "--columns=name,ofport,ofport_request", "list", "Interface",
        )  # fmt: skip
        self._known = parse_snapshot(out)
        return list(self._known)

    def _sync_flows(self, rows: list[_Row] | None = None) -> None:
        """The whole table from OVSDB, atomically, when it differs from the one applied."""
        text = openflow.table(of_ports(rows if rows is not None else self._rows()))
        if text == self._st.table:
            return
        self.ovs.ofctl("--bundle", "replace-flows", BR_INT, "-", stdin=text)
        self._st.table = text

    def _apply_port(self, before: list[_Row], after: list[_Row], name: str) -> None:
        """One port's flows, by its cookie, in one bundle: the whole table when the switch
        may not hold the table of `before` (a new vswitchd, a failed apply)."""
        old, new = openflow.table(of_ports(before)), openflow.table(of_ports(after))
        if old != self._st.table:
            self._sync_flows(after)
            return
        mine = [p for p in of_ports(after) if p.name == name and p.ofport > 0]
        lines = [f"delete cookie={openflow.cookie(name):#x}/-1"]
        lines += [f"add {f}" for p in mine for f in openflow.port_flows(p)]
        # the flood flows of the VLANs the port left or joined (each has its VLAN's cookie)
        floods = openflow.flood_flows(of_ports(before)), openflow.flood_flows(of_ports(after))
        for vlan in sorted(set(floods[0]) | set(floods[1])):
            if floods[0].get(vlan) != floods[1].get(vlan):
                lines.append(f"delete cookie={openflow.vlan_cookie(vlan):#x}/-1")
                lines += [f"add {floods[1][vlan]}"] if vlan in floods[1] else []
        self._st.table = None  # unknown until the bundle is in
        self.ovs.ofctl("--bundle", "add-flows", BR_INT, "-", stdin="\n".join(lines) + "\n")
        self._st.table = new

    def _vlan(self, network_id: str, rows: list[_Row]) -> int:
        """The network's local VLAN: the one its ports have, else the lowest free one."""
        for r in rows:
            if r.ids.get("nubes-net") == network_id and r.tag:
                self._st.vlans[network_id] = r.tag
                return r.tag
        if network_id in self._st.vlans:
            return self._st.vlans[network_id]
        used = {r.tag for r in rows if r.tag} | set(self._st.vlans.values())
        tag = next(t for t in range(1, 4095) if t not in used)
        self._st.vlans[network_id] = tag
        return tag

    # -- networks ------------------------------------------------------------------------------

    def ensure_network(self, spec: NetworkSpec) -> None:
        validate_network(spec, geneve_ok=lambda: True)
        with self._lock:
            self._ensure_switch()
            peers = sorted({p.underlay_ip for p in spec.peers} - {spec.local_underlay_ip})
            if spec.local_underlay_ip and peers:
                self._ensure_underlay(spec.local_underlay_ip)
            rows = self._rows()
            vlan = self._vlan(spec.id, rows)
            self._ensure_tunnels(spec, peers if spec.vni is not None else [], rows, vlan)
            with Netlink() as nl:
                if spec.serve_dhcp:
                    self.gateways.ensure(nl, spec)
                else:
                    self._remove_gateway(nl, spec.id)
            self._sync_flows()

    def _ensure_tunnels(
        self, spec: NetworkSpec, peers: list[str], rows: list[_Row], vlan: int
    ) -> None:
        wanted = {tunnel_name(spec.id, p): p for p in peers}
        have = {r.name for r in rows if r.ids.get("nubes-net") == spec.id and "nubes-peer" in r.ids}
        args: list[str] = []
        for stale in sorted(have - set(wanted)):
            args += ["--", "--if-exists", "del-port", BR_INT, stale]
        for name, peer in sorted(wanted.items()):
            if name in have:
                continue
            args += [
                "--", "--may-exist", "add-port", BR_INT, name,
                "--", "set", "Interface", name, f"type={spec.overlay}",
                f"options:remote_ip={peer}", f"options:key={spec.vni}",
                f"options:dst_port={UDP_PORTS[spec.overlay]}",
                "--", "set", "Port", name, f"tag={vlan}", "protected=true",
                f"external_ids:nubes-net={spec.id}", f"external_ids:nubes-peer={peer}",
            ]  # fmt: skip
        if args:
            self._write(*args)

    def _attach_gateway(self, nl: Netlink, veth: str, spec: NetworkSpec, ns: str) -> None:
        vlan = self._vlan(spec.id, self._rows())
        nl.set_link(veth, state="up")
        self._write(
            "--may-exist", "add-port", BR_INT, veth, "--",
            "set", "Port", veth, f"tag={vlan}", f"external_ids:nubes-net={spec.id}",
            "external_ids:nubes-gateway=1",
        )  # fmt: skip
        with netns.inside(ns):
            tx_checksum_off(GW_DEV)

    def _remove_gateway(self, nl: Netlink, network_id: str) -> None:
        self._write("--if-exists", "del-port", BR_INT, veth_name(network_id))
        self.gateways.remove(nl, network_id)

    def delete_network(self, network_id: str) -> None:
        check_id(network_id)
        with self._lock:
            self._ensure_switch()
            ours = [
                r.name
                for r in self._rows()
                if r.ids.get("nubes-net") == network_id and "nubes-port" not in r.ids
            ]
            args: list[str] = []
            for name in ours:
                args += ["--", "--if-exists", "del-port", BR_INT, name]
            if args:
                self._write(*args)
            with Netlink() as nl:
                self._remove_gateway(nl, network_id)
            self._st.vlans.pop(network_id, None)
            self._sync_flows()

    def list_networks(self) -> list[str]:
        with self._lock:
            self._ensure_switch()
            nets = {r.ids["nubes-net"] for r in self._rows() if "nubes-net" in r.ids}
        return sorted(nets | set(self.gateways.network_ids()))

    def metadata_endpoint(self, network_id: str) -> tuple[str | None, str]:
        return self.gateways.endpoint(network_id)

    def overlays(self) -> tuple[str, ...]:
        return ("vxlan", "geneve")

    def guest_offloads(self) -> bool:
        return self.ovs.kernel  # the userspace datapath forwards partial checksums as read

    def host_ranges(self) -> tuple[str, ...]:
        with Netlink() as nl:
            found = nl.all_addresses()
        nets = {
            str(ipaddress.IPv4Interface(cidr).network)
            for dev, cidr in found
            if not dev.startswith(("tap", "nvg", BR_INT, "lo")) and not cidr.startswith("127.")
        }
        return tuple(sorted(nets))

    def leases(self, network_id: str) -> list[tuple[str, str]]:
        return self.dhcp.leases(network_id)

    # -- ports ---------------------------------------------------------------------------------

    def plug_port(self, spec: PortSpec) -> None:
        _ifname(spec.tap, "tap")
        try:
            ipaddress.IPv4Address(spec.ip)
        except ValueError as e:
            raise InvalidInput(str(e), field="ip") from e
        ids = port_alias(spec)[len(PORT_ALIAS) :]
        try:  # the port's flows as they will be built, so a bad MAC, pair or rule fails here
            _, mac, ip, secured, allowed = openflow.parse_port_ids(ids)
            probe = openflow.OfPort(spec.tap, 1, False, mac, ip, secured, allowed, 1, spec.rules)
            openflow.port_flows(probe)
        except ValueError as e:
            raise InvalidInput(str(e), field="mac") from e
        with self._lock:
            self._ensure_switch()
            with Netlink() as nl:
                link = nl.get_link(spec.tap)
                if link is None or link.kind == "tun":  # a test's stand-in guest is a veth
                    nl.ensure_tap(spec.tap, spec.owner_uid, spec.mtu)
                nl.set_link(spec.tap, state="up", ifalias=PORT_ALIAS + ids)
            rows = list(self._known) if self._known is not None else self._rows()
            vlan = self._vlan(spec.network_id, rows)
            ofport = _ofport_for(spec.tap, rows)
            self._rules[spec.tap] = openflow.encode_rules(spec.rules)
            ids_of = {"nubes-net": spec.network_id, "nubes-port": ids}
            ids_of["nubes-rules"] = self._rules[spec.tap]
            after = [r for r in rows if r.name != spec.tap]
            after.append(_Row(spec.tap, vlan, ids_of, ofport))
            # The port's flows and its OVSDB row are written at once, neither needs the other:
            # the flows name the port number we request (flows of a port not yet there match
            # nothing), and until they are in, table 0's default drop holds the port's frames.
            # One ovs-ofctl beside one ovs-vsctl: the plug takes the longer, not the sum.
            flows = _Background(self._apply_port, rows, after, spec.tap)
            try:
                self._write(
                    "--no-wait", "--may-exist", "add-port", BR_INT, spec.tap, "--",
                    "set", "Interface", spec.tap, f"ofport_request={ofport}", "--",
                    "set", "Port", spec.tap, f"tag={vlan}",
                    f"external_ids:nubes-net={spec.network_id}",
                    f"external_ids:nubes-port={ids}", self._rules_arg(spec),
                )  # fmt: skip
            except BaseException:
                flows.join()
                self._st.table = None  # the port's flows may be in without it: resync
                raise
            flows.join()  # raises the flows' error, if any
            self._known = list(after)

    @staticmethod
    def _rules_arg(spec: PortSpec) -> str:
        # quoted as an OVSDB string (JSON's escapes): the rules are JSON themselves
        return "external_ids:nubes-rules=" + json.dumps(openflow.encode_rules(spec.rules))

    def ensure_port_filter(self, spec: PortSpec) -> None:
        """The port's security groups as they are now: its rules are kept in OVSDB with the
        port, and the table follows (only differences are sent)."""
        encoded = openflow.encode_rules(spec.rules)
        with self._lock:
            self._ensure_switch()
            if self._rules.get(spec.tap) != encoded:
                try:
                    openflow.sg_flows(
                        openflow.OfPort(spec.tap, 1, mac=spec.mac, ip=spec.ip, rules=spec.rules)
                    )
                except ValueError as e:
                    raise InvalidInput(str(e), field="rules") from e
                self._write("--if-exists", "set", "Port", spec.tap, self._rules_arg(spec))
                self._rules[spec.tap] = encoded
                self._sync_flows()
            elif self._st.table is None:  # a new vswitchd: its table is empty
                self._sync_flows()

    def unplug_port(self, tap: str) -> None:
        _ifname(tap, "tap")
        with self._lock:
            self._ensure_switch()
            self._write("--if-exists", "del-port", BR_INT, tap)
            self._rules.pop(tap, None)
            with Netlink() as nl:
                link = nl.get_link(tap)
                if link is not None and (link.alias or "").startswith(PORT_ALIAS):
                    nl.delete_link(tap)
            self._sync_flows()

    def list_ports(self) -> list[PortInfo]:
        with self._lock:
            self._ensure_switch()
            rows = self._rows()
        ports = []
        for r in rows:
            if "nubes-port" not in r.ids:
                continue
            _, mac, _, _, _ = openflow.parse_port_ids(r.ids["nubes-port"])
            ports.append(PortInfo(tap=r.name, bridge=bridge_name(r.ids["nubes-net"]), mac=mac))
        return sorted(ports, key=lambda p: p.tap)
