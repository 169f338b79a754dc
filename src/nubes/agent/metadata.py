"""The agent's side of the metadata service: the table from the desired state."""

from __future__ import annotations

import ipaddress

from nubes.metadata.content import InstanceMeta, MetadataTable
from nubes.schemas.agent import DesiredNetwork
from nubes.storage.seed import guest_hostname


def metadata_table(networks: list[DesiredNetwork]) -> MetadataTable:
    """network id -> port address -> instance, for the networks this host serves."""
    table: MetadataTable = {}
    for net in networks:
        if not net.serve:
            continue
        prefix = ipaddress.ip_network(net.cidr).prefixlen
        table[net.id] = {
            str(ipaddress.ip_address(m.ip)): InstanceMeta(
                instance_id=m.instance_id,
                name=m.name,
                hostname=guest_hostname(m.name, m.instance_id),
                ip=m.ip,
                mac=m.mac,
                network_id=net.id,
                prefix=prefix,
                gateway=net.gateway,
                mtu=net.mtu,
                key_name=m.key_name,
                public_keys=tuple(m.public_keys),
                user_data=m.user_data,
                project_id=m.project_id,
            )
            for m in net.metadata
        }
    return table
