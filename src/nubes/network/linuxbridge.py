"""The Linux bridge network driver: a bridge per network, taps for ports, VXLAN between hosts,
dnsmasq for DHCP and nftables for NAT and anti-spoofing.

Our devices carry an alias (`nubes network <id>`, `nubes port <id> <mac> <ip>`): that is how a
restarted agent finds what it owns without any state file of its own, and how it puts a port's
anti-spoofing rules back when nftables lost them (`nft flush ruleset`, a firewall reload).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from nubes.errors import DriverError, InvalidInput
from nubes.network import firewall, secgroups
from nubes.network.base import NetworkDriver, NetworkSpec, PortInfo, PortSpec, bridge_name
from nubes.network.dhcp import Dnsmasq, check_id
from nubes.network.gateway import Gateways, derived_mac, gateway_mac
from nubes.network.netlink import (
    ZERO_MAC,
    Link,
    Netlink,
    check_ifname,
    set_bridge_sysctl,
    set_sysctl,
)

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "nbr"
TAP_PREFIX = "tap"
VXLAN_PREFIX = "vx"
GENEVE_PREFIX = "gn"
NET_ALIAS = "nubes network "
PORT_ALIAS = "nubes port "
GENEVE_ALIAS = "nubes geneve "
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NO_GENEVE = "this kernel has no Geneve; use --type vxlan"
# how often (seconds, at most) an ensure_network asks nft whether our tables are still there
TABLES_CHECK_EVERY = 10.0


@dataclass(frozen=True)
class _AliasedPort:
    """One of our taps as its alias tells: `nubes port <id> <mac> <ip> [off | CIDR@MAC...]`."""

    tap: str
    mac: str
    ip: str  # "" in an older alias
    secured: bool = True
    allowed: tuple[tuple[str, str | None], ...] = ()


def port_alias(spec: PortSpec) -> str:
    extra = " off" if not spec.port_security else ""
    extra += "".join(f" {cidr}@{mac or '-'}" for cidr, mac in spec.allowed)
    return f"{PORT_ALIAS}{spec.id} {spec.mac.lower()} {spec.ip}{extra}"


def _port_alias(link: Link) -> _AliasedPort | None:
    alias = link.alias or ""
    # a VM's tap, or the host end of a container's veth (agent/containers.py): both are
    # ports, listed, kept up to date (security groups) and unplugged alike
    if link.kind not in ("tun", "veth") or not alias.startswith(PORT_ALIAS):
        return None
    fields = alias[len(PORT_ALIAS) :].split()  # port id, MAC[, IP[, off | pairs]]
    if len(fields) < 2:
        return None
    rest = fields[3:]
    pairs = tuple(
        (cidr, None if mac == "-" else mac)
        for cidr, _, mac in (f.partition("@") for f in rest if "@" in f)
    )
    ip = fields[2] if len(fields) > 2 else ""
    return _AliasedPort(link.name, fields[1], ip, "off" not in rest, pairs)


def vxlan_name(network_id: str) -> str:
    return VXLAN_PREFIX + network_id.replace("-", "")[:13]


def geneve_name(network_id: str, peer_ip: str) -> str:
    # One device per peer: hash both so names stay unique and within 15 characters.
    return GENEVE_PREFIX + hashlib.sha1(f"{network_id}/{peer_ip}".encode()).hexdigest()[:13]


@lru_cache(maxsize=1)
def geneve_supported() -> bool:
    """Does this kernel have Geneve (loaded, built in, or loadable)?"""
    if Path("/sys/module/geneve").exists():
        return True
    builtin = Path(f"/lib/modules/{os.uname().release}/modules.builtin")
    try:
        if "/geneve.ko" in builtin.read_text():
            return True
    except OSError:
        pass
    try:
        proc = subprocess.run(["modprobe", "-q", "geneve"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def validate_network(spec: NetworkSpec, geneve_ok: Callable[[], bool] = geneve_supported) -> None:
    """Reject a spec before anything is created. Raises InvalidInput."""
    check_id(spec.id)
    _ifname(spec.bridge, "bridge")
    try:
        net = ipaddress.IPv4Network(spec.cidr)
        if ipaddress.IPv4Address(spec.gateway) not in net:
            raise InvalidInput(f"gateway {spec.gateway} is outside {spec.cidr}", field="gateway")
        for p in spec.peers:
            ipaddress.IPv4Address(p.underlay_ip)
        for r in spec.remote_ports:
            ipaddress.IPv4Address(r.underlay_ip)
            if not _MAC_RE.match(r.mac.lower()):
                raise InvalidInput(f"invalid MAC address {r.mac!r}", field="remote_ports")
        if spec.gateway_underlay_ip is not None:
            ipaddress.IPv4Address(spec.gateway_underlay_ip)
        if spec.local_underlay_ip is not None:
            ipaddress.IPv4Address(spec.local_underlay_ip)
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    if not 68 <= spec.mtu <= 65535:
        raise InvalidInput(f"invalid MTU {spec.mtu}", field="mtu")
    if spec.vni is not None:
        if not 1 <= spec.vni < 2**24:
            raise InvalidInput(f"invalid VNI {spec.vni}", field="vni")
        if spec.overlay not in ("vxlan", "geneve"):
            raise InvalidInput(f"unknown overlay {spec.overlay!r}", field="overlay")
        if spec.overlay == "geneve" and not geneve_ok():
            raise InvalidInput(NO_GENEVE, field="overlay")
        if spec.peers and not spec.local_underlay_ip:
            raise InvalidInput("an overlay needs local_underlay_ip", field="local_underlay_ip")


def _ifname(name: str, what: str) -> str:
    try:
        return check_ifname(name)
    except DriverError as e:
        raise InvalidInput(f"invalid {what} name {name!r}", field=what) from e


def _load_secured(path: Path) -> dict[str, tuple[str, str]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or cut short by a crash: rules found by alias
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        str(tap): (str(v[0]), str(v[1]))
        for tap, v in raw.items()
        if isinstance(v, list) and len(v) == 2
    }


class LinuxBridgeDriver(NetworkDriver):
    """Acts on the network namespace of the calling thread (the agent runs in its host's)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        anti_spoof: bool = True,
        overlay_filter: bool = True,
        guard_host: bool = True,
        vxlan_port: int = 4789,
        vxlan_learning: bool = False,
        dnsmasq: str = "dnsmasq",
    ) -> None:
        self.state_dir = state_dir
        self.anti_spoof = anti_spoof
        self.overlay_filter = overlay_filter
        self.guard_host = guard_host
        self.vxlan_port = vxlan_port
        self.vxlan_learning = vxlan_learning
        self.dhcp = Dnsmasq(state_dir, binary=dnsmasq)
        self.gateways = Gateways(state_dir, self.dhcp)
        self._lock = threading.RLock()
        self._applied: dict[tuple[str, str], str] = {}  # the last nft script applied per key
        # tap -> (bridge, ip) of its groups' rules, kept on disk: a container's veth goes with
        # its namespace, and an agent restarted since its plug must still find its rules
        self._secured_file = state_dir / "secured-ports.json"
        self._secured: dict[str, tuple[str, str]] = _load_secured(self._secured_file)
        self._has_inet: bool | None = None
        self._has_bridge: bool | None = None  # our bridge-family table, as far as we know
        # while an ensure runs: its nft scripts, sent to nft together at its end
        self._pending: list[tuple[tuple[str, str], str]] | None = None
        self._tables_checked_at = -TABLES_CHECK_EVERY  # monotonic time of the last check

    # -- networks ------------------------------------------------------------------------------

    def ensure_network(self, spec: NetworkSpec) -> None:
        validate_network(spec)
        with self._lock, Netlink() as nl:
            self._restore_lost_tables(nl)
            created = nl.get_link(spec.bridge) is None
            try:
                with self._nft_batch():
                    self._ensure_network(nl, spec)
            except Exception:
                if created:  # a new network that failed part way leaves nothing behind
                    self._delete_network(nl, spec.id)
                raise

    def _ensure_network(self, nl: Netlink, spec: NetworkSpec) -> None:
        nl.ensure_bridge(spec.bridge, spec.mtu)
        set_sysctl(spec.bridge, "accept_ra", "0")  # never take a route from a guest's RA
        # ARP answers only for the bridge's own addresses, from them: tenants' ranges overlap
        set_sysctl(spec.bridge, "arp_ignore", "1", "ipv4")
        set_sysctl(spec.bridge, "arp_announce", "2", "ipv4")
        # one request: alias, MAC, up
        nl.set_link(
            spec.bridge, ifalias=NET_ALIAS + spec.id, state="up", **self._bridge_mac(nl, spec)
        )
        self._ensure_overlay(nl, spec)
        if self.guard_host:  # on every host: a bridge without an address still has IPv6's
            self._nft(("guard", spec.bridge), firewall.guard_script(spec.bridge))
        if self.anti_spoof and spec.vni is not None:  # security groups of its ports
            # bridged IPv4 through the inet hooks, where conntrack is
            set_bridge_sysctl("bridge-nf-call-iptables", "1")
            self._nft(("sg", spec.bridge), secgroups.bridge_script(spec.bridge, spec.vni))
        nl.remove_addresses(spec.bridge)  # the host never holds an address of a tenant
        if spec.serve_dhcp:
            self.gateways.ensure(nl, spec)
        else:
            self.gateways.remove(nl, spec.id)

    def _nft(self, key: tuple[str, str], script: str, removal: bool = False) -> None:
        """Apply an inet script unless this driver already applied the very same one for key:
        every converge pass ensures every network, and each nft run is a process. A removal
        never creates our table just to delete from it."""
        if self._applied.get(key) == script:
            return
        if removal and key not in self._applied and not self._inet_table():
            self._applied[key] = script
        elif self._pending is not None:
            self._pending.append((key, script))
        else:
            firewall.apply(script)
            self._has_inet = True
            self._applied[key] = script

    @contextmanager
    def _nft_batch(self) -> Iterator[None]:
        """The scripts _nft is given inside go to nft in one transaction at the end: a new
        network's overlay filter, guard and NAT rules cost one process, not three."""
        self._pending = []
        try:
            yield
            if self._pending:
                firewall.apply("".join(script for _, script in self._pending))
                self._has_inet = True
                self._applied.update(self._pending)
        finally:
            self._pending = None

    def _inet_table(self) -> bool:
        """Is our inet table there? Asked of nft once, then known from what we do."""
        if self._has_inet is None:
            self._has_inet = "inet" in firewall.tables()
        return self._has_inet

    def _restore_lost_tables(self, nl: Netlink) -> None:
        """What we know of nftables is a cache: if our tables went away behind our back, forget
        it and put every rule back (the networks' as they are ensured, the ports' here from
        their aliases). Checked at most every TABLES_CHECK_EVERY s: each check is an nft run."""
        now = time.monotonic()
        if now - self._tables_checked_at < TABLES_CHECK_EVERY:
            return
        self._tables_checked_at = now
        ports = [p for p in map(_port_alias, nl.list_links(TAP_PREFIX)) if p is not None]
        want = {"inet"} if self._has_inet else set()
        if self.anti_spoof and ports:
            want.add("bridge")
        lost = want - set(firewall.tables()) if want else set()
        if not lost:
            return
        log.warning("nftables: our %s table went away; applying every rule again", "/".join(lost))
        self._forget_rules()
        self._has_inet = self._has_bridge = None
        if "bridge" in lost:
            for p in ports:
                # an older alias without the address: the port's next plug puts them back
                if p.ip and p.secured:
                    rules = partial(firewall.port_script, p.tap, p.mac, p.ip, allowed=p.allowed)
                    self._apply_port(rules)

    def _forget_rules(self) -> None:
        """Something was removed: the next ensure applies everything again."""
        self._applied.clear()

    @staticmethod
    def _bridge_mac(nl: Netlink, spec: NetworkSpec) -> dict[str, str]:
        """The set_link keyword that gives the bridge its MAC, if it has another."""
        mac = derived_mac(f"bridge/{spec.id}/{spec.local_underlay_ip}")  # never the gateway's
        link = nl.get_link(spec.bridge)
        return {"address": mac} if link is not None and link.mac != mac else {}

    def _ensure_overlay(self, nl: Netlink, spec: NetworkSpec) -> None:
        local = spec.local_underlay_ip
        peers = sorted({p.underlay_ip for p in spec.peers} - {local})
        want_vxlan = spec.vni is not None and bool(peers) and spec.overlay == "vxlan"
        want_geneve = spec.vni is not None and bool(peers) and spec.overlay == "geneve"
        vx = vxlan_name(spec.id)
        if not want_vxlan:
            self._delete_vxlan(nl, vx)
        if spec.overlay == "geneve":  # a network's overlay never changes: skip the dump
            self._ensure_geneve(nl, spec, peers if want_geneve else [])
        if not want_vxlan or spec.vni is None or local is None:
            return
        # the filter first: the device must never listen unguarded
        if self.overlay_filter:
            script = firewall.overlay_script(spec.vni, peers, self.vxlan_port)
            self._nft(("overlay", str(spec.vni)), script)
        nl.ensure_vxlan(
            vx, spec.vni, local, self.vxlan_port, learning=self.vxlan_learning, mtu=spec.mtu
        )
        nl.set_port(vx, spec.bridge, alias=NET_ALIAS + spec.id)
        self._ensure_fdb(nl, vx, peers, self._remote_macs(spec, peers))

    @staticmethod
    def _remote_macs(spec: NetworkSpec, peers: list[str]) -> dict[str, str]:
        """mac -> underlay address of the host that has it (ports, and the gateway)."""
        wanted = {r.mac.lower(): r.underlay_ip for r in spec.remote_ports}
        gw = spec.gateway_underlay_ip
        if not spec.serve_dhcp and gw is not None:
            wanted[gateway_mac(spec.id)] = gw
        return {mac: ip for mac, ip in wanted.items() if ip in peers}

    @staticmethod
    def _ensure_fdb(nl: Netlink, vx: str, peers: list[str], macs: dict[str, str]) -> None:
        entries = nl.fdb_entries(vx)
        # Head-end replication: every flooded frame goes to each peer, and only to them.
        current = {e.dst for e in entries if e.mac == ZERO_MAC}
        for peer in peers:
            if peer not in current:
                nl.fdb_append(vx, peer)
        for stale in current - set(peers):
            if stale is not None:
                nl.fdb_del(vx, stale)
        # Known MACs go straight to their host: unicast is never flooded to the others.
        have = {e.mac: e.dst for e in entries if e.mac != ZERO_MAC}
        for mac, dst in macs.items():
            if have.get(mac) != dst:
                nl.fdb_replace(vx, mac, dst)
        for mac, old in have.items():
            if mac not in macs and old is not None:
                nl.fdb_del(vx, old, mac)

    def _delete_vxlan(self, nl: Netlink, vx: str) -> None:
        link = nl.get_link(vx)
        if link is None:
            return
        nl.delete_link(vx)
        vni = link.info.get("IFLA_VXLAN_ID")
        self._forget_rules()
        if isinstance(vni, int) and "inet" in firewall.tables():
            firewall.apply(firewall.overlay_remove_script(vni))

    def _ensure_geneve(self, nl: Netlink, spec: NetworkSpec, peers: list[str]) -> None:
        """One Geneve device per peer, as isolated bridge ports so they never relay to each
        other. Untested here: this machine's kernel has no Geneve."""
        wanted = {geneve_name(spec.id, p): p for p in peers}
        for link in nl.list_links(GENEVE_PREFIX):
            if (link.alias or "").startswith(
                f"{GENEVE_ALIAS}{spec.id} "
            ) and link.name not in wanted:
                nl.delete_link(link.name)
        for name, peer in wanted.items():
            assert spec.vni is not None
            nl.ensure_geneve(name, spec.vni, peer, spec.mtu)
            nl.set_alias(name, f"{GENEVE_ALIAS}{spec.id} {peer}")
            nl.set_master(name, spec.bridge)
            nl.set_port_isolated(name, True)
            nl.link_up(name)

    def _remove_rules(self, bridge: str) -> None:
        """NAT and guard of the bridge of a network that leaves this host."""
        self._forget_rules()
        if "inet" in firewall.tables():  # never create our table just to delete from it
            firewall.apply(
                firewall.guard_remove_script(bridge) + secgroups.bridge_remove_script(bridge)
            )

    def delete_network(self, network_id: str) -> None:
        check_id(network_id)
        with self._lock, Netlink() as nl:
            self._delete_network(nl, network_id)

    def _delete_network(self, nl: Netlink, network_id: str) -> None:
        bridge = self._find_bridge(nl, network_id)
        self._delete_vxlan(nl, vxlan_name(network_id))
        for link in nl.list_links(GENEVE_PREFIX):
            if (link.alias or "").startswith(f"{GENEVE_ALIAS}{network_id} "):
                nl.delete_link(link.name)
        self.gateways.remove(nl, network_id)
        self._remove_rules(bridge)
        nl.delete_link(bridge)
        self._drop_tables_if_unused(nl)

    def _drop_tables_if_unused(self, nl: Netlink) -> None:
        """The last network and port gone, our nftables tables go too."""
        if any((link.alias or "").startswith(NET_ALIAS) for link in nl.list_links(BRIDGE_PREFIX)):
            return
        if any((link.alias or "").startswith(PORT_ALIAS) for link in nl.list_links(TAP_PREFIX)):
            return
        present = firewall.tables()
        self._forget_rules()
        self._has_inet = self._has_bridge = None
        if present:
            firewall.apply(firewall.delete_tables_script(present))

    def _find_bridge(self, nl: Netlink, network_id: str) -> str:
        for link in nl.list_links(BRIDGE_PREFIX):
            if link.alias == NET_ALIAS + network_id:
                return link.name
        return bridge_name(network_id)

    def list_networks(self) -> list[str]:
        with Netlink() as nl:
            links = nl.list_links(BRIDGE_PREFIX)
        bridged = {
            link.alias[len(NET_ALIAS) :]
            for link in links
            if link.kind == "bridge" and link.alias and link.alias.startswith(NET_ALIAS)
        }
        return sorted(bridged | set(self.gateways.network_ids()))

    def metadata_endpoint(self, network_id: str) -> tuple[str | None, str]:
        return self.gateways.endpoint(network_id)

    def overlays(self) -> tuple[str, ...]:
        return ("vxlan", "geneve") if geneve_supported() else ("vxlan",)

    def host_ranges(self) -> tuple[str, ...]:
        ours = (BRIDGE_PREFIX, TAP_PREFIX, VXLAN_PREFIX, GENEVE_PREFIX, "lo")
        with Netlink() as nl:
            found = nl.all_addresses()
        nets = {
            str(ipaddress.IPv4Interface(cidr).network)
            for dev, cidr in found
            if not dev.startswith(ours) and not cidr.startswith("127.")
        }
        return tuple(sorted(nets))

    def leases(self, network_id: str) -> list[tuple[str, str]]:
        """(mac, ip) of the DHCP leases this host's dnsmasq handed out for the network."""
        return self.dhcp.leases(network_id)

    # -- ports ---------------------------------------------------------------------------------

    def plug_port(self, spec: PortSpec) -> None:
        _ifname(spec.tap, "tap")
        mac = spec.mac.lower()
        if not _MAC_RE.match(mac):
            raise InvalidInput(f"invalid MAC address {spec.mac!r}", field="mac")
        try:
            ipaddress.IPv4Address(spec.ip)
        except ValueError as e:
            raise InvalidInput(str(e), field="ip") from e
        with self._lock, Netlink() as nl:
            if nl.get_link(spec.bridge) is None:
                raise DriverError(f"bridge {spec.bridge} of network {spec.network_id} is missing")
            link = nl.get_link(spec.tap)
            if link is not None and link.kind == "veth":  # a container's (agent/containers.py)
                created = False
                nl.set_link(spec.tap, mtu=spec.mtu)
            else:
                created = nl.ensure_tap(spec.tap, spec.owner_uid, spec.mtu)
            try:
                nl.set_alias(spec.tap, port_alias(spec))
                if self.anti_spoof and spec.port_security:  # before it can carry anything
                    rules = partial(
                        firewall.port_script, spec.tap, mac, spec.ip, allowed=spec.allowed
                    )
                    self._apply_port(rules)
                elif self._bridge_table():  # port security off: no rules of its own
                    self._apply_port(partial(firewall.port_remove_script, spec.tap))
                self.ensure_port_filter(spec)
                nl.set_master(spec.tap, spec.bridge)
                nl.link_up(spec.tap)
            except Exception:
                if created:
                    self._unplug(nl, spec.tap)
                raise

    def ensure_port_filter(self, spec: PortSpec) -> None:
        if not self.anti_spoof:
            return
        key = ("sgport", spec.tap)
        if spec.port_security and ("sg", spec.bridge) in self._applied:
            script = secgroups.port_script(spec.bridge, spec.tap, spec.ip, spec.rules)
            with self._lock:
                self._nft(key, script)
                self._remember_secured(spec.tap, (spec.bridge, spec.ip))
        elif key in self._applied:
            with self._lock:
                self._applied.pop(key)
                self._remember_secured(spec.tap, None)
                firewall.apply(secgroups.port_remove_script(spec.bridge, spec.tap, spec.ip))

    def _remember_secured(self, tap: str, where: tuple[str, str] | None) -> None:
        if self._secured.get(tap) == where:
            return
        if where is None:
            self._secured.pop(tap, None)
        else:
            self._secured[tap] = where
        if not self._secured:
            self._secured_file.unlink(missing_ok=True)
            return
        self._secured_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._secured_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._secured))
        os.replace(tmp, self._secured_file)

    def unplug_port(self, tap: str) -> None:
        _ifname(tap, "tap")
        with self._lock, Netlink() as nl:
            self._unplug(nl, tap)

    def _unplug(self, nl: Netlink, tap: str) -> None:
        link = nl.get_link(tap)
        ours = _port_alias(link) if link is not None else None
        bridge = None
        if link is not None and link.master:
            bridge = next(
                (b.name for b in nl.list_links(BRIDGE_PREFIX) if b.index == link.master), None
            )
        nl.delete_link(tap)
        self._applied.pop(("sgport", tap), None)
        secured = self._secured.get(tap)
        self._remember_secured(tap, None)
        master, ip = (link.master, ours.ip) if link is not None and ours is not None else (0, "")
        if link is None and secured is not None:
            # a container's veth went with its namespace before this unplug: its rules are
            # found by what this driver applied for it (after an agent restart, not at all)
            bridge, ip = secured
            master = getattr(nl.get_link(bridge), "index", 0)
        if ip and (ours is None or ours.secured) and bridge and self._inet_table():
            # a newer port that took over the address keeps the rules (they are its own now)
            others = [
                p
                for other in nl.list_links(TAP_PREFIX)
                if other.master == master and (p := _port_alias(other)) is not None and p.ip == ip
            ]
            if not others:
                firewall.apply(secgroups.port_remove_script(bridge, tap, ip))
            else:  # the chain of group frames leaving by its tap is its alone
                firewall.apply(secgroups.group_remove_script(tap))
        if self._bridge_table():
            self._apply_port(partial(firewall.port_remove_script, tap))
            self._drop_tables_if_unused(nl)

    def _bridge_table(self) -> bool:
        """Is our bridge table there? Asked of nft once, then known from what we do."""
        if self._has_bridge is None:
            self._has_bridge = "bridge" in firewall.tables()
        return self._has_bridge

    def _apply_port(self, script: Callable[..., str]) -> None:
        """A port's rules, with the table's skeleton only until this process has put it in."""
        if self._has_bridge:
            try:
                firewall.apply(script(skeleton=False))
                return
            except DriverError:  # the table was changed behind our back: all of it again
                log.warning("nftables bridge table not as left; re-applying it whole")
        firewall.apply(script(skeleton=True))
        self._has_bridge = True

    def list_ports(self) -> list[PortInfo]:
        with Netlink() as nl:
            links = nl.list_links(TAP_PREFIX)
            names = {link.index: link.name for link in nl.list_links(BRIDGE_PREFIX)}
        ports = []
        for link in links:
            ours = _port_alias(link)
            if ours is None:
                continue  # not ours: the agent deletes what this lists, so never guess
            bridge = names.get(link.master) if link.master else None
            ports.append(PortInfo(tap=link.name, bridge=bridge, mac=ours.mac))
        return sorted(ports, key=lambda p: p.tap)
