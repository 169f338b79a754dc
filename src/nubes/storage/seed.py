"""cloud-init NoCloud seed: an ISO9660 volume labelled `cidata` with meta-data, user-data and
network-config.

Every YAML value stays on one line (no folding, flow only where PyYAML must): the tiny image
reads these files with awk, and real cloud-init reads them with a YAML parser; both must agree.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from nubes.errors import InvalidInput

MAX_USER_DATA = 64 * 1024  # bytes; cloud providers allow 16-64 KiB
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_WIDE = 1 << 30  # YAML line width: never fold a long SSH key


@dataclass(frozen=True)
class SeedNic:
    mac: str
    address_cidr: str | None = None  # e.g. "10.20.0.5/24"; None: DHCP
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True)
class SeedData:
    instance_id: str
    hostname: str
    public_keys: tuple[str, ...] = ()
    default_user: str | None = None  # created with the keys and passwordless sudo
    user_data: str | None = None  # the user's own text, passed on or merged
    network: tuple[SeedNic, ...] = ()


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=False, width=_WIDE)


def sanitize_hostname(name: str, fallback: str = "instance") -> str:
    """A valid DNS label from a user's instance name (as Nova does): "My VM_1" -> "my-vm-1"."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].rstrip("-")
    return label or fallback


def guest_hostname(name: str, instance_id: str) -> str:
    """The hostname a guest gets for its name (the seed and the metadata service agree)."""
    if _HOSTNAME_RE.match(name):
        return name
    return sanitize_hostname(name, fallback=sanitize_hostname(instance_id))


def _hostname(data: SeedData) -> str:
    return guest_hostname(data.hostname, data.instance_id)


def _validate(data: SeedData) -> None:
    if "\n" in data.instance_id or not data.instance_id.strip():
        raise InvalidInput("invalid instance id", field="instance_id")
    for key in data.public_keys:
        if not key.strip() or "\n" in key or "\r" in key:
            raise InvalidInput("an SSH public key must be one non-empty line", field="key")
    if data.default_user is not None and not _USER_RE.match(data.default_user):
        raise InvalidInput(f"invalid user name {data.default_user!r}", field="default_user")
    if data.user_data is not None and len(data.user_data.encode()) > MAX_USER_DATA:
        raise InvalidInput(f"user data is larger than {MAX_USER_DATA} bytes", field="user_data")
    for nic in data.network:
        _validate_nic(nic)


def _validate_nic(nic: SeedNic) -> None:
    if not _MAC_RE.match(nic.mac.lower()):
        raise InvalidInput(f"invalid MAC address {nic.mac!r}", field="mac")
    try:
        if nic.address_cidr is not None:
            ipaddress.ip_interface(nic.address_cidr)
        if nic.gateway is not None:
            ipaddress.ip_address(nic.gateway)
        for server in nic.dns:
            ipaddress.ip_address(server)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="network") from exc


def render_meta_data(data: SeedData) -> str:
    _validate(data)
    doc: dict[str, Any] = {"instance-id": data.instance_id, "local-hostname": _hostname(data)}
    if data.public_keys:
        doc["public-keys"] = [key.strip() for key in data.public_keys]
    return _dump(doc)


def _user_entry(data: SeedData) -> dict[str, Any]:
    return {
        "name": data.default_user,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
    }


def _our_cloud_config(data: SeedData) -> dict[str, Any]:
    doc: dict[str, Any] = {"hostname": _hostname(data)}
    if data.default_user:
        # `user` replaces the distribution's default user; the top-level keys then go to it
        doc["user"] = _user_entry(data)
        doc["users"] = ["default"]
    if data.public_keys:
        doc["ssh_authorized_keys"] = [key.strip() for key in data.public_keys]
    return doc


def _merge_cloud_config(text: str, ours: dict[str, Any]) -> dict[str, Any]:
    try:
        theirs = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"user data is not valid YAML: {exc}", field="user_data") from exc
    if theirs is None:
        theirs = {}
    if not isinstance(theirs, dict):
        raise InvalidInput("a #cloud-config document must be a mapping", field="user_data")
    merged = dict(theirs)
    keys = list(theirs.get("ssh_authorized_keys") or [])
    keys += [k for k in ours.get("ssh_authorized_keys", []) if k not in keys]
    if keys:
        merged["ssh_authorized_keys"] = keys
    # the user's own choices win; we only fill in what they left out
    if "hostname" not in theirs:
        merged["hostname"] = ours["hostname"]
    if "user" in ours and "user" not in theirs and "users" not in theirs:
        merged["user"] = ours["user"]
        merged["users"] = ours["users"]
    return merged


def render_user_data(data: SeedData) -> str:
    """Our #cloud-config, merged into the user's; any other document type passes unchanged."""
    _validate(data)
    ours = _our_cloud_config(data)
    text = data.user_data
    if text is None or not text.strip():
        return "#cloud-config\n" + _dump(ours)
    if text.lstrip().startswith("#cloud-config"):
        return "#cloud-config\n" + _dump(_merge_cloud_config(text, ours))
    # shell scripts, #include, boothooks, MIME multipart...: keys reach the guest via meta-data
    return text


def _nic_config(index: int, nic: SeedNic) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "match": {"macaddress": nic.mac.lower()},
        "set-name": f"eth{index}",
    }
    if nic.address_cidr is None:
        conf["dhcp4"] = True
    else:
        conf["dhcp4"] = False
        conf["addresses"] = [nic.address_cidr]
        if nic.gateway is not None:
            default = "::/0" if ipaddress.ip_address(nic.gateway).version == 6 else "0.0.0.0/0"
            conf["routes"] = [{"to": default, "via": nic.gateway}]
    if nic.dns:
        conf["nameservers"] = {"addresses": list(nic.dns)}
    if nic.mtu is not None:
        conf["mtu"] = nic.mtu
    return conf


def render_network_config(data: SeedData) -> str:
    """network-config v2: one static (or DHCP) ethernet per NIC, matched by MAC."""
    _validate(data)
    ethernets = {f"eth{i}": _nic_config(i, nic) for i, nic in enumerate(data.network)}
    return _dump({"version": 2, "ethernets": ethernets})


def build_seed_iso(data: SeedData) -> bytes:
    """The NoCloud ISO image as bytes."""
    files = {
        "meta-data": render_meta_data(data).encode(),
        "user-data": render_user_data(data).encode(),
        "network-config": render_network_config(data).encode(),
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for name, body in files.items():
            iso_name = "/" + name.replace("-", "").upper() + ".;1"
            iso.add_fp(io.BytesIO(body), len(body), iso_name, rr_name=name, joliet_path="/" + name)
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def write_seed(data: SeedData, dest: Path) -> None:
    """Write the seed ISO to dest atomically (readers never see half a file)."""
    body = build_seed_iso(data)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
