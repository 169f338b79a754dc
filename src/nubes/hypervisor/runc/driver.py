"""Containers under runc, beside QEMU guests (hypervisor/mux.py picks per instance).

Each container runs under a shell shim, detached from the agent (its own session): `runc run`
in the foreground, its stdio (and so the container's) appended to the instance's console.log
(a file, never a pipe: nothing may block on a reader), then the exit status written next to it.
So a container outlives its agent (a restarted agent finds it with `runc state` and adopts it),
and when its init exits we know how. runc's state directory (`--root`) is in the host's runtime
directory: lab hosts, each a mount namespace, never see each other's containers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from nubes.errors import DriverError
from nubes.hypervisor.base import (
    Capabilities,
    HostResources,
    HypervisorDriver,
    InstanceInfo,
    InstanceSpec,
    PowerState,
)
from nubes.hypervisor.runc import bundle

log = logging.getLogger("nubes.runc")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM = 'runc --root "$1" run --bundle "$2" "$3"; echo $? > "$2/exit-status.tmp"; ' \
       'mv "$2/exit-status.tmp" "$2/exit-status"'  # fmt: skip


def ensure_cgroups() -> None:
    """A host whose /sys is a fresh sysfs (a lab host's mount namespace) has no cgroup
    hierarchies mounted: mount cgroup v1's (the same hierarchies as the machine's) so runc
    finds them. Only this mount namespace sees the mounts."""
    if (_CGROUP_ROOT / "memory").is_dir() or (_CGROUP_ROOT / "cgroup.controllers").exists():
        return
    controllers = []
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        name, _hier, _num, enabled = line.split()
        if enabled == "1":
            controllers.append(name)
    _run(["mount", "-t", "tmpfs", "-o", "mode=755", "cgroup", str(_CGROUP_ROOT)])
    for name in controllers:
        (_CGROUP_ROOT / name).mkdir(exist_ok=True)
        _run(["mount", "-t", "cgroup", "-o", name, "cgroup", str(_CGROUP_ROOT / name)])
    (_CGROUP_ROOT / "systemd").mkdir(exist_ok=True)
    _run(
        [
            "mount",
            "-t",
            "cgroup",
            "-o",
            "none,name=systemd",
            "cgroup",
            str(_CGROUP_ROOT / "systemd"),
        ]
    )


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise DriverError(f"{' '.join(argv[:4])}: {proc.stderr.strip()[-500:]}")
    return proc


class RuncDriver(HypervisorDriver):
    def __init__(self, runtime_dir: Path, runc: str = "runc") -> None:
        self.root = runtime_dir / "runc"  # runc's own state (--root)
        self.registry = runtime_dir / "containers"  # <id>.json: where each bundle is
        self.runc = runc
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.registry.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cgroups_checked = False

    # -- what the host has --------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return Capabilities(accel="runc")

    def host_resources(self) -> HostResources:
        raise DriverError("the container driver reports no resources of its own")

    def _bundle(self, instance_id: str) -> Path | None:
        try:
            data = json.loads((self.registry / f"{_check(instance_id)}.json").read_text())
        except (OSError, ValueError):
            return None
        return Path(data["bundle"])

    def knows(self, instance_id: str) -> bool:
        return self._bundle(instance_id) is not None

    def _state(self, instance_id: str) -> dict[str, object] | None:
        proc = subprocess.run(  # noqa: S603
            [self.runc, "--root", str(self.root), "state", instance_id],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return None
        state: dict[str, object] = json.loads(proc.stdout)
        return state

    def list_instances(self) -> list[InstanceInfo]:
        return [self.info(p.stem) for p in sorted(self.registry.glob("*.json"))]

    def info(self, instance_id: str) -> InstanceInfo:
        bundle_dir = self._bundle(instance_id)
        if bundle_dir is None:
            return InstanceInfo(instance_id, PowerState.NOSTATE, reason="no such container")
        state = self._state(instance_id)
        status = state.get("status") if state else None
        pid = state.get("pid") if state else None
        if status == "running":
            return InstanceInfo(
                instance_id, PowerState.RUNNING, pid if isinstance(pid, int) else None
            )
        if status == "paused":
            return InstanceInfo(instance_id, PowerState.PAUSED)
        if status == "created":  # between create and start: starting, or a start that died
            return InstanceInfo(instance_id, PowerState.RUNNING)
        return InstanceInfo(instance_id, PowerState.SHUTOFF, reason=_exit_reason(bundle_dir))

    # -- lifecycle --------------------------------------------------------------------------
    def spawn(self, spec: InstanceSpec) -> InstanceInfo:
        c = spec.container
        if c is None:
            raise DriverError("not a container spec")
        _check(spec.id)
        if not self._cgroups_checked:
            ensure_cgroups()
            self._cgroups_checked = True
        bundle_dir = spec.instance_dir
        if not (bundle_dir / "rootfs").is_dir():
            raise DriverError(f"container {spec.id} has no rootfs")
        image = json.loads((bundle_dir / "image.json").read_bytes())
        cfg = bundle.ContainerConfig(
            hostname=c.hostname, args=image["args"], env=image["env"], cwd=image["cwd"],
            uid_base=c.uid_base, nics=c.nics, vcpus=spec.vcpus, ram_mb=spec.ram_mb,
        )  # fmt: skip
        tmp = bundle_dir / "config.json.tmp"
        tmp.write_text(json.dumps(bundle.config(cfg), indent=1))
        os.replace(tmp, bundle_dir / "config.json")
        (self.registry / f"{spec.id}.json").write_text(json.dumps({"bundle": str(bundle_dir)}))
        try:
            return self._launch(spec.id, bundle_dir)
        except BaseException:
            self.destroy(spec.id)  # a failed spawn leaves no state, registry entry or process
            raise

    def _launch(self, instance_id: str, bundle_dir: Path) -> InstanceInfo:
        # runc keeps a container's state in root/<id>: without it there is nothing to ask
        # about (a `runc state` is a process start, ~12 ms of a create here)
        state = self._state(instance_id) if (self.root / instance_id).exists() else None
        if state and state.get("status") in ("running", "created", "paused"):
            return self.info(instance_id)
        if state:  # stopped but not deleted (a shim killed before its runc cleaned up)
            self._delete(instance_id)
        (bundle_dir / "exit-status").unlink(missing_ok=True)
        log_path = bundle_dir / "console.log"
        with open(log_path, "ab") as out, open(os.devnull, "rb") as null:
            shim = subprocess.Popen(  # noqa: S603
                ["/bin/sh", "-c", SHIM, "nubes-runc-shim", str(self.root), str(bundle_dir),
                 instance_id],
                stdin=null, stdout=out, stderr=out, start_new_session=True, close_fds=True,
            )  # fmt: skip
        # reaped by a thread: the shim outlives a restarted agent, and is no zombie of this one
        threading.Thread(target=shim.wait, daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._started(instance_id):
                return self.info(instance_id)
            if shim.poll() is not None or (bundle_dir / "exit-status").exists():
                tail = log_path.read_bytes()[-800:].decode(errors="replace")
                raise DriverError(f"container {instance_id} did not start: {tail.strip()}")
            time.sleep(0.02)
        raise DriverError(f"container {instance_id} did not start in 120 s")

    def _started(self, instance_id: str) -> bool:
        """runc's own test, read from its files: a process exists (state.json) and no longer
        waits on exec.fifo. Polled while the container boots: a `runc state` process each
        time would take CPU from the boot on a small machine."""
        here = self.root / instance_id
        return (here / "state.json").exists() and not (here / "exec.fifo").exists()

    def power_on(self, spec: InstanceSpec) -> InstanceInfo:
        return self.spawn(spec)

    def _signal(self, instance_id: str, sig: str) -> None:
        subprocess.run(  # noqa: S603
            [self.runc, "--root", str(self.root), "kill", instance_id, sig],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip

    def _wait_stopped(self, instance_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._state(instance_id)
            if state is None or state.get("status") == "stopped":
                return True
            time.sleep(0.05)
        return False

    def _delete(self, instance_id: str) -> None:
        subprocess.run(  # noqa: S603
            [self.runc, "--root", str(self.root), "delete", "--force", instance_id],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip

    def power_off(self, instance_id: str, timeout: float = 10.0) -> None:
        if self._state(instance_id) is None:
            return
        self._signal(instance_id, "TERM")
        if not self._wait_stopped(instance_id, timeout):
            self._signal(instance_id, "KILL")
            self._wait_stopped(instance_id, 30)
        self._delete(instance_id)  # the shim's runc deletes it too; whichever comes first

    def reboot(self, instance_id: str, hard: bool = False) -> None:
        bundle_dir = self._bundle(instance_id)
        if bundle_dir is None:
            raise DriverError(f"no container {instance_id}")
        self.power_off(instance_id, timeout=0.0 if hard else 10.0)
        self._wait_shim(bundle_dir)
        self._launch(instance_id, bundle_dir)

    def _wait_shim(self, bundle_dir: Path, timeout: float = 30) -> None:
        """The shim writes the exit status once its runc has returned (and cleaned up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (bundle_dir / "exit-status").exists():
            time.sleep(0.05)

    def destroy(self, instance_id: str) -> None:
        _check(instance_id)
        bundle_dir = self._bundle(instance_id)
        if self._state(instance_id) is not None:
            self._signal(instance_id, "KILL")
            self._wait_stopped(instance_id, 30)
            self._delete(instance_id)
            if bundle_dir is not None:
                self._wait_shim(bundle_dir, 10)
        (self.registry / f"{instance_id}.json").unlink(missing_ok=True)

    def exec_argv(self, instance_id: str, argv: list[str], tty: bool = False) -> list[str]:
        """The command line that runs argv in the container (runc exec: same namespaces,
        cgroup, seccomp filter and no_new_privileges as its init)."""
        if self._bundle(instance_id) is None:
            raise DriverError(f"no container {instance_id} on this host")
        if not tty:
            return [self.runc, "--root", str(self.root), "exec", instance_id, *argv]
        # runc makes the container's pty and copies it to its own stdio, which must be a
        # terminal: util-linux's script gives it one, and pipes on the other side
        inner = [self.runc, "--root", str(self.root), "exec", "--tty", instance_id, *argv]
        return ["script", "--quiet", "--return", "--command", shlex.join(inner), "/dev/null"]


def _exit_reason(bundle_dir: Path) -> str:
    try:
        code = int((bundle_dir / "exit-status").read_text().strip())
    except (OSError, ValueError):
        return "the container is not running"
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"the container's init was killed by {name} (exit status {code})"
    return f"the container's init exited with status {code}"


def _check(instance_id: str) -> str:
    if not _ID_RE.match(instance_id):
        raise DriverError(f"invalid container id {instance_id!r}")
    return instance_id
