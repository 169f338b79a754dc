"""nubes instances as Nova 2.1 servers: a page of them in a fixed number of queries."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.api import redact
from nubes.control.caller import Caller
from nubes.control.compute import host_up
from nubes.db.models import (
    ExternalAddress,
    Host,
    Instance,
    InstanceSecurityGroup,
    Network,
    Port,
    SecurityGroup,
)
from nubes.openstack.http import iso_z, usage_time

VM_STATE = {
    "BUILD": "building",
    "ACTIVE": "active",
    "SHUTOFF": "stopped",
    "ERROR": "error",
    "DELETED": "deleted",
}
POWER_STATE = {"ACTIVE": 1, "SHUTOFF": 4}  # 0: no state; 1 running, 4 shutdown
TASK_STATE = {
    "starting": "powering-on",
    "stopping": "powering-off",
    "rebooting": "rebooting",
    "deleting": "deleting",
}


def link(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    return [
        {"rel": "self", "href": f"{base}/compute/v2.1/{kind}/{ident}"},
        {"rel": "bookmark", "href": f"{base}/compute/{kind}/{ident}"},
    ]


class Related:
    """What a page of servers refers to, read once for the page."""

    def __init__(self, session: Session, insts: list[Instance]) -> None:
        ids = [i.id for i in insts]
        self.ports: dict[str, list[tuple[Port, str]]] = defaultdict(list)
        rows = session.execute(
            select(Port, Network.name)
            .join(Network, Network.id == Port.network_id)
            .where(Port.instance_id.in_(ids))
            .order_by(Port.position)
        ).all()
        for port, net_name in rows:
            self.ports[port.instance_id].append((port, net_name))
        port_ids = [p.id for p, _ in rows]
        self.floating = dict(
            session.execute(
                select(ExternalAddress.port_id, ExternalAddress.address).where(
                    ExternalAddress.port_id.in_(port_ids)
                )
            ).all()
        )
        host_ids = {i.host_id for i in insts if i.host_id}
        self.hosts = {h.id: h for h in session.scalars(select(Host).where(Host.id.in_(host_ids)))}
        self.groups: dict[str, list[str]] = defaultdict(list)
        for inst_id, name in session.execute(
            select(InstanceSecurityGroup.instance_id, SecurityGroup.name)
            .join(SecurityGroup, SecurityGroup.id == InstanceSecurityGroup.group_id)
            .where(InstanceSecurityGroup.instance_id.in_(ids))
            .order_by(SecurityGroup.name)
        ):
            self.groups[inst_id].append(name)


def status_of(inst: Instance, host: Host | None, down_after: float) -> str:
    if host is not None and inst.status != "DELETED" and not host_up(host, down_after):
        return "UNKNOWN"
    return inst.status


def addresses(rel: Related, inst: Instance) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for port, net_name in rel.ports.get(inst.id, []):
        entries = out.setdefault(net_name, [])
        fixed = {"version": 4, "addr": port.ip, "OS-EXT-IPS:type": "fixed"}
        entries.append(fixed | {"OS-EXT-IPS-MAC:mac_addr": port.mac})
        if port.id in rel.floating:
            entries.append(
                {
                    "version": 4,
                    "addr": rel.floating[port.id],
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": port.mac,
                }
            )
    return out


def detail(
    inst: Instance, rel: Related, base: str, down_after: float, who: Caller
) -> dict[str, Any]:
    host = rel.hosts.get(inst.host_id or "")
    status = status_of(inst, host, down_after)
    host_hash = hashlib.sha224(f"{inst.project_id}{host.name if host else ''}".encode())
    server: dict[str, Any] = {
        "id": inst.id,
        "name": inst.name,
        "status": status,
        "tenant_id": inst.project_id,
        "user_id": inst.project_id,
        "hostId": host_hash.hexdigest() if host else "",
        "created": iso_z(inst.created_at),
        "updated": iso_z(inst.updated_at),
        "progress": 100 if status == "ACTIVE" else 0,
        "accessIPv4": "",
        "accessIPv6": "",
        "key_name": inst.key_name or None,
        "metadata": {},
        "image": {"id": inst.image_id, "links": link(base, "images", inst.image_id)[1:]},
        "flavor": {"id": inst.flavor_id, "links": link(base, "flavors", inst.flavor_id)[1:]},
        "addresses": addresses(rel, inst),
        "OS-EXT-STS:vm_state": VM_STATE.get(status, "active"),
        "OS-EXT-STS:task_state": TASK_STATE.get(inst.task_state),
        "OS-EXT-STS:power_state": POWER_STATE.get(status, 0),
        "OS-EXT-AZ:availability_zone": "nova",
        "OS-SRV-USG:launched_at": usage_time(inst.launched_at),
        "OS-SRV-USG:terminated_at": usage_time(inst.deleted_at),
        "OS-DCF:diskConfig": "MANUAL",
        "config_drive": "",
        "security_groups": [{"name": g} for g in rel.groups.get(inst.id, [])],
        "os-extended-volumes:volumes_attached": [],
        "links": link(base, "servers", inst.id),
    }
    if status == "ERROR":
        server["fault"] = {
            "code": 500,
            "message": redact.for_caller(who, inst.fault or "the server failed"),
            "created": iso_z(inst.updated_at),
        }
    if who.is_admin:
        server["OS-EXT-SRV-ATTR:host"] = host.name if host else None
        server["OS-EXT-SRV-ATTR:hypervisor_hostname"] = host.name if host else None
        server["OS-EXT-SRV-ATTR:instance_name"] = f"instance-{inst.id[:8]}"
    return server
