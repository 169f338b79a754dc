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
    def __init__(self, root: Path, client: NubesClient) -> None:
        self.root = root
        self.client = client
        self._lock = threading.Lock()

    def ensure(self, image_id: str, part: str, suffix: str, sha256: str) -> Path:
        """The cached file for one part of an image (file, kernel or initrd)."""
        dest = self.root / f"{image_id}.{suffix}"
        with self._lock:
            if dest.exists():
                return dest
            tmp = dest.with_name(dest.name + ".part")
            tmp.unlink(missing_ok=True)
            try:
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
