"""Local copies of images on a host, verified against the API's sha256."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from nubes.client import NubesClient
from nubes.errors import DriverError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ImageCache:
    def __init__(self, root: Path, client: NubesClient, local_store: Path | None) -> None:
        self.root = root
        self.client = client
        self.local_store = local_store  # the API's store, when it is on this machine
        self._lock = threading.Lock()

    def ensure(self, image_id: str, part: str, suffix: str, sha256: str) -> Path:
        """The cached file for one part of an image (file, kernel or initrd)."""
        dest = self.root / f"{image_id}.{suffix}"
        with self._lock:
            if dest.exists():
                return dest
            tmp = dest.with_name(dest.name + ".part")
            tmp.unlink(missing_ok=True)
            source = self.local_store / f"{image_id}.{suffix}" if self.local_store else None
            try:
                if not (source is not None and _try_link(source, tmp)):
                    self.client.download_image_part(image_id, part, tmp)
                    if sha256_of(tmp) != sha256:
                        raise DriverError(f"image {image_id} {part}: checksum mismatch")
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            return dest

    def prune(self, keep: set[str]) -> None:
        for path in self.root.iterdir():
            if path.name.split(".", 1)[0] not in keep:
                path.unlink(missing_ok=True)


def _try_link(source: Path, dest: Path) -> bool:
    """Same machine as the API: a hard link costs nothing and the API verified the file."""
    try:
        os.link(source, dest)
    except OSError:
        return False
    return True
