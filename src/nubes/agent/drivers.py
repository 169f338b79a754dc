"""Driver registry: the settings name the drivers; the fake ones serve functional tests."""

from __future__ import annotations

import os
import shutil

from nubes.agent.layout import HostLayout
from nubes.conf import Settings
from nubes.hypervisor.base import HypervisorDriver
from nubes.network.base import NetworkDriver


def make_hypervisor(settings: Settings, layout: HostLayout) -> HypervisorDriver:
    if settings.hypervisor_driver == "fake":
        from nubes.hypervisor.fake import FakeHypervisorDriver

        return FakeHypervisorDriver()
    if settings.hypervisor_driver == "qemu":
        from nubes.hypervisor.qemu.driver import QemuDriver

        vm = QemuDriver(layout.runtime, settings.qemu_binary)
        if not containers_supported():
            return vm
        from nubes.hypervisor.mux import MuxDriver
        from nubes.hypervisor.runc.driver import RuncDriver

        return MuxDriver(vm, RuncDriver(layout.runtime))
    raise ValueError(f"unknown hypervisor driver {settings.hypervisor_driver!r} (qemu, fake)")


def containers_supported() -> bool:
    """Containers run under runc as root (runc 1.1 on cgroup v1; crun refuses this kind)."""
    return os.geteuid() == 0 and shutil.which("runc") is not None


def make_network(settings: Settings, layout: HostLayout) -> NetworkDriver:
    if settings.network_driver == "fake":
        from nubes.network.fake import FakeNetworkDriver

        return FakeNetworkDriver()
    if settings.network_driver == "linuxbridge":
        from nubes.network.linuxbridge import LinuxBridgeDriver

        return LinuxBridgeDriver(layout.network)
    if settings.network_driver == "ovs":
        from nubes.network.ovs import OvsDriver

        return OvsDriver(layout.network)
    raise ValueError(f"unknown network driver {settings.network_driver!r} (linuxbridge, ovs, fake)")
