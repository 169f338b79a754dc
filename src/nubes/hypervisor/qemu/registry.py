"""The driver's memory across agent restarts: one JSON file per instance under runtime_root.

It is written before QEMU starts (so a crash mid-spawn still leaves a trace the next agent can
clean up) and removed by destroy. It holds the spec, so a soft reboot or a new driver object
can restart the guest, and the pid last seen, as a fallback when QEMU has removed its pidfile.
Files are 0600 in a 0700 directory: the spec carries the VNC password.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nubes.hypervisor.base import BootSpec, InstanceSpec, NicSpec
from nubes.hypervisor.qemu.cmdline import INSTANCE_ID_RE

log = logging.getLogger("nubes.hypervisor")

FORMAT_VERSION = 1


@dataclass
class Record:
    spec: InstanceSpec
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    stopped: bool = False  # powered off on request, as opposed to exited by itself


def spec_to_dict(spec: InstanceSpec) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(asdict(spec), default=str))
    return data


def spec_from_dict(data: dict[str, Any]) -> InstanceSpec:
    def opt_path(value: str | None) -> Path | None:
        return Path(value) if value else None

    boot = data.get("boot") or {}
    return InstanceSpec(
        id=data["id"],
        vcpus=int(data["vcpus"]),
        ram_mb=int(data["ram_mb"]),
        disk=Path(data["disk"]),
        seed=opt_path(data.get("seed")),
        instance_dir=Path(data["instance_dir"]),
        nics=tuple(NicSpec(**nic) for nic in data.get("nics", ())),
        boot=BootSpec(
            kernel=opt_path(boot.get("kernel")),
            initrd=opt_path(boot.get("initrd")),
            cmdline=boot.get("cmdline", ""),
        ),
        vnc_password=data.get("vnc_password", ""),
        run_as=data.get("run_as", ""),
        cdrom=opt_path(data.get("cdrom")),
        cdrom_once=bool(data.get("cdrom_once", False)),
    )


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, instance_id: str) -> Path:
        if not INSTANCE_ID_RE.match(instance_id):
            raise ValueError(f"invalid instance id {instance_id!r}")
        return self.root / f"{instance_id}.json"

    def save(self, record: Record) -> None:
        """Atomic replace: a reader sees the old record or the new one, never half."""
        payload = {
            "version": FORMAT_VERSION,
            "spec": spec_to_dict(record.spec),
            "argv": record.argv,
            "pid": record.pid,
            "stopped": record.stopped,
        }
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp files are 0600
                json.dump(payload, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(record.spec.id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, instance_id: str) -> Record | None:
        """The record, or None when unknown. An unreadable record is logged and ignored."""
        path = self.path(instance_id)
        try:
            data = json.loads(path.read_text())
            return Record(
                spec=spec_from_dict(data["spec"]),
                argv=list(data.get("argv", [])),
                pid=data.get("pid"),
                stopped=bool(data.get("stopped", False)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable instance record %s: %s", path, exc)
            return None

    def remove(self, instance_id: str) -> None:
        self.path(instance_id).unlink(missing_ok=True)

    def ids(self) -> list[str]:
        return sorted(
            p.stem for p in self.root.glob("*.json")
            if not p.name.startswith(".") and INSTANCE_ID_RE.match(p.stem)
        )  # fmt: skip
