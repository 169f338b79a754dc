"""Build an image from Debian packages on this machine and import it through the API."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nubes.cli.common import client, console, fail
from nubes.cli.resources import upload_image
from nubes.client import ApiError
from nubes.schemas import resources as s


def cache_dir() -> Path:
    return Path(os.environ.get("NUBES_CACHE_DIR", "/var/cache/nubes"))


@contextlib.contextmanager
def _ticking(what: str) -> Iterator[Callable[[str], None]]:
    """A status line with the elapsed time, refreshed every second, and the latest step."""
    started = time.monotonic()
    last = [what]
    stop = threading.Event()
    with console.status(what) as status:

        def refresh() -> None:
            status.update(f"[{time.monotonic() - started:4.0f} s] {last[0]}")

        def tick() -> None:
            while not stop.wait(1.0):
                refresh()

        def say(message: str) -> None:
            last[0] = message
            if not console.is_terminal:  # logs and CI see each step once
                console.print(f"[{time.monotonic() - started:4.0f} s] {message}", highlight=False)
            refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield say
        finally:
            stop.set()
            ticker.join()


def _existing(name: str) -> s.Image | None:
    try:
        return client().image(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return None


def build_container(kind: str, name: str, rebuild: bool) -> None:
    if kind not in ("tiny", "debian"):
        fail(f"no container build of {kind!r}: tiny or debian")
    existing = _existing(name)
    if existing is not None and not rebuild:
        console.print(f"image {name} already exists ({existing.id}); use --rebuild to replace it")
        return
    if kind == "tiny":
        from nubes.imagebuild.tinycontainer import READY_LINE, build_tiny_container

        with console.status("building the tiny container image"):
            built = build_tiny_container(cache_dir() / "tiny-container")
        ready, user = READY_LINE, ""
    else:
        from nubes.imagebuild import debiancontainer as dc

        where = cache_dir() / "debian-container"
        with _ticking(f"building the debian container image in {where}") as say:
            deb = dc.build_debian_container(where, progress=say, rebuild=rebuild)
        console.print(
            f"debian-container rootfs: {deb.archive} (built in {deb.build_seconds:.0f} s)"
        )
        built, ready, user = deb.archive, dc.READY_LINE, dc.DEFAULT_USER
    if existing is not None:
        client().delete("images", existing.id)
    image = upload_image(name, built, "rootfs", ready_pattern=ready, default_user=user)
    console.print(f"image {image.name} ready ({image.id})")


def build_and_import(kind: str, name: str, rebuild: bool) -> None:
    existing = _existing(name)
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
    elif kind == "debian":
        from nubes.imagebuild.debian import DEFAULT_USER, READY_LINE, build_debian

        with _ticking(f"building the debian image in {cache_dir() / 'debian'}") as say:
            deb = build_debian(cache_dir() / "debian", progress=say, rebuild=rebuild)
        console.print(f"debian image: {deb.disk} (built in {deb.build_seconds:.0f} s)")
        if existing is not None:
            client().delete("images", existing.id)
        image = upload_image(
            name, deb.disk, deb.disk_format, ready_pattern=READY_LINE, default_user=DEFAULT_USER
        )
    else:
        fail(f"unknown image kind {kind!r}: tiny or debian")
        return
    console.print(f"image {image.name} ready ({image.id})")
