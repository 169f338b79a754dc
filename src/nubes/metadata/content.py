"""What the metadata service answers: pure functions of (instance record, path)."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

METADATA_IP = "169.254.169.254"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True)
class InstanceMeta:
    """One port's instance, as the serving host knows it from the desired state."""

    instance_id: str
    name: str
    hostname: str
    ip: str
    mac: str
    network_id: str
    prefix: int = 24
    gateway: str = ""
    mtu: int = 1500
    key_name: str = ""
    public_keys: tuple[str, ...] = ()
    user_data: str | None = None
    project_id: str = ""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT


# network id -> source address -> instance
MetadataTable = dict[str, dict[str, InstanceMeta]]


@dataclass
class _Listing:
    entries: list[str] = field(default_factory=list)

    def answer(self) -> Answer:
        return Answer(200, "".join(e + "\n" for e in self.entries).encode())


def lookup(table: MetadataTable, network_id: str, source_ip: str) -> InstanceMeta | None:
    """The instance whose port on this network has this address, or None."""
    try:
        addr = str(ipaddress.ip_address(source_ip))
    except ValueError:
        return None
    meta = table.get(network_id, {}).get(addr)
    if meta is None or meta.network_id != network_id:
        return None
    return meta


def _not_found(what: str = "not found") -> Answer:
    return Answer(404, (what + "\n").encode())


def meta_data_json(m: InstanceMeta) -> dict[str, Any]:
    """OpenStack's meta_data.json (the subset cloud-init and people read)."""
    names = [m.key_name or f"key{i}" for i in range(len(m.public_keys))]
    if len(set(names)) != len(names):
        names = [f"{m.key_name or 'key'}{i}" for i in range(len(m.public_keys))]
    return {
        "uuid": m.instance_id,
        "name": m.name,
        "hostname": m.hostname,
        "project_id": m.project_id,
        "launch_index": 0,
        "availability_zone": "nubes",
        "public_keys": dict(zip(names, m.public_keys, strict=True)),
        "keys": [
            {"name": n, "type": "ssh", "data": k} for n, k in zip(names, m.public_keys, strict=True)
        ],
        "meta": {},
        "devices": [],
    }


def network_data_json(m: InstanceMeta) -> dict[str, Any]:
    net = ipaddress.ip_network(f"{m.ip}/{m.prefix}", strict=False)
    routes = []
    if m.gateway:
        routes.append({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": m.gateway})
    return {
        "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": m.mac, "mtu": m.mtu}],
        "networks": [
            {
                "id": "network0",
                "type": "ipv4",
                "link": "eth0",
                "ip_address": m.ip,
                "netmask": str(net.netmask),
                "routes": routes,
                "network_id": m.network_id,
            }
        ],
        "services": [],
    }


def _json(doc: Any) -> Answer:
    return Answer(200, (json.dumps(doc, indent=2) + "\n").encode(), JSON)


def _openstack(m: InstanceMeta, rest: list[str]) -> Answer:
    if not rest:
        return _Listing(["latest"]).answer()
    version, rest = rest[0], rest[1:]
    if version != "latest" and not _DATE.match(version):
        return _not_found()
    if not rest:
        files = ["meta_data.json", "network_data.json", "vendor_data.json"]
        if m.user_data is not None:
            files.append("user_data")
        return _Listing(files).answer()
    if len(rest) > 1:
        return _not_found()
    leaf = rest[0]
    if leaf == "meta_data.json":
        return _json(meta_data_json(m))
    if leaf == "network_data.json":
        return _json(network_data_json(m))
    if leaf in ("vendor_data.json", "vendor_data2.json"):
        return _json({})
    if leaf == "user_data" and m.user_data is not None:
        return Answer(200, m.user_data.encode(), "application/octet-stream")
    return _not_found()


def _ec2_meta(m: InstanceMeta, rest: list[str]) -> Answer:
    values = {
        "instance-id": m.instance_id,
        "hostname": m.hostname,
        "local-hostname": m.hostname,
        "local-ipv4": m.ip,
        "mac": m.mac,
        "ami-launch-index": "0",
    }
    if not rest:
        return _Listing([*values, "public-keys/"]).answer()
    head, tail = rest[0], rest[1:]
    if head in values and not tail:
        return Answer(200, values[head].encode())
    if head != "public-keys":
        return _not_found()
    if not tail:
        names = [m.key_name or f"key{i}" for i in range(len(m.public_keys))]
        return _Listing([f"{i}={n}" for i, n in enumerate(names)]).answer()
    if not tail[0].isdigit() or int(tail[0]) >= len(m.public_keys):
        return _not_found()
    key = m.public_keys[int(tail[0])]
    if len(tail) == 1:
        return _Listing(["openssh-key"]).answer()
    if tail[1:] == ["openssh-key"]:
        return Answer(200, (key.strip() + "\n").encode())
    return _not_found()


def _ec2(m: InstanceMeta, version: str, rest: list[str]) -> Answer:
    if version not in ("latest", "1.0") and not _DATE.match(version):
        return _not_found()
    if not rest:
        extra = ["user-data"] if m.user_data is not None else []
        return _Listing(["meta-data/", *extra]).answer()
    if rest[0] == "meta-data":
        return _ec2_meta(m, rest[1:])
    if rest == ["user-data"] and m.user_data is not None:
        return Answer(200, m.user_data.encode(), "application/octet-stream")
    return _not_found()


def answer(meta: InstanceMeta | None, path: str) -> Answer:
    """The answer to GET path for the instance that asked (None: nobody we know)."""
    if meta is None:
        return _not_found("no instance with this address on this network")
    path = path.split("?", 1)[0].split("#", 1)[0]
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return _not_found()
    if not parts:
        return _Listing(["latest", "openstack"]).answer()
    if parts[0] == "openstack":
        return _openstack(meta, parts[1:])
    return _ec2(meta, parts[0], parts[1:])
