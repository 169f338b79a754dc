"""Schemathesis against our own OpenAPI document: no request, valid by the schema or made
invalid on purpose, gets a 500. In-process (the ASGI app of an in-process cloud on fake
drivers), bounded: a few examples per operation, derandomized so CI runs the same cases."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image

EXAMPLES = int(os.environ.get("NUBES_FUZZ_EXAMPLES", "15"))  # per operation
RANDOM = bool(os.environ.get("NUBES_FUZZ_RANDOM"))  # explore new cases instead of CI's fixed set


@pytest.fixture
def cloud(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """On SQLite and PostgreSQL (tests/functional/conftest.py): they refuse different things."""

    # Generated image URLs must never reach a real resolver or the network: every name
    # resolves to a documentation address, which the SSRF check refuses.
    def fake_getaddrinfo(host: str, port: Any, *args: Any, **kw: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 80))]

    monkeypatch.setattr("nubes.control.images.socket.getaddrinfo", fake_getaddrinfo)
    c = Cloud(tmp_path, hosts=1, database_url=database_url)
    try:
        image = c.client.create_image(s.ImageCreate(name="img", disk_format="qcow2"))
        data = make_image(tmp_path / "img.qcow2").read_bytes()
        c.client.upload_image_part(image.id, "file", iter([data]))
        c.client.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
        yield c
    finally:
        c.close()


def test_no_server_errors(cloud: Cloud) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", cloud.app)
    auth = {"Authorization": f"Bearer {cloud.token}"}
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(GenerationMode.POSITIVE)
            | operation.as_strategy(GenerationMode.NEGATIVE)
        )
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            try:
                response = case.call(headers=auth)
            except Exception as exc:  # the test client re-raises what the app did not handle
                where = traceback.extract_tb(exc.__traceback__)[-1]
                failures.append(
                    f"{case.method} {case.formatted_path}: {type(exc).__name__}: {exc} "
                    f"({where.filename}:{where.lineno}) body={case.body!r:.200}"
                )
                return
            if response.status_code >= 500:
                failures.append(
                    f"{response.status_code} {case.method} {case.formatted_path} "
                    f"query={case.query} body={case.body!r:.300}: {response.text[:300]}"
                )

        run()
    print(f"fuzzed {calls} requests")
    assert calls > 100
    assert not failures, "\n".join(failures[:20])
