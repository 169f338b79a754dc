"""Fixtures for real-host tests: a lab cloud driven through the `nubes` command."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nubes.client import NubesClient
from nubes.network import netns, ovs_daemons
from nubes.network.base import bridge_name
from nubes.network.gateway import veth_name

CACHE = Path(os.environ.get("NUBES_TEST_CACHE", "/var/cache/nubes-test"))


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@dataclass
class LabCloud:
    env: dict[str, str]
    state_dir: Path
    prefix: str
    client: NubesClient
    network_driver: str = "linuxbridge"  # the hosts' (lab up --network-driver)

    def nubes(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run the CLI; env is added to the lab's (agents and the API started by it inherit it)."""
        proc = subprocess.run(
            [sys.executable, "-m", "nubes.cli", *args],
            env={**self.env, **(env or {})},
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"nubes {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def host_ns(self, index: int = 1) -> str:
        return f"{self.prefix}-h{index}"

    def host_root(self, index: int = 1) -> Path:
        """The host's filesystem as the host sees it (its own mount namespace): the only
        way to its files from here, as from another machine's console."""
        holders = json.loads((self.state_dir / "lab" / "lab.json").read_text())["holders"]
        return Path(f"/proc/{holders[self.host_ns(index)]}/root")

    def host_path(self, path: str | Path, index: int = 1) -> Path:
        """An absolute path on the host, seen from here."""
        return self.host_root(index) / str(path).lstrip("/")

    def in_host_mounts(self, argv: list[str], index: int = 1, check: bool = True) -> None:
        """Run argv in the host's mount namespace (a mount made there is the host's alone)."""
        where = self.state_dir / "lab" / "mnt" / self.host_ns(index)
        subprocess.run(["nsenter", f"--mount={where}", "--", *argv], check=check)

    def host_dir(self, index: int = 1) -> Path:
        """The host's agent's state directory (instances, images, identity), seen from here."""
        return self.host_path(self.state_dir / "hosts" / self.host_ns(index), index)

    def in_host(self, argv: list[str], index: int = 1) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.host_ns(index), *argv],
            text=True,
            capture_output=True,
            check=True,
        ).stdout

    def host_pids(self, index: int = 1) -> list[int]:
        """Every process of the host, as on a machine of its own: those in its network
        namespace and those in its mount namespace (its gateways' dnsmasq), but the lab's
        holder that keeps the mount namespace for host_root()."""
        holders = json.loads((self.state_dir / "lab" / "lab.json").read_text())["holders"]
        holder = holders.get(self.host_ns(index))
        mounts = self.state_dir / "lab" / "mnt" / self.host_ns(index)
        inode = os.stat(mounts).st_ino if mounts.exists() else -1
        found = set(netns.pids(self.host_ns(index)))
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.stat(proc / "ns" / "mnt").st_ino == inode:
                    found.add(int(proc.name))
            except OSError:
                continue
        return sorted(found - {holder, os.getpid()})

    def index_of(self, host_ns: str) -> int:
        return int(host_ns.rsplit("-h", 1)[1])

    def gateway_ns(self, network_id: str) -> tuple[int, str]:
        """(host index, namespace) of a network's gateway, on whichever host serves it now.
        A host's named namespaces are in its own /run/netns, as on a machine of its own."""
        found = []
        index = 1
        while netns.exists(self.host_ns(index)):
            where = self.host_path("/run/netns", index)
            names = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
            found += [(index, n) for n in names if n.endswith("-" + network_id)]
            index += 1
        assert len(found) == 1, f"gateway namespaces of {network_id}: {found}"
        return found[0]

    def in_gateway(self, network_id: str, argv: list[str], check: bool = True) -> str:
        """Run argv where the network's gateway lives (its DHCP server, metadata, NAT)."""
        index, name = self.gateway_ns(network_id)
        mounts = self.state_dir / "lab" / "mnt" / self.host_ns(index)
        return subprocess.run(
            ["nsenter", f"--mount={mounts}", "--", "ip", "netns", "exec", name, *argv],
            text=True,
            capture_output=True,
            check=check,
        ).stdout


def free_underlay() -> str:
    """A 10.254.x.0/24 no interface of this machine has an address in (a lab left up by a user,
    or by a killed run, keeps its own)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    free = [x for x in range(256) if f" 10.254.{x}." not in used]
    return f"10.254.{secrets.choice(free)}.0/24"


def start_lab(
    tmp_path: Path, hosts: int, lab_args: tuple[str, ...] = (), **extra_env: str
) -> LabCloud:
    """extra_env: settings for the lab's API and agents, e.g. NUBES_DATABASE_URL; lab_args:
    more options of `nubes lab up` (e.g. --network-driver ovs)."""
    needs_root()
    prefix = "t" + secrets.token_hex(2)
    state = tmp_path / "state"
    env = dict(os.environ)
    env.update(
        NUBES_STATE_DIR=str(state),
        NUBES_CACHE_DIR=str(CACHE),
        NUBES_LAB_PREFIX=prefix,
        # its own underlay: a user's lab (`make demo` leaves one up) keeps 10.255.0.0/24
        NUBES_LAB_UNDERLAY=free_underlay(),
        NUBES_API_PORT=str(20000 + secrets.randbelow(20000)),
        # hosts seen down within seconds (the defaults, Nova's 10 s and 60 s, are for 1,000)
        NUBES_HEARTBEAT_INTERVAL="2",
        NUBES_HOST_DOWN_AFTER="6",
    )
    env.update(extra_env)
    env.pop("NUBES_URL", None)
    env.pop("NUBES_TOKEN", None)
    cloud = LabCloud(env, state, prefix, None)  # type: ignore[arg-type]
    if "--network-driver" in lab_args:
        cloud.network_driver = lab_args[lab_args.index("--network-driver") + 1]
    try:
        cloud.nubes("lab", "up", "--hosts", str(hosts), *lab_args, timeout=120)
    except BaseException:
        cloud.nubes("lab", "down", check=False, timeout=120)  # a failed start leaves nothing
        raise
    token = json.loads((state / "client.json").read_text())["token"]
    cloud.client = NubesClient(f"unix://{state / 'api.sock'}", token)
    return cloud


def processes_of(state_dir: Path) -> list[int]:
    """Processes started for this state directory (the API, agents), found by environment."""
    marker = f"NUBES_STATE_DIR={state_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def stop_lab(cloud: LabCloud) -> None:
    cloud.client.close()
    down = subprocess.run(
        [sys.executable, "-m", "nubes.cli", "lab", "down"],
        env=cloud.env, text=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 0, f"lab down failed:\n{down.stdout}\n{down.stderr}"
    assert not processes_of(cloud.state_dir), "lab down left processes of its state directory"
    leftovers = netns.list_names(cloud.prefix + "-")
    assert not leftovers, f"lab down left namespaces: {leftovers}"
    mounts = [
        m
        for m in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(cloud.state_dir) in m
    ]
    assert not mounts, f"lab down left mounts: {mounts}"
    marker = str(cloud.state_dir).encode()
    procs = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                procs.append(proc.name)
        except OSError:
            continue
    assert not procs, f"lab down left processes: {procs}"


@pytest.fixture
def lab1(tmp_path: Path) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path, 1)
    try:
        yield cloud
    finally:
        stop_lab(cloud)


NETWORK_DRIVERS = ("linuxbridge", "ovs")


def driver_args(driver: str) -> tuple[str, ...]:
    """`nubes lab up` options for the hosts' network driver (skips where OVS is missing)."""
    if driver == "ovs" and not ovs_daemons.installed():
        pytest.skip("Open vSwitch is not installed")
    return ("--network-driver", driver)


@pytest.fixture(params=NETWORK_DRIVERS)
def lab1_each_driver(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabCloud]:
    """A 1-host lab on each network driver in turn."""
    cloud = start_lab(tmp_path, 1, lab_args=driver_args(request.param))
    try:
        yield cloud
    finally:
        stop_lab(cloud)


def network_link(cloud: LabCloud, network_id: str) -> str:
    """The link a network has on the host serving its gateway: its Linux bridge, or on OVS
    (whose br-int carries every network) the host's end of its gateway's veth."""
    if cloud.network_driver == "ovs":
        return veth_name(network_id)
    return bridge_name(network_id)


def ovs_vsctl(cloud: LabCloud, index: int, *args: str) -> str:
    """ovs-vsctl against the host's own ovsdb-server, in its own mount namespace."""
    host = cloud.host_ns(index)
    mounts = cloud.state_dir / "lab" / "mnt" / host
    sock = cloud.state_dir / "hosts" / host / "network" / "ovs" / "db.sock"
    argv = ["nsenter", f"--mount={mounts}", "--", "ovs-vsctl", f"--db=unix:{sock}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def ovs_rows(cloud: LabCloud, index: int = 1) -> list[Any]:
    """The OVS ports of a host, as its agent's driver reads them (name, tag, external_ids)."""
    from nubes.network.ovs import parse_snapshot

    out = ovs_vsctl(
        cloud, index, "-f", "json",
        "--", "--columns=name,tag,external_ids", "list", "Port",
        "--", "--columns=name,ofport,ofport_request", "list", "Interface",
    )  # fmt: skip
    return parse_snapshot(out)


def guest_taps(cloud: LabCloud, index: int = 1) -> dict[str, str]:
    """MAC -> tap of every guest on the host, from its QEMU's command line."""
    taps = {}
    for pid in cloud.host_pids(index):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if not argv[0].endswith("qemu-system-x86_64"):
            continue
        nets = [a for a in argv if "ifname=" in a]
        macs = [a for a in argv if "mac=" in a]
        for net, dev in zip(nets, macs, strict=False):
            tap = dict(kv.split("=", 1) for kv in net.split(",") if "=" in kv)["ifname"]
            mac = dict(kv.split("=", 1) for kv in dev.split(",") if "=" in kv)["mac"]
            taps[mac.lower()] = tap
    return taps


def isolation_points(
    cloud: LabCloud, network_id: str, guest_macs: set[str], index: int = 1, gateway: bool = True
) -> list[str] | None:
    """Where to see every frame that reaches a network's guests and gateway on a host: its
    bridge (every frame between its ports), or on OVS each guest's tap and, if the host
    serves the network (gateway), its gateway's veth. None while one is not there yet."""
    links = cloud.in_host(["ip", "-o", "link"], index)

    def there(name: str) -> bool:
        return bool(name) and re.search(rf"^\d+: {re.escape(name)}[:@]", links, re.M) is not None

    if cloud.network_driver != "ovs":
        name = bridge_name(network_id)
        return [name] if there(name) else None
    taps = guest_taps(cloud, index)
    points = [veth_name(network_id)] if gateway else []
    points += [taps.get(m.lower(), "") for m in sorted(guest_macs)]
    return points if all(there(p) for p in points) else None
