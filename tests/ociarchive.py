"""Crafted OCI and docker archives for tests: layers as lists of tar entries."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    size: int | None = None  # a header that claims another size (sparse bombs)


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.linkname = e.type, e.mode, e.linkname
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                if e.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                    info.devmajor, info.devminor = 1, 3
                tar.addfile(info)
    return buf.getvalue()


CONFIG = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"]}}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(path: Path, layers: list[list[Entry]], gz: bool = True) -> Path:
    """What `podman save --format oci-archive` / `skopeo copy … oci-archive:` write."""
    blobs: dict[str, bytes] = {}
    descs = []
    for entries in layers:
        raw = layer_tar(entries)
        data = gzip.compress(raw) if gz else raw
        blobs[_digest(data)] = data
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(data),
                "size": len(data),
            }
        )
    config = json.dumps(CONFIG).encode()
    blobs[_digest(config)] = config
    manifest = json.dumps(
        {"schemaVersion": 2, "config": {"digest": _digest(config)}, "layers": descs}
    ).encode()
    blobs[_digest(manifest)] = manifest
    index = {"schemaVersion": 2, "manifests": [{"digest": _digest(manifest)}]}
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            _add(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
    return path


def docker_archive(path: Path, layers: list[list[Entry]]) -> Path:
    """What `docker save` writes (the classic layout: <id>/layer.tar)."""
    config = json.dumps(CONFIG).encode()
    names = []
    with tarfile.open(path, "w") as tar:
        for i, entries in enumerate(layers):
            names.append(f"l{i}/layer.tar")
            _add(tar, names[-1], layer_tar(entries))
        _add(tar, "config.json", config)
        manifest = [{"Config": "config.json", "RepoTags": ["x:latest"], "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path


BASE = [
    Entry("bin", type=tarfile.DIRTYPE, mode=0o755),
    Entry("bin/busybox", b"\x7fELF fake", mode=0o755),
    Entry("bin/sh", type=tarfile.SYMTYPE, linkname="busybox"),
    Entry("etc", type=tarfile.DIRTYPE, mode=0o755),
    Entry("etc/hostname", b"x\n"),
    Entry("etc/old", b"gone\n"),
]
