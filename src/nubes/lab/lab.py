"""`nubes lab`: N hosts on one machine, each a network namespace with its own underlay address.

    root namespace:   <prefix>-ul (bridge, no address)
                        |-- <prefix>-h1-ul  ==veth==  eth0 in netns <prefix>-h1  10.255.0.11/24
                        |-- <prefix>-h2-ul  ==veth==  eth0 in netns <prefix>-h2  10.255.0.12/24

Each host also has a mount namespace of its own (`<lab>/mnt/<host>`, kept by a bind mount):
fresh tmpfs on /run, /tmp and the state directory, and the host's own /sys, so a host sees
none of the API's files nor another host's, and the API sees none of a host's, as on separate
machines. The lab reaches into a host's files only through `host_root()`, for tests.

The underlay is a private range that exists only inside our namespaces and the lab's bridge.
The root namespace, where the API runs, holds one address on it (the first: 10.255.0.1), as the
API machine would on a real network: agents reach the API there over TCP+TLS with their own
joined credential, never through the shared filesystem. An nftables guard in the root namespace
accepts from the underlay only that TCP port (and replies to what the root namespace opened);
IPv6 is off on the bridge, and the hosts have no default route. The lab's state is a JSON file,
so `lab down` from another process finds everything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nubes
from nubes.hypervisor.qemu.cmdline import SOCKET_ROOT
from nubes.hypervisor.qemu.process import guest_of
from nubes.network import netns

STATE_FILE = "lab.json"
DEFAULT_PREFIX = "nubes"
DEFAULT_UNDERLAY = "10.255.0.0/24"
# the lab's outside world (TEST-NET-2): a namespace answering ping and HTTP, on the external
# network every host reaches through its ex0; nothing of it leaves the machine
OUTSIDE_CIDR = "198.51.100.0/24"
OUTSIDE_IP = "198.51.100.1"
OUTSIDE_LINE = "hello from nubes-outside"
EXT_UPLINK = "ex0"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # "<prefix>-h99-ul" fits in 15 characters
MAX_HOSTS = 99


@dataclass(frozen=True)
class LabHost:
    name: str  # also the name of its network namespace
    netns: str
    underlay_ip: str
    index: int = 0


@dataclass
class HostStatus:
    host: LabHost
    netns: bool
    veth: bool
    pids: list[int] = field(default_factory=list)


@dataclass
class LabStatus:
    bridge: str
    bridge_exists: bool
    underlay_cidr: str
    hosts: list[HostStatus] = field(default_factory=list)


class LabError(RuntimeError):
    pass


class Lab:
    def __init__(
        self,
        state_dir: Path,
        name_prefix: str | None = None,
        underlay_cidr: str | None = None,
        mtu: int = 1500,
        api_port: int = 8774,
    ) -> None:
        """A lab persisted under state_dir. Prefix and underlay default to what the state file
        says, else to `nubes` and 10.255.0.0/24."""
        self.state_dir = state_dir
        saved = self._load()
        self.prefix = name_prefix or saved.get("prefix") or DEFAULT_PREFIX
        if saved and saved.get("prefix") != self.prefix:
            raise LabError(
                f"{self.state_path} holds lab {saved.get('prefix')!r}, not {self.prefix!r}"
            )
        if not _PREFIX_RE.match(self.prefix):
            raise LabError(f"lab prefix {self.prefix!r}: 1-8 lowercase letters and digits")
        self.underlay = ipaddress.IPv4Network(
            underlay_cidr or saved.get("underlay_cidr") or DEFAULT_UNDERLAY
        )
        self.mtu = int(saved.get("mtu", mtu))
        self.api_port = int(saved.get("api_port", api_port))
        self._hosts = [LabHost(**h) for h in saved.get("hosts", [])]
        self._pids: dict[str, list[int]] = saved.get("pids", {})
        # a process per host that only sleeps in its mount namespace: /proc/<pid>/root is
        # the host's view of the filesystem (tests look at a host's files through it)
        self._holders: dict[str, int] = saved.get("holders", {})

    # -- names and state -----------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The lab's directory (state file; a good place for the hosts' logs)."""
        return self.state_dir

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def ext_bridge(self) -> str:
        return f"{self.prefix}-ex"

    @property
    def outside_ns(self) -> str:
        return f"{self.prefix}-outside"

    @property
    def api_address(self) -> str:
        """The API machine's address on the underlay (the root namespace's, on the bridge)."""
        return str(self.underlay.network_address + 1)

    @property
    def api_url(self) -> str:
        return f"https://{self.api_address}:{self.api_port}"

    @property
    def guard_table(self) -> str:
        return f"{self.prefix}_lab_guard"

    @property
    def hosts(self) -> list[LabHost]:
        return list(self._hosts)

    def host_for(self, index: int) -> LabHost:
        if not 1 <= index <= MAX_HOSTS:
            raise LabError(f"host index {index} out of 1..{MAX_HOSTS}")
        ip = self.underlay.network_address + 10 + index
        if ip not in self.underlay or ip == self.underlay.broadcast_address:
            raise LabError(f"{self.underlay} has no room for host {index}")
        name = f"{self.prefix}-h{index}"
        return LabHost(name=name, netns=name, underlay_ip=str(ip), index=index)

    def host(self, name: str) -> LabHost:
        for h in self._hosts:
            if h.name == name:
                return h
        raise LabError(f"no lab host {name!r}")

    def _veth(self, host: LabHost) -> str:
        return f"{host.netns}-ul"

    @property
    def mnt_dir(self) -> Path:
        return self.state_dir / "mnt"

    def mount_ns(self, host: LabHost) -> Path:
        """The file that keeps the host's mount namespace (a bind mount of it)."""
        return self.mnt_dir / host.name

    def private_dirs(self) -> list[str]:
        """Where each host has a fresh, empty filesystem of its own: /run and /tmp, the
        default state directory, and the API's (the lab's parent), whichever it is."""
        dirs = ["/run", "/tmp", "/var/lib/nubes", str(self.state_dir.resolve().parent)]
        return list(dict.fromkeys(dirs))

    def host_root(self, host: LabHost) -> Path:
        """The host's filesystem as the host sees it, from outside (for tests and checks)."""
        pid = self._holders.get(host.name)
        if pid is None or not _alive(pid):
            raise LabError(f"lab host {host.name} has no mount namespace (is the lab up?)")
        return Path(f"/proc/{pid}/root")

    def _load(self) -> dict:
        try:
            data = json.loads((self.state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "prefix": self.prefix,
            "underlay_cidr": str(self.underlay),
            "mtu": self.mtu,
            "api_port": self.api_port,
            "bridge": self.bridge,
            "hosts": [asdict(h) for h in self._hosts],
            "pids": self._pids,
            "holders": self._holders,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    # -- building ------------------------------------------------------------------------------

    def create_hosts(self, n: int) -> list[LabHost]:
        """Make sure hosts 1..n exist and are wired to the underlay (idempotent)."""
        if not 1 <= n <= MAX_HOSTS:
            raise LabError(f"a lab has 1..{MAX_HOSTS} hosts, not {n}")
        self.ensure_bridge()
        self.ensure_outside()
        made = []
        for i in range(1, n + 1):
            host = self.host_for(i)
            if host not in self._hosts:
                self._hosts.append(host)
                self._save()  # before creating anything: `lab down` must know about it
            self._ensure_host(host)
            made.append(host)
        self._save()
        return made

    def ensure_bridge(self) -> None:
        """The underlay bridge with the API's address and its guard (idempotent): before the
        API starts, since it listens on that address."""
        taken = _addresses_in(self.underlay, besides=self.bridge)
        if taken:
            raise LabError(
                f"the underlay {self.underlay} is in use here already ({', '.join(taken)}): "
                "another lab is up? `nubes lab down` it, or pick another with NUBES_LAB_UNDERLAY"
            )
        self._save()
        if not _link_exists(self.bridge):
            _ip("link", "add", "name", self.bridge, "type", "bridge")
        _disable_ipv6(self.bridge)  # no IPv6 on the underlay: nothing to guard there
        _ip("link", "set", self.bridge, "mtu", str(self.mtu), "up")
        _nft(self._guard_script())
        _ip("addr", "replace", f"{self.api_address}/{self.underlay.prefixlen}", "dev", self.bridge)

    def _guard_script(self) -> str:
        """Hosts (and so guests NATed by them) reach the root namespace only at the API."""
        dev, table = self.bridge, self.guard_table
        return (
            f"table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n"
            "  chain input {\n"
            "    type filter hook input priority filter - 10; policy accept;\n"
            f'    iifname "{dev}" ct state established,related accept\n'
            f'    iifname "{dev}" ip daddr {self.api_address} tcp dport {self.api_port} accept\n'
            f'    iifname "{dev}" drop\n'
            "  }\n"
            "}\n"
        )

    def ensure_outside(self) -> None:
        """The external network's segment (a bridge without an address, here) and the outside
        host on it: 198.51.100.1, answering ping and HTTP on port 80 with one line of text."""
        if not _link_exists(self.ext_bridge):
            _ip("link", "add", "name", self.ext_bridge, "type", "bridge")
        _disable_ipv6(self.ext_bridge)
        _ip("link", "set", self.ext_bridge, "up")
        ns = self.outside_ns
        netns.create(ns)
        veth = f"{self.prefix}-ox"
        if not _link_exists(veth):
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _disable_ipv6(veth)
        _ip("link", "set", veth, "master", self.ext_bridge, "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "addr", "replace", f"{OUTSIDE_IP}/24", "dev", "eth0")
        site = self.state_dir / "outside"
        site.mkdir(parents=True, exist_ok=True)
        (site / "index.html").write_text(OUTSIDE_LINE + "\n")
        if not netns.pids(ns):  # busybox httpd daemonizes; `lab down` kills it with the rest
            subprocess.run(
                ["ip", "netns", "exec", ns, "busybox", "httpd", "-p", "80", "-h", str(site)],
                check=True,
                capture_output=True,
            )

    def _ensure_host(self, host: LabHost) -> None:
        netns.create(host.netns)
        ext = f"{host.netns}-ex"  # the host's uplink to the external network: ex0 in it
        if not _link_exists(ext):
            _ip("link", "add", ext, "type", "veth", "peer", "name", EXT_UPLINK, "netns", host.netns)
        _disable_ipv6(ext)
        _ip("link", "set", ext, "master", self.ext_bridge, "up")
        _ip("-n", host.netns, "link", "set", EXT_UPLINK, "up")
        veth = self._veth(host)
        if not _link_exists(veth):
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _disable_ipv6(veth)
        _ip("link", "set", veth, "master", self.bridge, "mtu", str(self.mtu), "up")
        cidr = f"{host.underlay_ip}/{self.underlay.prefixlen}"
        _ip("-n", host.netns, "link", "set", "eth0", "mtu", str(self.mtu), "up")
        _ip("-n", host.netns, "addr", "replace", cidr, "dev", "eth0")
        self._ensure_mount_ns(host)

    def _ensure_mount_ns(self, host: LabHost) -> None:
        """The host's own mount namespace, made once and kept until `lab down` (a host's
        disks live in its tmpfs: they survive its agent's restarts, as on a machine)."""
        target = self.mount_ns(host)
        if _is_mountpoint(target):  # made before: the host's files are in it, keep them
            holder = self._holders.get(host.name)
            if holder is None or not _alive(holder):
                self._hold(host)
            return
        self._drop_mount_ns(host)
        self.mnt_dir.mkdir(parents=True, exist_ok=True)
        if not _is_mountpoint(self.mnt_dir):  # a namespace is bound only on a private mount
            subprocess.run(["mount", "--bind", self.mnt_dir, self.mnt_dir], check=True)
            subprocess.run(["mount", "--make-private", self.mnt_dir], check=True)
        target.touch()
        netns_path = f"/run/netns/{netns.check_name(host.netns)}"
        steps = [
            # its own /sys, as `ip netns exec` gives (made while /run/netns is still visible)
            "umount -l /sys",
            f"nsenter --net={netns_path} mount -t sysfs nubes-sys /sys",
        ]
        # what the host must still run from (this checkout and its venv, say under /tmp) is
        # bound aside under the new /run before /tmp and the rest are covered, then moved back
        carried = carried_paths(self.private_dirs())
        for i, where in enumerate(self.private_dirs()):
            steps.append(
                f"mkdir -p '{where}' && mount -t tmpfs -o mode=0755 nubes-private '{where}'"
            )
            if i == 0:  # /run: the place to keep things aside
                steps += [
                    f"mkdir -p /run/nubes-carry/{n} && mount --bind '{path}' /run/nubes-carry/{n}"
                    for n, path in enumerate(carried)
                ]
        steps += [
            f"mkdir -p '{path}' && mount --move /run/nubes-carry/{n} '{path}'"
            for n, path in enumerate(carried)
        ]
        steps += ["rm -rf /run/nubes-carry", "chmod 1777 /tmp"]
        subprocess.run(
            [
                "unshare",
                f"--mount={target}",
                "--propagation",
                "private",
                "--",
                "sh",
                "-ec",
                "; ".join(steps),
            ],
            check=True,
            capture_output=True,
        )
        self._hold(host)

    def _hold(self, host: LabHost) -> None:
        """A process that sleeps in the host's mount namespace, for host_root()."""
        sleeper = subprocess.Popen(
            ["nsenter", f"--mount={self.mount_ns(host)}", "--wd=/", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._holders[host.name] = sleeper.pid
        self._save()

    def _drop_mount_ns(self, host: LabHost) -> None:
        self._holders.pop(host.name, None)
        _drop_mount_file(self.mount_ns(host))

    # -- processes -----------------------------------------------------------------------------

    def exec_argv(self, host: LabHost, argv: list[str]) -> list[str]:
        """argv run inside the host: its network and mount namespaces."""
        return [
            "nsenter",
            f"--mount={self.mount_ns(host)}",
            f"--net=/run/netns/{netns.check_name(host.netns)}",
            "--wd=/",
            "--",
            *argv,
        ]

    def spawn(
        self, host: LabHost, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> int:
        """Start a background process (an agent) in the host's namespace; its pid.
        env is added to this process's environment. The process outlives this one."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                self.exec_argv(host, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # no terminal signals from the shell that ran `lab up`
            )
        self._pids.setdefault(host.name, []).append(proc.pid)
        self._save()
        return proc.pid

    # -- looking and tearing down --------------------------------------------------------------

    def _known_namespaces(self) -> list[str]:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-h\d+$")
        names = {h.netns for h in self._hosts}
        names.update(n for n in netns.list_names(self.prefix + "-h") if pattern.match(n))
        if netns.exists(self.outside_ns):
            names.add(self.outside_ns)
        return sorted(names)

    def status(self) -> LabStatus:
        st = LabStatus(self.bridge, _link_exists(self.bridge), str(self.underlay))
        for host in self._hosts:
            exists = netns.exists(host.netns)
            st.hosts.append(
                HostStatus(
                    host=host,
                    netns=exists,
                    veth=_link_exists(self._veth(host)),
                    pids=netns.pids(host.netns) if exists else [],
                )
            )
        return st

    def destroy(self, timeout: float = 5.0, guests: Iterable[str] = ()) -> None:
        """Kill every process in our namespaces, delete them, their veths and the bridge, and
        forget the lab. Idempotent; also finds namespaces a lost state file forgot.

        QEMU leaves its socket directory behind when it is killed, and the lab's hosts share
        /run: those of the guests found running go, and of `guests` (every instance the hosts
        had: a host killed on purpose has no QEMU left to find)."""
        guests = set(guests)
        for ns in self._known_namespaces():
            guests.update(_guest_ids(ns))
            kill_namespace_processes(ns, timeout)
            _delete_link(f"{ns}-ul")  # takes eth0 in the namespace with it
            netns.delete(ns)
        for host in self._hosts:
            self._drop_mount_ns(host)
        for left in self.mnt_dir.glob("*") if self.mnt_dir.exists() else ():
            _drop_mount_file(left)  # also those a lost state file forgot
        if _is_mountpoint(self.mnt_dir):
            subprocess.run(["umount", "-l", self.mnt_dir], capture_output=True)
        for link in (f"{self.prefix}-ox", *(f"{h.netns}-ex" for h in self._hosts)):
            _delete_link(link)
        for bridge in (self.bridge, self.ext_bridge):
            _delete_link(bridge)
        subprocess.run(["nft", "delete", "table", "inet", self.guard_table], capture_output=True)
        for instance_id in guests:
            if _SAFE_ID.fullmatch(instance_id):
                shutil.rmtree(SOCKET_ROOT / instance_id, ignore_errors=True)
        self._hosts = []
        self._pids = {}
        self._holders = {}
        self.state_path.unlink(missing_ok=True)


def kill_namespace_processes(ns: str, timeout: float = 5.0) -> None:
    """Agents first (a dying agent could still start a dnsmasq or a guest), then everything
    else in the namespace, and their descendants (a container's processes are in namespaces
    of their own, children of the host's runc), until nothing is left."""
    agents = [p for p in netns.pids(ns) if _is_agent(p)]
    _kill_pids(ns, agents, timeout)
    for _ in range(5):
        if not [p for p in _with_descendants(netns.pids(ns)) if p != os.getpid()]:
            return
        _kill_pids(ns, None, timeout)
    left = [p for p in _with_descendants(netns.pids(ns)) if p != os.getpid() and _alive(p)]
    if left:
        raise LabError(f"processes {left} in {ns} survived SIGKILL")


_SAFE_ID = re.compile(r"[A-Za-z0-9-]+")  # an instance id, never a path


def _guest_ids(ns: str) -> list[str]:
    """The instances whose QEMU runs in the namespace."""
    return [g for g in map(guest_of, netns.pids(ns)) if g is not None]


def carried_paths(private: list[str]) -> list[str]:
    """This checkout and the Python environment running it, where a host's private tmpfs
    would hide them (a clone under /tmp): the host must still run `nubes` from them."""
    wanted = [Path(sys.prefix).resolve(), Path(nubes.__file__).resolve().parents[2]]
    covered = [Path(p) for p in private if p != "/run"]
    inside = [w for w in wanted if any(w.is_relative_to(c) for c in covered)]
    outermost = [w for w in inside if not any(w != o and w.is_relative_to(o) for o in inside)]
    return [str(p) for p in dict.fromkeys(outermost)]


def _drop_mount_file(target: Path) -> None:
    """Kill whatever still lives in the mount namespace bound at target (the sleeper; agents
    and guests are gone with the network namespace), unbind it and remove the file."""
    if _is_mountpoint(target):
        inode = os.stat(target).st_ino  # the namespace's own inode, as /proc/<pid>/ns/mnt has
        inside = [p for p in _all_pids() if _mount_ns_inode(p) == inode and p != os.getpid()]
        for pid in inside:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(inside)
        subprocess.run(["umount", "-l", target], capture_output=True)
    target.unlink(missing_ok=True)


def _all_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def _mount_ns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _is_mountpoint(path: Path) -> bool:
    """From mountinfo: os.path.ismount misses a directory bound onto itself (same device)."""
    target = str(path.resolve()).replace(" ", "\\040")
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == target for line in lines)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _with_descendants(pids: list[int]) -> list[int]:
    parents: dict[int, int] = {}
    for pid in _all_pids():
        try:  # the ppid follows the command name, which may hold spaces and parentheses
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found = set(pids)
    grew = True
    while grew:
        more = {p for p, parent in parents.items() if parent in found and p not in found}
        found |= more
        grew = bool(more)
    return sorted(found)


def _is_agent(pid: int) -> bool:
    try:
        return b"nubes.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_pids(ns: str, only: list[int] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL what is left after timeout (all of the namespace if only is None)."""
    me = os.getpid()
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        every = _with_descendants(netns.pids(ns)) if only is None else only
        pids = [p for p in every if p != me and _alive(p)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pids)
            if not [p for p in pids if _alive(p)]:
                return
            time.sleep(0.05)


def _reap(pids: list[int]) -> None:
    """Collect those of the killed processes that are our own children (agents spawned by this
    process), so they do not linger as zombies. Never waits for anything else."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _delete_link(name: str) -> None:
    """Delete the link if it is there. A veth whose other end was in a namespace just deleted
    goes by itself, a moment later (the kernel cleans namespaces up asynchronously): checking
    first and deleting then would race with that."""
    proc = subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, text=True)
    if proc.returncode != 0 and _link_exists(name):
        raise LabError(f"ip link del {name}: {proc.stderr.strip()}")


def _link_exists(name: str) -> bool:
    proc = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False)
    return proc.returncode == 0


def _disable_ipv6(dev: str) -> None:
    path = Path("/proc/sys/net/ipv6/conf") / dev / "disable_ipv6"
    if path.exists():
        path.write_text("1")


def _addresses_in(net: ipaddress.IPv4Network, besides: str) -> list[str]:
    """Addresses of this namespace inside net, on links other than `besides` ("addr on dev")."""
    proc = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    found = []
    for link in json.loads(proc.stdout or "[]"):
        for addr in link.get("addr_info", []):
            ip = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}")
            if link["ifname"] != besides and ip.network.overlaps(net):
                found.append(f"{ip} on {link['ifname']}")
    return found


def _nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"nft: {proc.stderr.strip()}")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
