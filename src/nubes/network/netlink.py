"""A small typed adapter over pyroute2's IPRoute: the only module of network/ that imports pyroute2.

Everything acts on the network namespace of the calling thread at the time the adapter is opened
(the agent runs inside its host's namespace). Open one adapter per operation: it is cheap, and a
socket opened earlier in another namespace would silently act there.
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

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nubes.errors import DriverError

ZERO_MAC = "00:00:00:00:00:00"
IFNAMSIZ = 15  # usable characters of a Linux interface name
_AF_INET = 2
_NUD_NOARP, _NUD_PERMANENT, _NTF_SELF = 0x40, 0x80, 0x02

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


def _to_link(msg: Any) -> Link:
    info: dict[str, Any] = {}
    kind = None
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND")
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if data is not None and hasattr(data, "get_attrs"):
            info = {k: v for k, v in data["attrs"] if k != "UNKNOWN"}
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        mtu=msg.get_attr("IFLA_MTU"),
        mac=msg.get_attr("IFLA_ADDRESS"),
        master=msg.get_attr("IFLA_MASTER"),
        up=bool(msg["flags"] & 1),  # IFF_UP
        carrier=bool(msg.get_attr("IFLA_CARRIER")),
        alias=msg.get_attr("IFLA_IFALIAS"),
        info=info,
    )


class Netlink:
    """Idempotent link, address and FDB operations. Raises DriverError on any netlink failure."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

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
        except NetlinkError as e:
            raise DriverError(f"{what}: {e.args[1] if len(e.args) > 1 else e}") from e

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._errors(what):
            return fn()

    # -- links ---------------------------------------------------------------------------------

    def get_link(self, name: str) -> Link | None:
        try:
            msgs = self._ipr.get_links(ifname=check_ifname(name))
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise DriverError(f"get link {name}: {e}") from e
        return _to_link(msgs[0]) if msgs else None

    def _index(self, name: str) -> int:
        link = self.get_link(name)
        if link is None:
            raise DriverError(f"no such interface {name}")
        return link.index

    def list_links(self, prefix: str = "") -> list[Link]:
        links = self._call("list links", lambda: [_to_link(m) for m in self._ipr.get_links()])
        return [link for link in links if link.name.startswith(prefix)]

    def _add(self, name: str, **kwargs: Any) -> None:
        try:
            self._ipr.link("add", ifname=check_ifname(name), **kwargs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:  # lost a race with another creator: fine
                raise DriverError(f"create {kwargs.get('kind')} {name}: {e.args[-1]}") from e

    def ensure_bridge(self, name: str, mtu: int) -> bool:
        """Create the bridge if missing and set its MTU. Returns True if it was created."""
        link = self.get_link(name)
        if link is not None and link.kind != "bridge":
            raise DriverError(f"{name} exists and is a {link.kind}, not a bridge")
        created = link is None
        if created:
            self._add(name, kind="bridge")
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
            extra: dict[str, Any] = {"uid": owner_uid} if owner_uid is not None else {}
            self._add(name, kind="tuntap", mode="tap", ifr={"no_pi": True}, **extra)
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
            self._add(
                name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_local=local_ip,
                vxlan_port=port,
                vxlan_learning=int(learning),
            )
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
            self._add(name, kind="geneve", geneve_id=vni, geneve_remote=remote)
        self.set_link(name, mtu=mtu)
        return created

    def set_link(self, name: str, **attrs: Any) -> None:
        index = self._index(name)
        self._call(f"set {name} {attrs}", lambda: self._ipr.link("set", index=index, **attrs))

    def set_master(self, dev: str, master: str | None) -> None:
        """Attach dev to the bridge `master`, or detach it with None."""
        self.set_link(dev, master=self._index(master) if master else 0)

    def set_alias(self, dev: str, alias: str) -> None:
        self.set_link(dev, ifalias=alias)

    def set_port_isolated(self, dev: str, isolated: bool) -> None:
        """Isolated bridge ports never forward to each other (split horizon between tunnels)."""
        index = self._index(dev)
        self._call(
            f"isolate {dev}",
            lambda: self._ipr.brport("set", index=index, isolated=int(isolated)),
        )

    def link_up(self, dev: str) -> None:
        self.set_link(dev, state="up")

    def delete_link(self, name: str) -> bool:
        """Delete the link; a missing one is fine. True if something was deleted."""
        link = self.get_link(name)
        if link is None:
            return False
        try:
            self._ipr.link("del", index=link.index)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise DriverError(f"delete {name}: {e.args[-1]}") from e
        return True

    # -- addresses -----------------------------------------------------------------------------

    def addresses(self, dev: str) -> list[str]:
        """IPv4 addresses of dev as CIDR strings (e.g. 10.20.0.1/24)."""
        index = self._index(dev)
        msgs = self._call(f"addresses of {dev}", lambda: self._ipr.get_addr(index=index))
        return [
            f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"
            for m in msgs
            if m["family"] == _AF_INET and m["index"] == index
        ]

    def ensure_address(self, dev: str, cidr: str) -> None:
        iface = ipaddress.IPv4Interface(cidr)
        if str(iface) in self.addresses(dev):
            return
        index = self._index(dev)
        try:
            self._ipr.addr(
                "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise DriverError(f"add {cidr} to {dev}: {e.args[-1]}") from e

    def remove_addresses(self, dev: str, keep: tuple[str, ...] = ()) -> None:
        """Remove every IPv4 address of dev except those in keep."""
        index = self._index(dev)
        for cidr in self.addresses(dev):
            if cidr in keep:
                continue
            iface = ipaddress.IPv4Interface(cidr)
            try:
                self._ipr.addr(
                    "del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
            except NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                    raise DriverError(f"remove {cidr} from {dev}: {e.args[-1]}") from e

    # -- forwarding database -------------------------------------------------------------------

    def fdb_entries(self, dev: str) -> list[FdbEntry]:
        """Entries of a VXLAN device that name a remote VTEP (static and learned)."""
        index = self._index(dev)
        msgs = self._call(f"fdb of {dev}", lambda: self._ipr.fdb("dump", ifindex=index))
        return [
            FdbEntry(mac=m.get_attr("NDA_LLADDR"), dst=m.get_attr("NDA_DST"))
            for m in msgs
            if m["ifindex"] == index and m.get_attr("NDA_DST") is not None
        ]

    def fdb_append(self, dev: str, dst: str, mac: str = ZERO_MAC) -> None:
        """Send frames for mac (all zeros: every flooded frame) to the VTEP dst too."""
        if FdbEntry(mac, dst) in self.fdb_entries(dev):
            return
        index = self._index(dev)
        self._call(
            f"fdb append {mac} {dst} on {dev}",
            lambda: self._ipr.fdb("append", ifindex=index, lladdr=mac, dst=dst),
        )

    def fdb_replace(self, dev: str, mac: str, dst: str) -> None:
        """A static entry: frames for mac go to the VTEP dst (and only there)."""
        index = self._index(dev)
        self._call(
            f"fdb replace {mac} {dst} on {dev}",
            lambda: self._ipr.fdb(
                "replace",
                ifindex=index,
                lladdr=mac,
                dst=dst,
                state=_NUD_PERMANENT | _NUD_NOARP,
                flags=_NTF_SELF,
            ),
        )

    def fdb_del(self, dev: str, dst: str, mac: str = ZERO_MAC) -> None:
        if FdbEntry(mac, dst) not in self.fdb_entries(dev):
            return
        index = self._index(dev)
        try:
            self._ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise DriverError(f"fdb del {mac} {dst} on {dev}: {e.args[-1]}") from e


def set_sysctl(dev: str, key: str, value: str, family: str = "ipv6") -> bool:
    """Per-device sysctl of the calling thread's namespace. False if it does not exist here."""
    path = Path("/proc/sys/net") / family / "conf" / check_ifname(dev) / key
    try:
        path.write_text(value)
    except FileNotFoundError:
        return False
    return True
