"""Bounded requests: a body over `max_body_bytes` gets 413 before anything reads it (no token
needed to be refused), and an image upload over its bound leaves nothing on disk."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nubes.schemas import resources as s
from tests.cloud import Cloud

LIMIT = 64 << 10


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=0, max_body_bytes=LIMIT, max_upload_bytes=LIMIT)
    try:
        yield c
    finally:
        c.close()


def raw_request(cloud: Cloud, head: str) -> tuple[str, float]:
    """Send only a request's head on the API's UNIX socket; the status line and how long the
    answer took (the body the head announces is never sent)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(cloud.settings.api_socket))
        begin = time.monotonic()
        sock.sendall(head.encode())
        answer = sock.recv(65536).decode(errors="replace")
        return answer.split("\r\n", 1)[0], time.monotonic() - begin


def test_an_announced_body_over_the_bound_is_refused_before_it_is_sent(cloud: Cloud) -> None:
    head = (
        "POST /v1/servers HTTP/1.1\r\nHost: nubes\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 << 20}\r\n\r\n"
    )  # no token, and 200 MiB announced that never come
    status, took = raw_request(cloud, head)
    assert status == "HTTP/1.1 413 Request Entity Too Large", status
    assert took < 5  # not after a read timeout


def test_a_chunked_body_over_the_bound_gets_413_not_401(cloud: Cloud) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 4096  # 256 KiB in all, no Content-Length

    transport = httpx.HTTPTransport(uds=str(cloud.settings.api_socket))
    with httpx.Client(transport=transport, base_url="http://nubes") as raw:
        answer = raw.post("/v1/servers", content=chunks())  # and no token
    assert answer.status_code == 413, answer.text
    assert answer.json()["field"] == "body"
    # under the bound, the same request without a token is a 401
    with httpx.Client(transport=transport, base_url="http://nubes") as raw:
        assert raw.post("/v1/servers", content=b"{}").status_code == 401


def test_an_upload_over_the_bound_leaves_nothing(cloud: Cloud) -> None:
    image = cloud.client.create_image(s.ImageCreate(name="big", disk_format="raw"))
    images_dir = cloud.settings.images_dir
    before = sorted(p.name for p in images_dir.iterdir())

    def chunks() -> Iterator[bytes]:
        for _ in range(32):
            yield b"\0" * 4096  # 128 KiB, past the 64 KiB bound, chunked

    transport = httpx.HTTPTransport(uds=str(cloud.settings.api_socket))
    headers = {"Authorization": f"Bearer {cloud.token}"}
    with httpx.Client(transport=transport, base_url="http://nubes", headers=headers) as raw:
        chunked = raw.put(f"/v1/images/{image.id}/file", content=chunks())
        announced = raw.put(
            f"/v1/images/{image.id}/file", content=b"\0" * (LIMIT + 1)
        )  # Content-Length says so at once
    for answer in (chunked, announced):
        assert answer.status_code == 413, answer.text
        assert answer.json()["field"] == "file"
    assert sorted(p.name for p in images_dir.iterdir()) == before  # no spooled file left
    assert cloud.client.image(image.id).status == "queued"
