"""Projects and member tokens: two tenants side by side, each blind to the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from nubes.cli.main import app
from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s
from tests.cloud import Cloud


@pytest.fixture
def member(ready: Cloud) -> Iterator[NubesClient]:
    created = ready.client.create_project(s.ProjectCreate(name="blue"))
    client = NubesClient(ready.url, created.token)
    try:
        yield client
    finally:
        client.close()


def status_of(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except ApiError as exc:
        return exc.status
    return 200


def test_admin_creates_and_lists_projects(ready: Cloud) -> None:
    created = ready.client.create_project(s.ProjectCreate(name="blue"))
    assert created.name == "blue" and len(created.token) >= 32
    assert [p.name for p in ready.client.projects()] == ["admin", "blue"]
    with pytest.raises(ApiError) as dup:
        ready.client.create_project(s.ProjectCreate(name="blue"))
    assert dup.value.status == 409 and dup.value.field == "name"
    bad = ready.client._http.post("/v1/projects", json={"name": "a;b"})
    assert bad.status_code == 422 and bad.json()["field"] == "name"


def test_members_cannot_manage_projects_or_force_hosts(ready: Cloud, member: NubesClient) -> None:
    assert status_of(member.projects) == 403
    assert status_of(lambda: member.create_project(s.ProjectCreate(name="red"))) == 403
    member.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
    body = s.ServerCreate(name="x", image="img", flavor="m1.tiny", network="net", host="host1")
    with pytest.raises(ApiError) as exc:
        member.create_server(body)
    assert exc.value.status == 403 and exc.value.field == "host"
    assert status_of(lambda: member.explain_server(body)) == 403


def test_two_tenants_see_only_their_own(ready: Cloud, member: NubesClient) -> None:
    admin = ready.client
    admin.create_group(s.GroupCreate(name="web", policy="anti-affinity"))
    theirs = admin.create_server(
        s.ServerCreate(name="web1", image="img", flavor="m1.tiny", network="net", group="web")
    )
    # the same names and the same CIDR in the other project: no clash
    net = member.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
    member.create_group(s.GroupCreate(name="web", policy="anti-affinity"))
    mine = member.create_server(
        s.ServerCreate(name="web1", image="img", flavor="m1.tiny", network="net", group="web")
    )
    assert mine.addresses == {"net": ["10.20.0.2"]}
    assert [x.id for x in member.servers()] == [mine.id]
    assert [x.id for x in admin.servers()] == [theirs.id]
    assert [g.members for g in member.groups()] == [["web1"]]
    for call in (
        lambda: member.server(theirs.id),
        lambda: member.delete_server(theirs.id),
        lambda: member.server_action(theirs.id, "stop"),
        lambda: member.console_log(theirs.id),
        lambda: member.network(admin.network("net").id),
        lambda: member.group(admin.group("web").id),
        lambda: member.delete("groups", admin.group("web").id),
        lambda: admin.server(mine.id),
        lambda: admin.network(net.id),
    ):
        assert status_of(call) == 404
    # the admin's images are public: that is how the member booted "img"
    assert [i.name for i in member.images()] == ["img"]


def test_cli_project_create_prints_the_token_and_how_to_use_it(ready: Cloud) -> None:
    env = {"NUBES_URL": ready.url, "NUBES_TOKEN": ready.token}
    out = CliRunner().invoke(app, ["project", "create", "green"], env=env)
    assert out.exit_code == 0, out.output
    token_line = next(line for line in out.output.splitlines() if "NUBES_TOKEN=" in line)
    token = token_line.split("NUBES_TOKEN=")[1].strip()
    assert f"NUBES_URL={ready.url}" in token_line
    listed = CliRunner().invoke(app, ["server", "list"], env={**env, "NUBES_TOKEN": token})
    assert listed.exit_code == 0, listed.output
    projects = CliRunner().invoke(app, ["project", "list"], env=env)
    assert "green" in projects.output


def test_cli_group_and_explain(ready: Cloud) -> None:
    env = {"NUBES_URL": ready.url, "NUBES_TOKEN": ready.token}
    run = CliRunner().invoke
    made = run(app, ["group", "create", "web", "--policy", "soft-anti-affinity"], env=env)
    assert made.exit_code == 0, made.output
    bad = run(app, ["group", "create", "x", "--policy", "nope"], env=env)
    assert bad.exit_code != 0
    args = ["server", "create", "w1", "--image", "img", "--network", "net", "--group", "web"]
    explained = run(app, [*args, "--explain"], env=env)
    assert explained.exit_code == 0, explained.output
    for word in ("host1", "status", "ram", "anti-affinity", "weight", "nothing was created"):
        assert word in explained.output
    assert ready.client.servers() == []
    created = run(app, args, env=env)
    assert created.exit_code == 0, created.output
    assert ready.client.server("w1").group == "web"
    shown = run(app, ["group", "show", "web"], env=env)
    assert "w1" in shown.output and "host1" in shown.output
