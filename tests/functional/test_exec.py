"""`POST /v1/servers/{ref}/exec`: bad commands are 422 naming `command`, other projects' and
unknown servers 404 (the real runc path is in tests/integration/test_containers_lab.py)."""

from __future__ import annotations

from typing import Any

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s


def test_exec_checks_its_input_and_is_for_containers(make_cloud: Any) -> None:
    cloud = make_cloud(hosts=1)
    c = cloud.client
    c.create_server(s.ServerCreate(name="vm1", image="img", flavor="m1.tiny", network="net"))
    cloud.wait_status("vm1", "ACTIVE")
    for body in ({"command": []}, {"command": ["x" * 4000]}, {"command": ["a\u0000b"]}):
        resp = c._http.post("/v1/servers/vm1/exec", json=body)
        assert resp.status_code == 422 and resp.json()["field"] == "command", resp.text
    resp = c._http.post("/v1/servers/vm1/exec", json={"command": ["true"], "timeout": 0})
    assert resp.status_code == 422 and resp.json()["field"] == "timeout", resp.text
    with pytest.raises(ApiError) as err:
        c.exec("vm1", ["true"])
    assert err.value.status == 409, err.value.detail  # fake hosts serve no console channel
    with pytest.raises(ApiError) as missing:
        c.exec("nope", ["true"])
    assert missing.value.status == 404
