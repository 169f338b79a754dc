"""The client's own errors: what a user sees when the API is not there."""

from __future__ import annotations

import socket

import pytest

from nubes.client import ApiError, NubesClient


def test_an_api_that_is_not_running_is_named_with_a_hint() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = NubesClient(f"http://127.0.0.1:{port}", "token", timeout=5)
    with pytest.raises(ApiError) as exc:
        client.servers()
    assert exc.value.status == 0
    assert f"cannot reach the nubes API at http://127.0.0.1:{port}" in exc.value.detail
    assert "nubes lab up" in exc.value.detail
