"""The ovsdb-server and ovs-vswitchd of one host, started and supervised by its agent.

Every host (a lab host is a network namespace) gets its own pair, with its database, pidfiles,
control sockets and logs under the driver's state directory: OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR
point there, so `ovs-ofctl br-int` finds that host's bridge and never a system-wide OVS. Where
the kernel has no openvswitch module (this machine kind: no /proc/modules at all) vswitchd runs
with `--disable-system` and bridges use the userspace (netdev) datapath.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nubes.errors import DriverError

log = logging.getLogger(__name__)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
TIMEOUT = 30.0


def kernel_datapath() -> bool:
    """Does this kernel have the openvswitch module loaded (or built in)?"""
    try:
        mods = Path("/proc/modules").read_text()
    except OSError:
        mods = ""
    return (
        any(line.split(" ", 1)[0] == "openvswitch" for line in mods.splitlines())
        or Path("/sys/module/openvswitch").is_dir()
    )


def installed() -> bool:
    return SCHEMA.exists() and all(
        any((Path(d) / b).exists() for d in ("/usr/sbin", "/usr/bin"))
        for b in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")
    )


@dataclass(frozen=True)
class OvsPaths:
    root: Path  # everything of this host's OVS lives under it

    @property
    def db(self) -> Path:
        return self.root / "conf.db"

    @property
    def sock(self) -> Path:
        return self.root / "db.sock"

    def pidfile(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def ctl(self, daemon: str) -> Path:
        return self.root / f"{daemon}.ctl"

    def log(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    def env(self) -> dict[str, str]:
        d = str(self.root)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}


def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DriverError(f"{what}: {e}") from e
    if proc.returncode != 0:
        raise DriverError(f"{what} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def pid_of(paths: OvsPaths, daemon: str) -> int | None:
    """The daemon's pid if its pidfile names a live process that is that daemon."""
    try:
        pid = int(paths.pidfile(daemon).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    argv0 = cmdline.split(b"\0", 1)[0]
    # a zombie has an empty cmdline; another process may have taken a stale pid
    return pid if argv0.endswith(daemon.encode()) else None


def server_argv(paths: OvsPaths) -> list[str]:
    return [
        "ovsdb-server",
        str(paths.db),
        f"--remote=punix:{paths.sock}",
        f"--pidfile={paths.pidfile('ovsdb-server')}",
        f"--unixctl={paths.ctl('ovsdb-server')}",
        f"--log-file={paths.log('ovsdb-server')}",
        "--detach",
        "--no-chdir",
    ]


def vswitchd_argv(paths: OvsPaths, kernel: bool) -> list[str]:
    argv = [
        "ovs-vswitchd",
        f"unix:{paths.sock}",
        f"--pidfile={paths.pidfile('ovs-vswitchd')}",
        f"--unixctl={paths.ctl('ovs-vswitchd')}",
        f"--log-file={paths.log('ovs-vswitchd')}",
        "--detach",
        "--no-chdir",
    ]
    return argv if kernel else [*argv, "--disable-system"]


class OvsDaemons:
    """ensure() is level-triggered: it starts whichever of the two is not running. It returns
    True when it (re)started ovs-vswitchd, which forgets every flow: the caller reprograms."""

    def __init__(self, root: Path, kernel: bool | None = None) -> None:
        self.paths = OvsPaths(root)
        self.kernel = kernel_datapath() if kernel is None else kernel

    @property
    def datapath_type(self) -> str:
        return "system" if self.kernel else "netdev"

    def ensure(self) -> bool:
        p = self.paths
        env = p.env()
        p.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if pid_of(p, "ovsdb-server") is None:
            if not p.db.exists():
                _run(["ovsdb-tool", "create", str(p.db), str(SCHEMA)], env, "ovsdb-tool create")
            log.info("starting ovsdb-server (%s)", p.root)
            _run(server_argv(p), env, "ovsdb-server")
            _run(["ovs-vsctl", f"--db=unix:{p.sock}", "--no-wait", "init"], env, "ovs-vsctl init")
        if pid_of(p, "ovs-vswitchd") is not None:
            return False
        log.warning("starting ovs-vswitchd (%s, %s datapath)", p.root, self.datapath_type)
        _run(vswitchd_argv(p, self.kernel), env, "ovs-vswitchd")
        return True

    def vsctl(self, *args: str) -> str:
        p = self.paths
        argv = ["ovs-vsctl", f"--db=unix:{p.sock}", "--timeout=20", *args]
        return _run(argv, p.env(), "ovs-vsctl")

    def ofctl(self, *args: str, stdin: str | None = None) -> str:
        # --no-names: our flows name no port or table, and without it every call first fetches
        # the switch's port and table descriptions (tens of KB, ~10 ms of a ~15 ms call)
        argv = ["ovs-ofctl", "-O", "OpenFlow13", "--no-names", *args]
        if stdin is None:
            return _run(argv, self.paths.env(), "ovs-ofctl")
        try:
            proc = subprocess.run(
                argv, env=self.paths.env(), input=stdin, capture_output=True, text=True,
                timeout=TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DriverError(f"ovs-ofctl: {e}") from e
        if proc.returncode != 0:
            raise DriverError(f"ovs-ofctl failed: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self) -> None:
        """Both daemons gone (a teardown); the database stays unless the caller removes it."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pid = pid_of(self.paths, daemon)
            if pid is not None:
                try:
                    os.kill(pid, 15)
                except ProcessLookupError:
                    pass
