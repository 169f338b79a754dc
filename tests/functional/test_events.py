"""GET /v1/events: server state changes as server-sent events, resumable without loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

from nubes.cli.main import app
from nubes.client import NubesClient
from nubes.control import events
from nubes.schemas import events as se
from nubes.schemas import resources as s
from tests.cloud import Api, Cloud, make_image
from tests.functional.conftest import upload


def create(client: NubesClient, name: str) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net")  # type: ignore[call-arg]
    return client.create_server(body)


def history(cloud: Cloud, client: NubesClient | None = None) -> list[se.ServerEvent]:
    """Every kept event the caller may see, read in one stream that ends at the newest."""
    c = client or cloud.client
    seen: list[se.ServerEvent] = []
    newest = max((e.id for e in kept(cloud)), default=0)
    for ev in c.events(after=0, reconnect=False, ticks=True):
        if ev is not None:
            seen.append(ev)
        if seen and seen[-1].id >= newest or ev is None and newest == 0:
            break
    return seen


def kept(cloud: Cloud) -> list[se.ServerEvent]:
    """What the database holds, every project's (the test's truth)."""
    with cloud.app.state.nubes.reads() as session:
        rows, _ = events.after(session, 0, None, 10_000)
        return [
            se.ServerEvent(
                id=r.id,
                kind=r.kind,  # type: ignore[arg-type]
                server=r.server_id,
                name=r.name,
                project=r.project_id,
                status=r.status,
                task_state=r.task_state,
                ready=r.ready,
                at=r.at,
            )
            for r in rows
        ]


def restart_api(cloud: Cloud) -> None:
    cloud.apis[0].close()
    cloud.apis[0] = Api(cloud.settings)
    cloud.app = cloud.apis[0].app


def test_a_dropped_stream_resumes_without_losing_or_repeating_an_event(ready: Cloud) -> None:
    got: list[se.ServerEvent] = []
    started = threading.Event()
    follower = NubesClient(ready.url, ready.token)

    def follow() -> None:
        try:
            for ev in follower.events(ticks=True):  # from now on, reconnecting
                started.set()
                if ev is not None:
                    got.append(ev)
        except Exception:  # noqa: BLE001 - the test closes the client under it at the end
            pass

    threading.Thread(target=follow, daemon=True).start()
    assert started.wait(10), "the stream did not start"
    first = create(ready.client, "web1")
    ready.wait_status(first.id, "ACTIVE")
    # the API goes away under the stream (its connection drops), and comes back: what happens
    # before the client is connected again must come to it then
    restart_api(ready)
    for name in ("web2", "web3"):
        create(ready.client, name)
    ready.client.delete_server("web1")
    for name in ("web2", "web3"):
        ready.wait_status(name, "ACTIVE")
    ready.wait(
        lambda: not [x for x in ready.client.servers() if x.name == "web1"], what="web1 gone"
    )
    expected = kept(ready)
    ready.wait(lambda: len(got) >= len(expected), what="the resumed stream to catch up")
    follower.close()
    assert [e.id for e in got] == [e.id for e in expected]  # none lost, none twice, in order
    kinds = [(e.name, e.kind, e.status) for e in got]
    assert ("web1", "create", "BUILD") in kinds and ("web1", "delete", "DELETED") in kinds
    assert ("web3", "update", "ACTIVE") in kinds


def test_resuming_after_an_id_gives_exactly_what_came_after_it(ready: Cloud) -> None:
    for name in ("a1", "a2"):
        ready.wait_status(create(ready.client, name).id, "ACTIVE")
    every = history(ready)
    assert len(every) >= 4
    middle = every[len(every) // 2]
    resumed: list[se.ServerEvent] = []
    for ev in ready.client.events(after=middle.id, reconnect=False):
        assert ev is not None
        resumed.append(ev)
        if ev.id == every[-1].id:
            break
    assert resumed == every[len(every) // 2 + 1 :]


def test_a_member_sees_only_its_own_projects_events(ready: Cloud, tmp_path: Path) -> None:
    ready.wait_status(create(ready.client, "admins").id, "ACTIVE")
    project = ready.client.create_project(s.ProjectCreate(name="team"))  # type: ignore[call-arg]
    with NubesClient(ready.url, project.token) as member:
        upload(member, "img", make_image(tmp_path / "m.qcow2"))
        member.create_network(s.NetworkCreate(name="net", cidr="10.30.0.0/24"))  # type: ignore[call-arg]
        mine = create(member, "mine")
        ready.wait(lambda: member.server(mine.id).status == "ACTIVE", what="mine ACTIVE")
        seen: list[se.ServerEvent] = []
        for ev in member.events(after=0, reconnect=False):
            assert ev is not None
            seen.append(ev)
            if ev.server == mine.id and ev.status == "ACTIVE":
                break
    assert {e.project for e in seen} == {project.id}
    assert all(e.name == "mine" for e in seen)


def test_cli_events_and_create_wait(ready: Cloud) -> None:
    env = {"NUBES_URL": ready.url, "NUBES_TOKEN": ready.token}
    cmd = ["server", "create", "w1", "--image", "img", "--network", "net", "--wait", "-o", "json"]
    out = CliRunner().invoke(app, cmd, env=env)
    assert out.exit_code == 0, out.output
    created = json.loads(out.output)
    assert created["status"] == "ACTIVE" and created["ready_at"]
    follower = subprocess.Popen(
        [sys.executable, "-m", "nubes.cli", "events", "--after", "0", "-o", "json"],
        env=os.environ | env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        lines = [json.loads(follower.stdout.readline()) for _ in range(2)]
        assert lines[0]["kind"] == "create" and lines[0]["name"] == "w1"
        ready.client.delete_server("w1")
        while (ev := json.loads(follower.stdout.readline()))["kind"] != "delete":
            assert ev["name"] == "w1"
    finally:
        follower.terminate()
        follower.wait(10)


def test_bad_resume_points_and_callers_are_4xx(ready: Cloud) -> None:
    http = ready.client._http
    for headers, params in (
        ({"last-event-id": "x"}, {}),
        ({"last-event-id": "-3"}, {}),
        ({}, {"after": "-1"}),
        ({}, {"after": "nope"}),
    ):
        answer = http.get("/v1/events", headers=headers, params=params)
        assert answer.status_code == 422, (headers, params, answer.text)
    with NubesClient(ready.url, "") as nobody:
        assert nobody._http.get("/v1/events").status_code == 401
