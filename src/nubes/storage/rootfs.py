"""Container images: OCI and docker archives flattened into one checked root filesystem.

An archive is hostile until checked, as disk images are. It is never unpacked by a tool that
follows its own links: we read every layer with `tarfile` (no extraction), apply the layers in
order (whiteouts included) to a map of paths, check every entry, and write one plain tar, the
*rootfs* format the store keeps: `image.json` (the process the image runs) and `rootfs/...`.
Refused, with ImageRejected naming `file`: a path that climbs out of the root (`..`, or a path
through a symlink), a relative symlink climbing above the root, an absolute symlink to a path the
image does not have (outside `/dev`, `/proc`, `/sys`, `/run`, `/tmp`, which the runtime
provides), a hard link to anything but a regular file already in the image, a character or
block device, setuid/setgid files unless allowed, and more bytes or entries than the limits.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nubes.errors import ImageRejected

ARCHIVE_FORMATS = frozenset({"oci-archive", "docker-archive", "rootfs"})
RUNTIME_DIRS = ("dev", "proc", "sys", "run", "tmp")  # what runc mounts over the image
MAX_ENTRIES = 200_000
_JSON_MAX = 1 << 20  # manifests and configs are small; a huge one is a bomb


def _reject(message: str) -> ImageRejected:
    return ImageRejected(message, field="file")


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # of file contents, all layers together
    allow_setuid: bool = False


@dataclass(frozen=True)
class Process:
    """What the image runs: OCI's Entrypoint + Cmd, Env, WorkingDir."""

    args: list[str]
    env: list[str]
    cwd: str = "/"

    def to_json(self) -> bytes:
        return json.dumps({"args": self.args, "env": self.env, "cwd": self.cwd}).encode()

    @staticmethod
    def from_json(data: bytes) -> Process:
        raw = json.loads(data)
        return Process([str(a) for a in raw["args"]], [str(e) for e in raw["env"]], raw["cwd"])


@dataclass
class _Entry:
    layer: int
    member: tarfile.TarInfo


@dataclass
class _Tree:
    entries: dict[str, _Entry] = field(default_factory=dict)
    content_bytes: int = 0


def normalize(name: str) -> str:
    """The path an entry names, relative to the root, or ImageRejected if it escapes."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _reject(f"the entry {name!r} climbs out of the root filesystem")
    return "/".join(parts)


def _resolve_link(link_path: str, target: str) -> str | None:
    """Where a symlink points, as a path relative to the root; None if it climbs above it."""
    base = "" if target.startswith("/") else posixpath.dirname(link_path)
    depth: list[str] = [p for p in base.split("/") if p]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not depth:
                return None
            depth.pop()
        else:
            depth.append(part)
    return "/".join(depth)


def _apply_layer(tree: _Tree, layer: int, tar: tarfile.TarFile | _Subtree, limits: Limits) -> None:
    for member in tar:
        path = normalize(member.name)
        if not path:
            continue
        parent, base = posixpath.split(path)
        for i in range(1, len(path.split("/"))):  # no entry may be reached through a symlink
            above = tree.entries.get("/".join(path.split("/")[:i]))
            if above is not None and not above.member.isdir():
                raise _reject(f"the entry {member.name!r} lies under a link or file")
        if base == ".wh..wh..opq":  # opaque directory: hide what lower layers put in it
            prefix = parent + "/"
            for old in [p for p in tree.entries if p.startswith(prefix)]:
                del tree.entries[old]
            continue
        if base.startswith(".wh."):
            gone = posixpath.join(parent, base[4:])
            for old in [p for p in tree.entries if p == gone or p.startswith(gone + "/")]:
                del tree.entries[old]
            continue
        _check_member(tree, path, member, limits)
        if not member.isdir():  # a file replacing a directory hides what was under it
            for old in [p for p in tree.entries if p.startswith(path + "/")]:
                del tree.entries[old]
        tree.entries[path] = _Entry(layer, member)
        if len(tree.entries) > MAX_ENTRIES:
            raise _reject(f"more than {MAX_ENTRIES} entries")


def _check_member(tree: _Tree, path: str, member: tarfile.TarInfo, limits: Limits) -> None:
    if member.ischr() or member.isblk():
        raise _reject(f"the entry {member.name!r} is a device node")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        if not member.isfifo():
            raise _reject(f"the entry {member.name!r} has an unsupported type")
    if member.mode & 0o6000 and not member.isdir() and not limits.allow_setuid:
        raise _reject(f"the entry {member.name!r} is setuid or setgid")
    if member.islnk():
        target = normalize(member.linkname)
        linked = tree.entries.get(target)
        if linked is None or not linked.member.isreg():
            raise _reject(f"the hard link {member.name!r} names no regular file of the image")
    if member.issym() and _resolve_link(path, member.linkname) is None:
        raise _reject(f"the symlink {member.name!r} points out of the root filesystem")
    if member.isreg():
        tree.content_bytes += member.size
        if tree.content_bytes > limits.max_bytes:
            raise _reject(f"the image holds more than the limit of {limits.max_bytes} bytes")


def _check_absolute_links(tree: _Tree) -> None:
    for path, entry in tree.entries.items():
        member = entry.member
        if not member.issym() or not member.linkname.startswith("/"):
            continue
        target = _resolve_link(path, member.linkname) or ""
        top = target.split("/", 1)[0]
        if target and top not in RUNTIME_DIRS and not _exists(tree, target):
            raise _reject(
                f"the symlink {member.name!r} points to {member.linkname!r}, outside the image"
            )


def _exists(tree: _Tree, path: str, hops: int = 0) -> bool:
    """Whether path names an entry, following the image's own symlinks (a few hops)."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        entry = tree.entries.get(prefix)
        if entry is None:
            return False
        if entry.member.issym() and hops < 8:
            resolved = _resolve_link(prefix, entry.member.linkname)
            if resolved is None:
                return False
            rest = "/".join([resolved, *parts[i:]]).strip("/")
            return _exists(tree, rest, hops + 1)
    return True


def _read_json(tar: tarfile.TarFile, name: str) -> Any:
    member = next((m for m in tar.getmembers() if normalize(m.name) == normalize(name)), None)
    if member is None or not member.isreg():
        raise _reject(f"the archive has no {name}")
    if member.size > _JSON_MAX:
        raise _reject(f"{name} is too large")
    fh = tar.extractfile(member)
    assert fh is not None
    try:
        return json.loads(fh.read())
    except ValueError as exc:
        raise _reject(f"{name} is not JSON") from exc


def _blob(digest: Any) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise _reject(f"unsupported digest {digest!r}")
    hexpart = digest.removeprefix("sha256:")
    if len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise _reject(f"malformed digest {digest!r}")
    return f"blobs/sha256/{hexpart}"


def _oci_layout(outer: tarfile.TarFile) -> tuple[list[str], dict[str, Any]]:
    doc = _read_json(outer, "index.json")
    for _ in range(3):  # an index may name another index (multi-platform images)
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not manifests:
            break
        chosen = next(
            (m for m in manifests if (m.get("platform") or {}).get("architecture") == "amd64"),
            manifests[0],
        )
        doc = _read_json(outer, _blob(chosen.get("digest")))
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise _reject("index.json leads to no image manifest")
    config = _read_json(outer, _blob((doc.get("config") or {}).get("digest")))
    return [_blob(layer.get("digest")) for layer in doc["layers"]], config


def _docker_layout(outer: tarfile.TarFile) -> tuple[list[str], dict[str, Any]]:
    doc = _read_json(outer, "manifest.json")
    if not isinstance(doc, list) or not doc or not isinstance(doc[0].get("Layers"), list):
        raise _reject("manifest.json names no image")
    config = _read_json(outer, str(doc[0].get("Config", "")))
    return [normalize(str(name)) for name in doc[0]["Layers"]], config


def _process(config: dict[str, Any]) -> Process:
    inner = config.get("config") or {}
    args = [*(inner.get("Entrypoint") or []), *(inner.get("Cmd") or [])]
    if not args:
        raise _reject("the image's config names no command (Entrypoint or Cmd)")
    return Process(
        [str(a) for a in args],
        [str(e) for e in inner.get("Env") or []],
        str(inner.get("WorkingDir") or "/"),
    )


def _open_layers(
    stack: ExitStack, outer: tarfile.TarFile, names: list[str]
) -> Iterator[tarfile.TarFile]:
    for name in names:
        member = next((m for m in outer.getmembers() if normalize(m.name) == name), None)
        if member is None or not member.isreg():
            raise _reject(f"the archive has no layer {name}")
        fh = outer.extractfile(member)
        assert fh is not None
        try:
            yield stack.enter_context(tarfile.open(fileobj=fh, mode="r:*"))  # gzip or plain
        except tarfile.TarError as exc:
            raise _reject(f"the layer {name} is not a tar archive") from exc


def flatten(archive: Path, fmt: str, out: IO[bytes], limits: Limits) -> Process:
    """Check an archive and write it to out as the store's rootfs tar. Raises ImageRejected."""
    if fmt not in ARCHIVE_FORMATS:
        raise _reject(f"unsupported container format {fmt!r}")
    try:
        with ExitStack() as stack:
            outer = stack.enter_context(tarfile.open(archive, mode="r:*"))
            if fmt == "rootfs":
                process = Process.from_json(_rootfs_config(outer))
                layers: list[tarfile.TarFile | _Subtree] = [_Subtree(outer)]
            else:
                names, config = (_oci_layout if fmt == "oci-archive" else _docker_layout)(outer)
                process = _process(config)
                layers = list(_open_layers(stack, outer, names))
            tree = _Tree()
            for i, layer in enumerate(layers):
                _apply_layer(tree, i, layer, limits)
            _check_absolute_links(tree)
            _write(tree, layers, process, out)
            return process
    except (tarfile.TarError, EOFError, OSError, KeyError, ValueError) as exc:
        if isinstance(exc, ImageRejected):
            raise
        raise _reject(f"not a readable {fmt}: {type(exc).__name__}: {exc}") from exc


def _rootfs_config(outer: tarfile.TarFile) -> bytes:
    return json.dumps(_read_json(outer, "image.json")).encode()


class _Subtree:
    """The `rootfs/` part of a rootfs tar, read as a layer of its own."""

    def __init__(self, outer: tarfile.TarFile) -> None:
        self.outer = outer

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        for member in self.outer:
            name = normalize(member.name)
            if name.startswith("rootfs/"):
                # a copy, not a header re-read: a long name or link target takes PAX
                # records, more than the one block TarInfo.frombuf reads
                inner = copy.copy(member)
                inner.name = name[7:]
                inner.linkname = (
                    normalize(member.linkname)[7:] if member.islnk() else member.linkname
                )
                yield inner

    def extractfile(self, member: tarfile.TarInfo) -> IO[bytes] | None:
        fh = self.outer.fileobj
        assert fh is not None
        fh.seek(member.offset_data)
        return _Bounded(fh, member.size)  # type: ignore[arg-type, return-value]


class _Bounded:
    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data


def _write(
    tree: _Tree, layers: list[tarfile.TarFile | _Subtree], process: Process, out: IO[bytes]
) -> None:
    import io

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dest:
        info = tarfile.TarInfo("image.json")
        data = process.to_json()
        info.size, info.mode = len(data), 0o644
        dest.addfile(info, io.BytesIO(data))
        root = tarfile.TarInfo("rootfs")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        dest.addfile(root)
        dirs = sorted(p for p, e in tree.entries.items() if e.member.isdir())
        for path in dirs:  # parents before children whatever order the layers had
            dest.addfile(_renamed(tree.entries[path].member, path))
        written: set[str] = set()
        for i, layer in enumerate(layers):
            for member in _members(layer):
                path = normalize(member.name)
                entry = tree.entries.get(path)
                if entry is None or entry.layer != i or entry.member.isdir() or path in written:
                    continue
                if entry.member.offset_data != member.offset_data:
                    continue  # an earlier copy of the same path within the layer
                written.add(path)
                if member.islnk():
                    continue  # after every regular file
                body = layer.extractfile(member) if member.isreg() else None
                dest.addfile(_renamed(member, path), body)
        for path, entry in tree.entries.items():
            if entry.member.islnk():
                dest.addfile(_renamed(entry.member, path))


def _members(layer: tarfile.TarFile | _Subtree) -> Iterator[tarfile.TarInfo]:
    if isinstance(layer, _Subtree):
        yield from layer
    else:
        yield from layer.getmembers()


def _renamed(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    copy = tarfile.TarInfo("rootfs/" + path)
    copy.type, copy.mode, copy.uid, copy.gid = member.type, member.mode, member.uid, member.gid
    copy.mtime, copy.size = member.mtime, member.size if member.isreg() else 0
    copy.uname, copy.gname = member.uname, member.gname
    if member.issym():
        copy.linkname = member.linkname
    elif member.islnk():
        copy.linkname = "rootfs/" + normalize(member.linkname)
    return copy


def read_process(stored: Path) -> Process:
    with tarfile.open(stored, mode="r:") as tar:
        return Process.from_json(json.dumps(_read_json(tar, "image.json")).encode())


def unpack(stored: Path, dest: Path, uid_base: int, max_bytes: int) -> Process:
    """Unpack a stored rootfs tar (ours, checked at import and by sha256 on the host) into
    dest, every file owned by its uid/gid + uid_base: the container's user namespace maps them
    back to what the image says. Paths are checked again, and the final component of each
    is never followed. Raises ImageRejected past max_bytes (the flavor's disk)."""
    dest.mkdir(mode=0o755)
    os.chown(dest, uid_base, uid_base)
    total = 0
    with tarfile.open(stored, mode="r:") as tar:
        process = Process.from_json(json.dumps(_read_json(tar, "image.json")).encode())
        for member in tar:
            name = normalize(member.name)
            if not name.startswith("rootfs/"):
                continue
            path = dest / name[7:]
            if member.isdir():
                path.mkdir(exist_ok=True)
            elif member.isreg():
                total += member.size
                if total > max_bytes:
                    raise _reject(f"the image does not fit in the flavor's {max_bytes} bytes")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                src = tar.extractfile(member)
                assert src is not None
                with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
            elif member.issym():
                os.symlink(member.linkname, path)
            elif member.islnk():
                os.link(dest / normalize(member.linkname)[7:], path, follow_symlinks=False)
                continue
            elif member.isfifo():
                os.mkfifo(path, 0o600)
            else:
                raise _reject(f"the entry {member.name!r} has an unsupported type")
            os.lchown(path, uid_base + member.uid, uid_base + member.gid)
            if not member.issym():
                os.chmod(path, member.mode & 0o7777)
    return process
