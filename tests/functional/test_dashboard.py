"""The dashboard's files and headers, and its console's one-time tickets (issue 14).

The fake agents serve no console channel, so each host is given a closed loopback port: a
WebSocket that passes the Origin and the ticket gets as far as dialling that host, and is
closed 4503 naming it (the browser test, tests/integration/test_dashboard.py, goes all the
way to a real guest). Close codes are 4000 + the HTTP status.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from starlette.websockets import WebSocketDisconnect

from nubes.api import dashboard
from nubes.api.routes import browser_console
from nubes.client import ApiError, NubesClient
from nubes.db.models import Host
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image
from tests.functional.conftest import upload

ORIGIN = "http://testserver"  # the TestClient's own


@dataclass
class Console:
    cloud: Cloud
    member: NubesClient
    other: NubesClient
    server: str
    http: TestClient


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once it is closed


@pytest.fixture
def console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    cloud = Cloud(tmp_path, hosts=1)
    # the fake hypervisor has no VNC: the password step is the real path's only stand-in
    monkeypatch.setattr(browser_console, "set_vnc_password", lambda *_: "password")
    try:
        admin = cloud.client
        member = NubesClient(cloud.url, admin.create_project(s.ProjectCreate(name="b")).token)
        other = NubesClient(cloud.url, admin.create_project(s.ProjectCreate(name="r")).token)
        upload(member, "img", make_image(tmp_path / "img.qcow2"))
        member.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
        created = member.create_server(
            s.ServerCreate(name="web", image="img", flavor="m1.tiny", network="net")
        )
        cloud.wait(lambda: member.server(created.id).status == "ACTIVE", what="ACTIVE")
        with cloud.app.state.nubes.sessions() as session:
            session.execute(update(Host).values(console_port=_closed_port(), address="127.0.0.1"))
            session.commit()
        yield Console(cloud, member, other, created.id, TestClient(cloud.app))
        member.close()
        other.close()
    finally:
        cloud.close()


def _ticket(c: Console, client: NubesClient | None = None) -> str:
    answer = (client or c.member).request("POST", f"/v1/servers/{c.server}/console-ticket").json()
    assert answer["password"] and 0 < answer["expires_in"] <= 60
    path: str = answer["websocket"]
    assert path.startswith("/v1/console/vnc?ticket=nc_")
    return path


def _close_code(c: Console, path: str, origin: str = ORIGIN) -> int:
    with c.http.websocket_connect(path, headers={"origin": origin}) as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
    return closed.value.code


def test_a_ticket_opens_the_console_once(console: Console) -> None:
    path = _ticket(console)
    assert _close_code(console, path) == 4503  # let in: on to the host (whose port is shut)
    assert _close_code(console, path) == 4401  # spent
    assert _close_code(console, "/v1/console/vnc?ticket=nc_made-up") == 4401
    assert _close_code(console, "/v1/console/vnc") == 4401


def test_a_ticket_expires(console: Console) -> None:
    path = _ticket(console)
    tickets = console.cloud.app.state.nubes.tickets
    later = time.monotonic() + tickets.ttl + 1
    tickets.clock = lambda: later
    assert _close_code(console, path) == 4401


def test_another_origin_is_refused_and_spends_nothing(console: Console) -> None:
    path = _ticket(console)
    for origin in ("https://evil.example", "http://testserver.evil.example", ""):
        assert _close_code(console, path, origin) == 4403
    assert _close_code(console, path) == 4503  # the user's own page still gets in


def test_another_projects_server_has_no_console(console: Console) -> None:
    with pytest.raises(ApiError) as exc:
        _ticket(console, console.other)
    assert exc.value.status == 404 and exc.value.field == "server"
    with pytest.raises(ApiError) as exc:  # nor does a bearer token open the ticket's route
        console.other.request("GET", "/v1/console/vnc")
    assert exc.value.status in (403, 404, 405)


def test_the_dashboard_is_served_with_strict_headers(console: Console) -> None:
    page = console.http.get("/ui/")
    assert page.status_code == 200 and 'src="/ui/app.js"' in page.text
    assert "<script>" not in page.text  # no inline script: the CSP allows none
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    for asset in ("/ui/app.js", "/ui/console.js", "/ui/app.css"):
        assert console.http.get(asset).status_code == 200
    assert console.http.get("/ui", follow_redirects=False).headers["location"] == "/ui/"


def test_without_novnc_the_console_route_says_what_is_missing(tmp_path: Path) -> None:
    app = FastAPI()
    dashboard.install(app, novnc_dir=tmp_path / "absent")
    answer = TestClient(app).get("/ui/novnc/core/rfb.js")
    assert answer.status_code == 404 and "apt-get install novnc" in answer.text
