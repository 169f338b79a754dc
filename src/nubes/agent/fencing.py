"""What a fenced host does: destroy every guest it has, and its networks, then stop.

`nubes host evacuate` fences a host that is down before rebuilding its servers elsewhere
(control/evacuation.py). If that host comes back (a partition healed, a machine powered on
again), its guests are stale copies of servers that now run on other hosts, with the same
addresses and MACs: running them would make two of each. The API answers every request of a
fenced host's credential with 401 and the problem type errors.HOST_FENCED (a plain 401, a
removed or mistyped credential, destroys nothing), and the agent, on hearing it at any of its
requests (register, heartbeat, desired state, report), stops converging and removes every
instance it finds (QEMU processes, disks, seeds, taps) and every network (bridges, overlay
devices, gateway namespaces with their dnsmasq), whatever any record says. It then stays
stopped: a fenced host rejoins only as a new host (`nubes host remove`, then a join).
"""

from __future__ import annotations

import logging

from nubes.agent.instances import InstanceReconciler
from nubes.agent.layout import HostLayout
from nubes.client.core import ApiError
from nubes.errors import HOST_FENCED
from nubes.hypervisor.base import HypervisorDriver
from nubes.network.base import NetworkDriver

log = logging.getLogger("nubes.agent")


def is_fenced(exc: ApiError) -> bool:
    return exc.status == 401 and exc.type == HOST_FENCED


def destroy_everything(
    hypervisor: HypervisorDriver,
    network: NetworkDriver,
    layout: HostLayout,
    instances: InstanceReconciler,
) -> list[str]:
    """Remove every instance and network of this host; returns the instance ids removed. One
    that cannot be removed does not stop the others (it is logged)."""
    found = {i.id for i in hypervisor.list_instances()}
    if layout.instances.is_dir():
        found |= {p.name for p in layout.instances.iterdir()}
    for instance_id in sorted(found):
        log.warning("fenced: destroying instance %s (it runs on another host now)", instance_id)
        _quietly(instances.teardown, instance_id, [])
    for port in network.list_ports():
        _quietly(network.unplug_port, port.tap)
    for net_id in network.list_networks():
        _quietly(network.delete_network, net_id)
    return sorted(found)


def _quietly(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception:
        log.exception("fenced: could not remove %r", args)
