"""A small typed adapter over our rtnetlink client (rtnl.py): links, addresses, FDB entries,
bridge-port flags and the default route.

Everything acts on the network namespace of the calling thread at the time the adapter is opened
(the agent runs inside its host's namespace; the socket belongs to the namespace it was
opened in). Open one adapter per operation: it is cheap, and a socket opened
earlier in another namespace would silently act there.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from nubes.errors import DriverError
from nubes.network import rtnl

ZERO_MAC = "00:00:00:00:00:00"
IFNAMSIZ = 15  # usable characters of a Linux interface name

T = TypeVar("T")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # "bridge", "tun", "vxlan", "geneve", "veth"...
    mtu: int
    mac: str | None
    master: int | None
    up: bool
    carrier: bool  # for a tap: some process (QEMU) has it open
    alias: str | None
    info: dict[str, Any] = field(default_factory=dict)  # IFLA_INFO_DATA, e.g. IFLA_VXLAN_ID


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str | None


def check_ifname(name: str) -> str:
    if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise DriverError(f"invalid interface name {name!r}")
    return name


def _to_link(msg: rtnl.LinkMsg) -> Link:
    a = msg.attrs
    return Link(
        index=msg.index,
        name=a.get("ifname", ""),
        kind=a.get("kind"),
        mtu=a.get("mtu", 0),
        mac=a.get("address"),
        master=a.get("master") or None,
        up=bool(msg.flags & rtnl.IFF_UP),
        carrier=bool(a.get("carrier")),
        alias=a.get("ifalias"),
        info=a.get("info", {}),
    )


def _link_attrs(attrs: dict[str, Any]) -> tuple[bytes, bool | None]:
    """(rtnetlink attributes, up/down/unchanged) of set_link's keywords."""
    out = b""
    up = None
    for key, value in attrs.items():
        if key == "mtu":
            out += rtnl.u32(rtnl.IFLA_MTU, value)
        elif key == "master":
            out += rtnl.u32(rtnl.IFLA_MASTER, value)
        elif key == "ifalias":
            out += rtnl.string(rtnl.IFLA_IFALIAS, value)
        elif key == "address":
            out += rtnl.mac(rtnl.IFLA_ADDRESS, value)
        elif key == "state":
            up = value == "up"
        else:
            raise DriverError(f"unsupported link attribute {key}")
    return out, up


class Netlink:
    """Idempotent link, address and FDB operations. Raises DriverError on any netlink failure.

    Everything goes through our own rtnetlink client (rtnl.py): see docs/architecture.md for
    why not pyroute2 (bench/network.py measures both).
    """

    def __init__(self) -> None:
        self._rt = rtnl.Rtnl()
        self._indexes: dict[str, int] = {}  # names seen during this adapter's short life

    def close(self) -> None:
        self._rt.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:  # RtnlError, and the tun driver's ioctls
            raise DriverError(f"{what}: {e.strerror or e}") from e

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._errors(what):
            return fn()

    # -- links ---------------------------------------------------------------------------------

    def get_link(self, name: str) -> Link | None:
        msg = self._call(f"get link {name}", lambda: self._rt.get_link(check_ifname(name)))
        if msg is None:
            self._indexes.pop(name, None)
            return None
        self._indexes[name] = msg.index
        return _to_link(msg)

    def _index(self, name: str) -> int:
        if name in self._indexes:
            return self._indexes[name]
        link = self.get_link(name)
        if link is None:
            raise DriverError(f"no such interface {name}")
        return link.index

    def list_links(self, prefix: str = "") -> list[Link]:
        links = self._call("list links", lambda: [_to_link(m) for m in self._rt.dump_links()])
        return [link for link in links if link.name.startswith(prefix)]

    def _add(self, name: str, kind: str, data: bytes = b"") -> None:
        info = rtnl.string(rtnl.IFLA_INFO_KIND, kind)
        if data:
            info += rtnl.nested(rtnl.IFLA_INFO_DATA, data)
        attrs = rtnl.string(rtnl.IFLA_IFNAME, check_ifname(name))
        attrs += rtnl.nested(rtnl.IFLA_LINKINFO, info)
        try:
            self._rt.new_link(attrs)
        except OSError as e:
            if e.errno != errno.EEXIST:  # lost a race with another creator: fine
                raise DriverError(f"create {kind} {name}: {e.strerror}") from e

    def ensure_bridge(self, name: str, mtu: int) -> bool:
        """Create the bridge if missing and set its MTU. Returns True if it was created."""
        link = self.get_link(name)
        if link is not None and link.kind != "bridge":
            raise DriverError(f"{name} exists and is a {link.kind}, not a bridge")
        created = link is None
        if created:
            self._add(name, "bridge")
            new = self.get_link(name)
            if new is not None and new.mac:
                # Pin the random MAC: otherwise the bridge takes its lowest port's MAC and the
                # gateway's MAC changes under the guests whenever a port comes or goes.
                self.set_link(name, address=new.mac)
        self.set_link(name, mtu=mtu)
        return created

    def ensure_tap(self, name: str, owner_uid: int | None, mtu: int) -> bool:
        """A persistent tap that `owner_uid` may open (an unprivileged QEMU). True if created."""
        link = self.get_link(name)
        if link is not None and link.kind != "tun":
            raise DriverError(f"{name} exists and is a {link.kind}, not a tap")
        if (
            link is not None
            and owner_uid is not None
            and link.info.get("IFLA_TUN_OWNER") != owner_uid
            and not link.carrier
        ):
            # The owner of a persistent tap cannot change in place. Never pull it from under a
            # running guest (carrier on) though: the plug after that guest stops fixes it.
            self.delete_link(name)
            link = None
        created = link is None
        if created:
            self._call(f"create tap {name}", lambda: rtnl.create_tap(name, owner_uid))
        self.set_link(name, mtu=mtu)
        return created

    def ensure_vxlan(
        self,
        name: str,
        vni: int,
        local_ip: str,
        port: int = 4789,
        learning: bool = False,
        mtu: int = 1450,
    ) -> bool:
        """A VXLAN device without a default remote: peers are all-zero FDB entries."""
        link = self.get_link(name)
        if link is not None and (
            link.kind != "vxlan"
            or link.info.get("IFLA_VXLAN_ID") != vni
            or link.info.get("IFLA_VXLAN_LOCAL") != local_ip
            or link.info.get("IFLA_VXLAN_PORT") != port
            or bool(link.info.get("IFLA_VXLAN_LEARNING")) != learning
        ):
            self.delete_link(name)  # these cannot change on a live device
            link = None
        created = link is None
        if created:
            data = rtnl.u32(1, vni) + rtnl.ipv4(4, local_ip) + rtnl.u8(7, int(learning))
            self._add(name, "vxlan", data + rtnl.be16(15, port))
        self.set_link(name, mtu=mtu)
        return created

    def ensure_geneve(self, name: str, vni: int, remote: str, mtu: int) -> bool:
        """One point-to-point Geneve device (the kernel's geneve has no FDB of remotes)."""
        link = self.get_link(name)
        if link is not None and (
            link.kind != "geneve"
            or link.info.get("IFLA_GENEVE_ID") != vni
            or link.info.get("IFLA_GENEVE_REMOTE") != remote
        ):
            self.delete_link(name)
            link = None
        created = link is None
        if created:
            self._add(name, "geneve", rtnl.u32(1, vni) + rtnl.ipv4(2, remote))
        self.set_link(name, mtu=mtu)
        return created

    def ensure_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int) -> bool:
        """A veth pair: `name` here, `peer` in the namespace open as peer_netns_fd. True if
        created. An existing `name` is kept as it is (its peer is the caller's to check)."""
        link = self.get_link(name)
        if link is not None and link.kind != "veth":
            raise DriverError(f"{name} exists and is a {link.kind}, not a veth")
        if link is None:
            peer_msg = rtnl.ifinfo() + rtnl.string(rtnl.IFLA_IFNAME, check_ifname(peer))
            peer_msg += rtnl.u32(rtnl.IFLA_NET_NS_FD, peer_netns_fd)
            peer_msg += rtnl.u32(rtnl.IFLA_MTU, mtu)
            self._add(name, "veth", rtnl.nested(rtnl.VETH_INFO_PEER, peer_msg))
        self.set_link(name, mtu=mtu)
        return link is None

    def create_macvlan(self, name: str, parent: str, netns_fd: int, mtu: int) -> None:
        """A bridge-mode macvlan of `parent` (here), made directly in the namespace open as
        netns_fd: the parent's own addresses and link are left alone."""
        info = rtnl.string(rtnl.IFLA_INFO_KIND, "macvlan")
        info += rtnl.nested(rtnl.IFLA_INFO_DATA, rtnl.u32(1, 4))  # IFLA_MACVLAN_MODE: bridge
        attrs = rtnl.string(rtnl.IFLA_IFNAME, check_ifname(name))
        attrs += rtnl.u32(rtnl.IFLA_LINK, self._index(parent))
        attrs += rtnl.u32(rtnl.IFLA_NET_NS_FD, netns_fd)
        attrs += rtnl.u32(rtnl.IFLA_MTU, mtu)
        attrs += rtnl.nested(rtnl.IFLA_LINKINFO, info)
        self._call(f"create macvlan {name} of {parent}", lambda: self._rt.new_link(attrs))

    def replace_default_route(self, gateway: str | None) -> None:
        """The default route via gateway (None: no default route)."""
        self._call("default route", lambda: self._rt.default_route(gateway))

    def set_link(self, name: str, **attrs: Any) -> None:
        """mtu, master (an index; 0 detaches), ifalias, address, state ("up"/"down")."""
        index = self._index(name)
        payload, up = _link_attrs(attrs)
        self._call(f"set {name} {attrs}", lambda: self._rt.set_link(index, payload, up))

    def set_master(self, dev: str, master: str | None) -> None:
        """Attach dev to the bridge `master`, or detach it with None."""
        self.set_link(dev, master=self._index(master) if master else 0)

    def set_port(self, dev: str, bridge: str, alias: str) -> None:
        """In one request: dev named by alias, attached to bridge, up."""
        self.set_link(dev, ifalias=alias, master=self._index(bridge), state="up")

    def set_alias(self, dev: str, alias: str) -> None:
        self.set_link(dev, ifalias=alias)

    def set_port_isolated(self, dev: str, isolated: bool) -> None:
        """Isolated bridge ports never forward to each other (split horizon between tunnels)."""
        index = self._index(dev)
        self._call(
            f"isolate {dev}",
            lambda: self._rt.set_port_isolated(index, isolated),
        )

    def link_up(self, dev: str) -> None:
        self.set_link(dev, state="up")

    def delete_link(self, name: str) -> bool:
        """Delete the link; a missing one is fine. True if something was deleted."""
        link = self.get_link(name)
        if link is None:
            return False
        self._indexes.pop(name, None)
        try:
            self._rt.del_link(link.index)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise DriverError(f"delete {name}: {e.strerror}") from e
        return True

    # -- addresses -----------------------------------------------------------------------------

    def addresses(self, dev: str) -> list[str]:
        """IPv4 addresses of dev as CIDR strings (e.g. 10.20.0.1/24)."""
        index = self._index(dev)
        found = self._call(f"addresses of {dev}", lambda: self._rt.addresses(index))
        return [f"{ip}/{prefix}" for ip, prefix in found]

    def all_addresses(self) -> list[tuple[str, str]]:
        """(device, CIDR string) of every IPv4 address of the namespace."""
        names = {link.index: link.name for link in self.list_links()}
        found = self._call("addresses", self._rt.address_dump)
        return [(names.get(i, ""), f"{ip}/{prefix}") for i, ip, prefix in found]

    def ensure_address(self, dev: str, cidr: str) -> None:
        iface = ipaddress.IPv4Interface(cidr)
        if str(iface) in self.addresses(dev):
            return
        index = self._index(dev)
        try:
            self._rt.address("add", index, str(iface.ip), iface.network.prefixlen)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise DriverError(f"add {cidr} to {dev}: {e.strerror}") from e

    def remove_addresses(self, dev: str, keep: tuple[str, ...] = ()) -> None:
        """Remove every IPv4 address of dev except those in keep."""
        index = self._index(dev)
        for cidr in self.addresses(dev):
            if cidr in keep:
                continue
            iface = ipaddress.IPv4Interface(cidr)
            try:
                self._rt.address("del", index, str(iface.ip), iface.network.prefixlen)
            except OSError as e:
                if e.errno not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                    raise DriverError(f"remove {cidr} from {dev}: {e.strerror}") from e

    # -- forwarding database -------------------------------------------------------------------

    def fdb_entries(self, dev: str) -> list[FdbEntry]:
        """Entries of a VXLAN device that name a remote VTEP (static and learned)."""
        index = self._index(dev)
        msgs = self._call(f"fdb of {dev}", lambda: self._rt.fdb_dump(index))
        return [
            FdbEntry(mac=m.lladdr or ZERO_MAC, dst=m.dst)
            for m in msgs
            if m.ifindex == index and m.dst is not None
        ]

    def fdb_append(self, dev: str, dst: str, mac: str = ZERO_MAC) -> None:
        """Send frames for mac (all zeros: every flooded frame) to the VTEP dst too."""
        if FdbEntry(mac, dst) in self.fdb_entries(dev):
            return
        index = self._index(dev)
        self._call(
            f"fdb append {mac} {dst} on {dev}", lambda: self._rt.fdb("append", index, mac, dst)
        )

    def fdb_replace(self, dev: str, mac: str, dst: str) -> None:
        """A static entry: frames for mac go to the VTEP dst (and only there)."""
        index = self._index(dev)
        self._call(
            f"fdb replace {mac} {dst} on {dev}", lambda: self._rt.fdb("replace", index, mac, dst)
        )

    def fdb_del(self, dev: str, dst: str, mac: str = ZERO_MAC) -> None:
        if FdbEntry(mac, dst) not in self.fdb_entries(dev):
            return
        index = self._index(dev)
        try:
            self._rt.fdb("del", index, mac, dst)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise DriverError(f"fdb del {mac} {dst} on {dev}: {e.strerror}") from e


def set_sysctl(dev: str, key: str, value: str, family: str = "ipv6") -> bool:
    """Per-device sysctl of the calling thread's namespace. False if it does not exist here."""
    path = Path("/proc/sys/net") / family / "conf" / check_ifname(dev) / key
    try:
        path.write_text(value)
    except FileNotFoundError:
        return False
    return True


def set_bridge_sysctl(key: str, value: str) -> bool:
    """net.bridge.<key> of the calling thread's namespace. False if this kernel has none."""
    path = Path("/proc/sys/net/bridge") / key
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except FileNotFoundError:
        return False
    return True
