"""Driver registry: the settings name the drivers; the fake ones serve functional tests."""

from __future__ import annotations

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

        return QemuDriver(layout.runtime, settings.qemu_binary)
    raise ValueError(f"unknown hypervisor driver {settings.hypervisor_driver!r} (qemu, fake)")


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
