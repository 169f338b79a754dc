"""A joined host's identity: which API it joined, as which host, with which credential.

Kept in the host's state directory, mode 0600, read by the agent at start: never in an
environment variable, so QEMU, dnsmasq and every other child of the agent inherit nothing."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "identity.json"
CA_FILE = "ca.pem"


@dataclass(frozen=True)
class HostIdentity:
    api_url: str
    host_id: str
    host_name: str
    credential: str
    address: str = ""  # the underlay address other hosts reach this one at

    def with_credential(self, credential: str) -> HostIdentity:
        return HostIdentity(self.api_url, self.host_id, self.host_name, credential, self.address)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(host_dir: Path, identity: HostIdentity, ca_pem: bytes | None) -> None:
    host_dir.mkdir(parents=True, exist_ok=True)
    if ca_pem is not None:
        _write_private(host_dir / CA_FILE, ca_pem)
    _write_private(host_dir / FILE, json.dumps(asdict(identity)).encode())


def load(host_dir: Path) -> HostIdentity | None:
    try:
        data = json.loads((host_dir / FILE).read_text())
    except FileNotFoundError:
        return None
    return HostIdentity(**data)


def ca_pem(host_dir: Path) -> bytes | None:
    path = host_dir / CA_FILE
    return path.read_bytes() if path.exists() else None
