"""Where an agent keeps things on its host. Every name is derived from ids."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class LocalState:
    """What the agent needs to remember about an instance across its own restarts."""

    built: bool = False  # disk, seed and ports are complete
    reboot_gen: int = 0
    console_offset: int = 0  # readiness is looked for after this point of the console log
    ready: bool = False
    vnc_password: str = ""
    running_expected: bool = False  # we started it and did not stop it


@dataclass(frozen=True)
class HostLayout:
    root: Path

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime"

    @property
    def network(self) -> Path:
        return self.root / "network"

    def instance_dir(self, instance_id: str) -> Path:
        return self.instances / instance_id

    def disk(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "disk.qcow2"

    def seed(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "seed.iso"

    def console_log(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "console.log"

    def make(self) -> None:
        for path in (self.instances, self.images, self.runtime, self.network):
            path.mkdir(parents=True, exist_ok=True)

    def load_state(self, instance_id: str) -> LocalState:
        try:
            data = json.loads((self.instance_dir(instance_id) / "agent.json").read_text())
            return LocalState(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return LocalState()

    def save_state(self, instance_id: str, state: LocalState) -> None:
        path = self.instance_dir(instance_id) / "agent.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(state), fh)
        os.replace(tmp, path)
