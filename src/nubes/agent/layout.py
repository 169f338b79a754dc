"""Where an agent keeps things on its host. Every name is derived from ids."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from nubes.agent import records


@dataclass
class LocalState:
    """What the agent needs to remember about an instance across its own restarts."""

    built: bool = False  # disk, seed and ports are complete
    reboot_gen: int = 0
    console_offset: int = 0  # readiness is looked for after this point of the console log
    ready: bool = False
    vnc_password: str = ""
    running_expected: bool = False  # we started it and did not stop it
    fault: str = ""  # what the agent repaired, reported until the user next acts on it
    cdrom: bool = False  # the running QEMU was started with the installer CD
    rebuild_gen: int = 0  # the last rebuild and resize carried out (agent/lifecycle.py)
    resize_gen: int = 0


@dataclass(frozen=True)
class Loaded:
    """An instance's record as read: `damage` says why it could not be used as written (the
    state then holds what could be read); `exists` False: there was no record at all."""

    state: LocalState = field(default_factory=LocalState)
    damage: str = ""
    exists: bool = False


@dataclass
class CloudRecord:
    """Which cloud this host belongs to (the first cloud id it saw), and the last `nubes gc`
    request it carried out."""

    cloud_id: str = ""
    gc_done: int = 0


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
    def volumes(self) -> Path:
        return self.root / "volumes"

    def volume(self, volume_id: str) -> Path:
        return self.volumes / f"{volume_id}.qcow2"

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
        for path in (self.instances, self.images, self.runtime, self.network, self.volumes):
            path.mkdir(parents=True, exist_ok=True)

    @property
    def cloud(self) -> Path:
        return self.root / "cloud.json"

    def record(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "agent.json"

    def load_state(self, instance_id: str) -> Loaded:
        read = records.read_record(self.record(instance_id), LocalState)
        return Loaded(LocalState(**read.values), read.damage, read.exists)

    def save_state(self, instance_id: str, state: LocalState) -> None:
        records.write_record(self.record(instance_id), asdict(state))
