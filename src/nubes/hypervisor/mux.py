"""One driver for the agent, two underneath: QEMU guests and runc containers. An instance is a
container if its spec says so (spawn, power_on) or the container driver knows its id."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from nubes.hypervisor.base import (
    Capabilities,
    HostResources,
    HypervisorDriver,
    HypervisorEvent,
    InstanceInfo,
    InstanceSpec,
)
from nubes.hypervisor.runc.driver import RuncDriver


class MuxDriver(HypervisorDriver):
    def __init__(self, vm: HypervisorDriver, containers: RuncDriver) -> None:
        self.vm = vm
        self.containers = containers

    def _for(self, instance_id: str) -> HypervisorDriver:
        return self.containers if self.containers.knows(instance_id) else self.vm

    def capabilities(self) -> Capabilities:
        return self.vm.capabilities()

    def host_resources(self) -> HostResources:
        return self.vm.host_resources()

    def list_instances(self) -> list[InstanceInfo]:
        return self.vm.list_instances() + self.containers.list_instances()

    def info(self, instance_id: str) -> InstanceInfo:
        return self._for(instance_id).info(instance_id)

    def spawn(self, spec: InstanceSpec) -> InstanceInfo:
        return (self.containers if spec.container else self.vm).spawn(spec)

    def destroy(self, instance_id: str) -> None:
        self._for(instance_id).destroy(instance_id)

    def power_on(self, spec: InstanceSpec) -> InstanceInfo:
        return (self.containers if spec.container else self.vm).power_on(spec)

    def power_off(self, instance_id: str, timeout: float = 10.0) -> None:
        self._for(instance_id).power_off(instance_id, timeout)

    def reboot(self, instance_id: str, hard: bool = False) -> None:
        self._for(instance_id).reboot(instance_id, hard)

    def exec_argv(self, instance_id: str, argv: list[str], tty: bool = False) -> list[str]:
        return self._for(instance_id).exec_argv(instance_id, argv, tty)

    def runtimes(self) -> tuple[str, ...]:
        return ("qemu", "runc")

    def events(self) -> Iterator[HypervisorEvent]:
        return self.vm.events()

    def console_socket(self, instance_id: str, kind: str) -> Path | None:
        return self._for(instance_id).console_socket(instance_id, kind)

    def set_vnc_password(self, instance_id: str, password: str, expires_in: int) -> None:
        self._for(instance_id).set_vnc_password(instance_id, password, expires_in)

    # a container has no CD, volumes or pause point: those go to its driver, which refuses or
    # has nothing to do (the API refuses them for containers first)
    def eject_cdrom(self, instance_id: str) -> None:
        self._for(instance_id).eject_cdrom(instance_id)

    def attached_volumes(self, instance_id: str) -> set[str]:
        return self._for(instance_id).attached_volumes(instance_id)

    def volume_ports(self, instance_id: str) -> dict[str, str]:
        return self._for(instance_id).volume_ports(instance_id)

    def attach_volume(self, instance_id: str, volume_id: str, path: Path) -> None:
        self._for(instance_id).attach_volume(instance_id, volume_id, path)

    def detach_volume(self, instance_id: str, volume_id: str, timeout: float = 30.0) -> None:
        self._for(instance_id).detach_volume(instance_id, volume_id, timeout)

    @contextlib.contextmanager
    def paused(self, instance_id: str) -> Iterator[None]:
        with self._for(instance_id).paused(instance_id):
            yield
