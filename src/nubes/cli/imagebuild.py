"""Build an image from Debian packages on this machine and import it through the API."""

from __future__ import annotations

import os
from pathlib import Path

from nubes.cli.common import client, console, fail
from nubes.cli.resources import upload_image
from nubes.client import ApiError


def cache_dir() -> Path:
    return Path(os.environ.get("NUBES_CACHE_DIR", "/var/cache/nubes"))


def build_and_import(kind: str, name: str, rebuild: bool) -> None:
    try:
        existing = client().image(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        existing = None
    if existing is not None and not rebuild:
        console.print(f"image {name} already exists ({existing.id}); use --rebuild to replace it")
        return
    if kind == "tiny":
        from nubes.imagebuild.tiny import READY_LINE, build_tiny

        with console.status("building the tiny image") as status:
            built = build_tiny(cache_dir() / "tiny", progress=lambda m: status.update(m))
        if existing is not None:
            client().delete("images", existing.id)
        image = upload_image(
            name,
            built.disk,
            built.disk_format,
            built.kernel,
            built.initrd,
            built.cmdline,
            READY_LINE,
            "",
        )
    else:
        fail(f"unknown image kind {kind!r}: tiny")
        return
    console.print(f"image {image.name} ready ({image.id})")
