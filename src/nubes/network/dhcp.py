"""One dnsmasq per network, DHCP only, with per-MAC reservations.

Files live under <state_dir>/dhcp/<network id>/. dnsmasq daemonizes and writes its pidfile; we
find it again from the pidfile (checked against /proc/<pid>/cmdline, so a recycled pid is never
signalled), which lets a restarted agent adopt the dnsmasq it left running.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nubes.errors import DriverError, InvalidInput
from nubes.network.base import DhcpHost

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DEFAULT_USER = "nobody"


@dataclass(frozen=True)
class DhcpConfig:
    network_id: str
    interface: str  # the bridge
    cidr: str
    gateway: str
    mtu: int = 1500
    hosts: tuple[DhcpHost, ...] = ()
    dns: tuple[str, ...] = ()
    lease_time: str = "12h"


@dataclass(frozen=True)
class DhcpPaths:
    dir: Path
    hosts: Path
    leases: Path
    pid: Path
    log: Path


def check_id(network_id: str) -> str:
    if not _ID_RE.match(network_id):
        raise InvalidInput(f"invalid network id {network_id!r}", field="network_id")
    return network_id


def paths_for(state_dir: Path, network_id: str) -> DhcpPaths:
    d = state_dir / "dhcp" / check_id(network_id)
    return DhcpPaths(d, d / "hosts", d / "leases", d / "dnsmasq.pid", d / "dnsmasq.log")


def render_hosts(hosts: tuple[DhcpHost, ...]) -> str:
    """The --dhcp-hostsfile: one `mac,ip,hostname` a line, validated, in a stable order."""
    lines = []
    for h in sorted(hosts, key=lambda h: (h.mac.lower(), h.ip)):
        mac = h.mac.lower()
        if not _MAC_RE.match(mac):
            raise InvalidInput(f"invalid MAC address {h.mac!r}", field="mac")
        ip = ipaddress.IPv4Address(h.ip)
        if not _HOSTNAME_RE.match(h.hostname):
            raise InvalidInput(f"invalid DHCP hostname {h.hostname!r}", field="hostname")
        lines.append(f"{mac},{ip},{h.hostname}\n")
    return "".join(lines)


def build_argv(cfg: DhcpConfig, paths: DhcpPaths, user: str, binary: str = "dnsmasq") -> list[str]:
    """The dnsmasq command line for one network (pure: golden-testable)."""
    net = ipaddress.IPv4Network(cfg.cidr)
    gateway = ipaddress.IPv4Address(cfg.gateway)
    argv = [
        binary,
        "--conf-file=/dev/null",  # never read the system's /etc/dnsmasq.conf
        "--port=0",  # DHCP only: no DNS server
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",  # lets one dnsmasq per bridge coexist in a namespace
        f"--interface={cfg.interface}",
        "--except-interface=lo",
        f"--user={user}",
        f"--pid-file={paths.pid}",
        f"--log-facility={paths.log}",
        f"--dhcp-leasefile={paths.leases}",
        f"--dhcp-hostsfile={paths.hosts}",
        f"--dhcp-range={net.network_address},static,{net.netmask},{cfg.lease_time}",
        "--dhcp-authoritative",
        f"--dhcp-option=option:router,{gateway}",
        f"--dhcp-option=option:mtu,{int(cfg.mtu)}",
    ]
    if cfg.dns:
        servers = ",".join(str(ipaddress.IPv4Address(s)) for s in cfg.dns)
        argv.append(f"--dhcp-option=option:dns-server,{servers}")
    return argv


def parse_hosts(text: str) -> set[tuple[str, str]]:
    """(mac, ip) pairs of a hostsfile written by render_hosts."""
    out = set()
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 2:
            out.add((parts[0].lower(), parts[1]))
    return out


def parse_leases(text: str) -> list[tuple[str, str]]:
    """(mac, ip) pairs of a dnsmasq lease file: `expiry mac ip hostname client-id` lines."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and _MAC_RE.match(parts[1].lower()):
            out.append((parts[1].lower(), parts[2]))
    return out


def world_traversable(path: Path) -> bool:
    """Can an unprivileged user reach files in `path` (o+x on it and every parent)?"""
    p = path.resolve()
    for d in (p, *p.parents):
        if not d.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None  # not "": an empty file must still be written


def _atomic_write(path: Path, text: str, current: str | None) -> bool:
    """Write if the content differs from `current` (None: no file yet); True if it changed."""
    if current == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)  # dnsmasq re-reads it after dropping privileges
    os.replace(tmp, path)
    return True


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if status.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is dead for us
        return None
    return [a.decode() for a in raw.split(b"\0") if a]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _cmdline(pid) is None:
            return True
        time.sleep(0.02)
    return _cmdline(pid) is None


class Dnsmasq:
    """Starts, reloads and stops the dnsmasq of each network. Not thread-safe: the driver locks."""

    def __init__(
        self,
        state_dir: Path,
        binary: str = "dnsmasq",
        user: str | None = None,
        release_binary: str = "dhcp_release",
    ) -> None:
        self.state_dir = state_dir
        self.binary = binary
        self.release_binary = release_binary
        self.user = user
        self._warned: set[Path] = set()

    def paths(self, network_id: str) -> DhcpPaths:
        return paths_for(self.state_dir, network_id)

    def _user_for(self, d: Path) -> str:
        if self.user:
            return self.user
        if world_traversable(d):
            return DEFAULT_USER
        # dnsmasq re-reads the hostsfile after dropping privileges: it must be able to reach it.
        if d not in self._warned:  # once per network, not on every converge pass
            self._warned.add(d)
            log.warning("%s is not world-traversable: dnsmasq keeps running as root", d)
        return "root"

    def pid(self, network_id: str) -> int | None:
        """The pid of this network's dnsmasq if it is running, else None."""
        paths = self.paths(network_id)
        try:
            pid = int(paths.pid.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        argv = _cmdline(pid)
        if argv is None or f"--pid-file={paths.pid}" not in argv:
            return None
        return pid

    def ensure(self, cfg: DhcpConfig) -> None:
        """Converge: files written, process running with this config, reservations loaded."""
        paths = self.paths(cfg.network_id)
        paths.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.dir, 0o755)
        before = _read(paths.hosts)
        changed = _atomic_write(paths.hosts, render_hosts(cfg.hosts), before)
        argv = build_argv(cfg, paths, self._user_for(paths.dir), self.binary)
        pid = self.pid(cfg.network_id)
        if pid is not None and _cmdline(pid) != argv:
            self._kill(pid)
            pid = None
        if pid is None:
            self._start(argv, paths)
        elif changed:
            os.kill(pid, signal.SIGHUP)  # re-reads --dhcp-hostsfile
            gone = parse_hosts(before or "") - {(h.mac.lower(), h.ip) for h in cfg.hosts}
            self._release(cfg.interface, paths, gone)

    def _release(self, interface: str, paths: DhcpPaths, gone: set[tuple[str, str]]) -> None:
        """Leases of removed reservations end now, not at expiry: dnsmasq keeps running while
        the network exists, and a deleted port must leave no lease (as Neutron does, with
        dnsmasq-utils' dhcp_release)."""
        try:
            leased = set(parse_leases(paths.leases.read_text()))
        except FileNotFoundError:
            return
        for mac, ip in sorted(gone & leased):
            try:
                proc = subprocess.run(
                    [self.release_binary, interface, ip, mac],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
            except OSError as exc:  # not installed: the lease ends at its expiry
                log.warning("cannot release the lease of %s: %s", ip, exc)
                return
            if proc.returncode != 0:
                log.warning("dhcp_release %s %s: %s", ip, mac, proc.stderr.strip() or "failed")

    def _start(self, argv: list[str], paths: DhcpPaths) -> None:
        paths.pid.unlink(missing_ok=True)
        paths.leases.touch(exist_ok=True)
        # The parent exits once the daemon is ready or has failed, with its error on stderr.
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise DriverError(f"dnsmasq failed to start: {proc.stderr.strip()}")
        deadline = time.monotonic() + 5
        while not paths.pid.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not paths.pid.exists():
            raise DriverError(f"dnsmasq started but wrote no pidfile {paths.pid}")

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not _wait_gone(pid, 5):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)

    def stop(self, network_id: str) -> None:
        """Stop the dnsmasq and remove its files. Idempotent."""
        paths = self.paths(network_id)
        pid = self.pid(network_id)
        if pid is not None:
            self._kill(pid)
        if paths.dir.is_dir():
            for f in paths.dir.iterdir():
                f.unlink(missing_ok=True)
            paths.dir.rmdir()

    def leases(self, network_id: str) -> list[tuple[str, str]]:
        try:
            return parse_leases(self.paths(network_id).leases.read_text())
        except FileNotFoundError:
            return []

    def network_ids(self) -> list[str]:
        d = self.state_dir / "dhcp"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
