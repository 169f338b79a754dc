"""The API's image store: imports from uploads and vetted URLs (the checks are in
storage/images.py), the files agents download."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.db.models import Image
from nubes.errors import InvalidInput
from nubes.storage.images import ImageStore
from nubes.storage.rootfs import ARCHIVE_FORMATS, Limits


def store(settings: Settings) -> ImageStore:
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    return ImageStore(settings.images_dir)


def check_url(url: str, allow_private: bool) -> str | None:
    """Refuse URLs that point back into the cloud's own or private networks (SSRF).

    Returns the vetted address the download must connect to: looking the name up again when
    connecting could answer differently (DNS rebinding). None when private addresses are allowed.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidInput("url: must be an http:// or https:// URL", field="url")
    if allow_private:
        return None
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        infos = socket.getaddrinfo(parsed.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"url: cannot resolve {parsed.hostname}", field="url") from exc
    addrs = [ipaddress.ip_address(info[4][0]) for info in infos]
    for addr in addrs:
        plain = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        if not (plain or addr).is_global or (plain or addr).is_multicast:
            raise InvalidInput(
                f"url: {parsed.hostname} resolves to a non-public address ({addr}); "
                "set NUBES_ALLOW_PRIVATE_IMAGE_URLS=true to allow it",
                field="url",
            )
    return str(addrs[0])


def download(url: str, address: str | None = None) -> Iterator[bytes]:
    """The body of GET url, in chunks, connecting to address when given (the name still goes
    in the Host header, TLS SNI and the certificate check). Redirects are not followed: each
    hop would need vetting. The caller's import stops a body that is too large or not an image."""
    headers: dict[str, str] = {}
    extensions: dict[str, str] = {}
    if address is not None:
        parsed = urlparse(url)
        host = f"[{address}]" if ":" in address else address
        headers["Host"] = parsed.netloc.rpartition("@")[2]
        extensions["sni_hostname"] = parsed.hostname or ""
        url = parsed._replace(netloc=f"{host}:{parsed.port}" if parsed.port else host).geturl()
    with httpx.Client(follow_redirects=False, timeout=60) as http:
        with http.stream("GET", url, headers=headers, extensions=extensions) as resp:
            if resp.status_code != 200:
                raise InvalidInput(
                    f"url: download failed with HTTP {resp.status_code}", field="url"
                )
            yield from resp.iter_bytes()  # as it comes: a deadline is checked per chunk


def import_file(
    session: Session, row: Image, st: ImageStore, src: Path, settings: Settings
) -> None:
    if row.disk_format in ARCHIVE_FORMATS:  # a container image: flattened to a rootfs tar
        limits = Limits(settings.max_container_image_bytes, settings.container_allow_setuid)
        stored = st.import_archive(row.id, src, row.disk_format, limits)
        row.disk_format = stored.format
    else:
        max_size = settings.max_image_virtual_size_gb * 1024**3
        stored = st.import_file(row.id, src, row.disk_format, max_size)
    row.size, row.virtual_size, row.sha256 = stored.size, stored.virtual_size, stored.sha256
    row.status = "active"
    session.commit()
