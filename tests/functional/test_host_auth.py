"""Who may call what: every route against every kind of credential, and the join flow.

A host's credential comes from a one-time join token and speaks only for its own host (the
shape of Kubernetes' node authorizer); users' tokens never reach the agent API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from nubes import tls
from nubes.api.app import create_app
from nubes.client import ApiError, NubesClient
from nubes.conf import Settings
from nubes.db.models import JoinToken, utcnow
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image
from tests.functional.conftest import upload

CREDENTIALS = ("admin", "member", "other", "own_host", "other_host", "revoked", "none")
PUBLIC = {("GET", "/v1"), ("GET", "/v1/join/ca"), ("POST", "/v1/join")}
ADMIN_ONLY = {
    ("POST", "/v1/flavors"),
    ("DELETE", "/v1/flavors/{ref}"),
    ("GET", "/v1/hosts"),
    ("GET", "/v1/hosts/{ref}"),
    ("POST", "/v1/hosts/tokens"),
    ("DELETE", "/v1/hosts/{ref}"),
    ("POST", "/v1/hosts/{ref}/disable"),
    ("POST", "/v1/hosts/{ref}/enable"),
    ("POST", "/v1/hosts/{ref}/evacuate"),
    ("GET", "/v1/projects"),
    ("POST", "/v1/projects"),
    ("GET", "/v1/gc"),
    ("POST", "/v1/gc"),
    ("PUT", "/v1/quotas/{project}"),
    ("POST", "/v1/servers/{ref}/migrate"),
    ("GET", "/v1/migrations"),
    ("GET", "/v1/migrations/{migration_id}"),
}
# user routes that name one of the member's own resources: another project is told 404
OWNED = {
    ("GET", "/v1/images/{ref}"),
    ("GET", "/v1/keypairs/{ref}"),
    ("GET", "/v1/networks/{ref}"),
    ("GET", "/v1/servers/{ref}"),
    ("POST", "/v1/servers/{ref}/action"),
    ("GET", "/v1/servers/{ref}/console-log"),
    ("POST", "/v1/servers/{ref}/vnc"),
    ("POST", "/v1/servers/{ref}/console-ticket"),
    ("POST", "/v1/servers/{ref}/exec"),
    ("GET", "/v1/groups/{ref}"),
    ("GET", "/v1/operations/{op_id}"),
    ("GET", "/v1/volumes/{ref}"),
    ("POST", "/v1/servers/{ref}/volumes"),
    ("DELETE", "/v1/servers/{ref}/volumes/{volume}"),
    ("POST", "/v1/servers/{ref}/snapshot"),
    ("POST", "/v1/servers/{ref}/resize"),
}
# what an allowed caller (admin, or the host itself) gets from the agent API here
AGENT_OK = {
    ("POST", "/v1/agent/hosts"): 200,  # the own host's registration
    ("POST", "/v1/agent/hosts/{host_id}/heartbeat"): 204,
    ("POST", "/v1/agent/hosts/{host_id}/credential"): 200,
    ("POST", "/v1/agent/hosts/{host_id}/certificate"): 200,
    ("GET", "/v1/agent/hosts/{host_id}/desired"): 200,
    ("POST", "/v1/agent/hosts/{host_id}/report"): 204,
    ("GET", "/v1/images/{ref}/{part}"): 200,
    # no snapshot of that id: past authorization, the host is told it has none to send
    ("PUT", "/v1/agent/hosts/{host_id}/snapshots/{image_id}"): 404,
    ("POST", "/v1/agent/hosts/{host_id}/snapshots/{image_id}/failed"): 404,
    ("GET", "/v1/agent/hosts/{host_id}/migrations/{migration_id}/console-log"): 404,
}


@dataclass
class World:
    cloud: Cloud
    tokens: dict[str, str]
    refs: dict[str, str]  # path parameter -> a value per route family
    own_host_id: str


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    cloud = Cloud(tmp_path, hosts=2)
    try:
        admin = cloud.client
        member_token = admin.create_project(s.ProjectCreate(name="blue")).token
        other_token = admin.create_project(s.ProjectCreate(name="red")).token
        member = NubesClient(cloud.url, member_token)
        image = upload(member, "img", make_image(tmp_path / "img.qcow2"))
        net = member.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
        key = member.create_keypair(s.KeypairCreate(name="k", public_key=_PUBKEY))
        group = member.create_group(s.GroupCreate(name="g", policy="soft-affinity"))
        body = s.ServerCreate(name="web", image="img", flavor="m1.tiny", network="net")
        server = member.create_server(body)
        server = cloud.wait(
            lambda: (now := member.server(server.id)).status == "ACTIVE" and now, what="ACTIVE"
        )
        own = next(h for h in admin.hosts() if h.name == server.host)
        other = next(h for h in admin.hosts() if h.name != server.host)
        # a third machine joins, then is removed: its credential is the revoked one
        revoked = cloud.host_credential("gone")
        with NubesClient(cloud.url, revoked) as gone:
            gone.heartbeat(_joined_id(cloud, "gone"))
        admin.remove_host("gone")
        op_id = member.operations(server=server.id)[0].id
        tokens = {
            "admin": cloud.token,
            "member": member_token,
            "other": other_token,
            "own_host": cloud.credentials[own.name],
            "other_host": cloud.credentials[other.name],
            "revoked": revoked,
            "none": "",
        }
        refs = {
            "images": image.id,
            "flavors": "m1.tiny",
            "keypairs": key.name,
            "networks": net.id,
            "servers": server.id,
            "groups": group.id,
            "hosts": own.name,
            "operations": op_id,
        }
        member.close()
        yield World(cloud, tokens, refs, own.id)
    finally:
        cloud.close()


_PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk7TfAvmgXzqmtxGkm0rjbMBDp3z4fTJ1VbFZ2wqa0p t@t"


def _joined_id(cloud: Cloud, name: str) -> str:
    return next(h.id for h in cloud.client.hosts() if h.name == name)


def routes(app_settings: Settings) -> list[tuple[str, str]]:
    app = create_app(app_settings)
    return [(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops]


def concrete(method: str, path: str, w: World) -> str:
    family = path.split("/")[2] if path.count("/") >= 2 else ""
    ref = w.refs.get(family, "x")
    if method == "DELETE":
        ref = "no-such-thing"  # allowed deletes must not remove what the next rows need
    if path == "/v1/hosts/{ref}" and method == "GET":
        ref = w.refs["hosts"]
    if path.startswith("/v1/hosts/{ref}/"):
        ref = "no-such-host"  # no host is disabled under the other rows' feet
    return (
        path.replace("{ref}", ref)
        .replace("{part}", "file")
        .replace("{op_id}", w.refs["operations"])
        .replace("{host_id}", w.own_host_id)
    )


def expected(method: str, path: str, who: str) -> set[int] | str:
    """A set of statuses, or "passes": past authorization (no 401/403, no 5xx)."""
    key = (method, path)
    if key == ("POST", "/v1/join"):
        return {401}  # sent with a made-up join token: no bearer token helps
    if key in PUBLIC:
        return "passes"
    if who in ("none", "revoked"):
        return {401}
    if key in AGENT_OK:
        return {AGENT_OK[key]} if who in ("admin", "own_host") else {403}
    if who in ("own_host", "other_host"):
        return {403}
    if key in ADMIN_ONLY and who != "admin":
        return {403}
    if key in OWNED and who == "other":
        return {404}
    return "passes"


def test_every_route_answers_each_credential_as_allowed(world: World, tmp_path: Path) -> None:
    table = routes(Settings(state_dir=tmp_path / "spec", hypervisor_driver="fake"))
    assert len(table) >= 45  # the whole surface, not a sample
    unknown = {r for r in ADMIN_ONLY | OWNED if r not in table}
    assert not unknown, f"the table names routes that do not exist: {unknown}"
    transport = httpx.HTTPTransport(uds=world.cloud.url[len("unix://") :])
    wrong = []
    with httpx.Client(transport=transport, base_url="http://nubes", timeout=30) as http:
        for method, path in table:
            url = concrete(method, path, world)
            for who in CREDENTIALS:
                headers = {"authorization": f"Bearer {world.tokens[who]}"} if who != "none" else {}
                body = _body(method, path, world)
                resp = http.request(method, url, headers=headers, json=body)
                want = expected(method, path, who)
                ok = (
                    resp.status_code in want
                    if isinstance(want, set)
                    else resp.status_code < 500 and resp.status_code not in (401, 403)
                )
                if not ok:
                    wrong.append(f"{method} {path} as {who}: {resp.status_code}, want {want}")
                if path.endswith("/credential") and resp.status_code == 200:
                    world.tokens["own_host"] = resp.json()["credential"]  # the old one is gone
    assert not wrong, "\n".join(wrong)


def _body(method: str, path: str, w: World) -> object:
    if path == "/v1/agent/hosts":
        return _registration(w.refs["hosts"])
    if path.endswith("/action"):
        return {"action": "stop"}
    if path.endswith("/volumes") and method == "POST":
        return {"volume": "no-such-volume"}
    if path.endswith("/snapshot"):
        return {"name": "snap"}
    if path.endswith("/resize"):
        return {"flavor": "m1.small"}
    if path.endswith("/failed"):
        return {"error": "x"}
    if path.endswith("/exec"):
        return {"command": ["true"], "timeout": 1}
    if path.endswith("/report"):
        return {"instances": [], "leftovers": []}
    if path == "/v1/join":
        return {"token": "nj_nothing.00", "name": "x"}
    if path.endswith("/certificate"):
        return {"csr": tls.host_csr(tls.make_host_key()[1], "any-name").decode()}
    return {} if method in ("POST", "PUT") else None


def _registration(name: str) -> dict[str, object]:
    return {
        "name": name,
        "accel": "tcg",
        "state_dir": "",
        "vcpus": 2,
        "ram_mb": 4096,
        "disk_gb": 50,
    }


def test_register_speaks_only_for_its_own_host(world: World) -> None:
    w = world
    body = _registration(w.refs["hosts"])
    own = NubesClient(w.cloud.url, w.tokens["own_host"])
    other = NubesClient(w.cloud.url, w.tokens["other_host"])
    try:
        assert own.request("POST", "/v1/agent/hosts", json=body).json()["id"] == w.own_host_id
        with pytest.raises(ApiError) as exc:
            other.request("POST", "/v1/agent/hosts", json=body)
        assert exc.value.status == 403 and exc.value.field == "name"
        with pytest.raises(ApiError) as exc:  # nor read another host's desired state
            other.desired(w.own_host_id, -1, 0)
        assert exc.value.status == 403
        own_desired = own.desired(w.own_host_id, -1, 0)
        assert [i.id for i in own_desired.instances] == [w.refs["servers"]]
    finally:
        own.close()
        other.close()


def test_a_join_token_is_good_once_and_expires(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, hosts=0)
    try:
        anonymous = NubesClient(cloud.url, "")
        token = cloud.client.create_join_token(600).token
        joined = anonymous.join(token, "m1")
        assert joined.credential.startswith("nh_") and joined.host_name == "m1"
        with pytest.raises(ApiError) as exc:
            anonymous.join(token, "m2")  # reused
        assert exc.value.status == 401 and "already used" in exc.value.detail
        late = cloud.client.create_join_token(600).token
        with cloud.app.state.nubes.sessions() as session:
            session.execute(update(JoinToken).values(expires_at=utcnow() - timedelta(seconds=1)))
            session.commit()
        with pytest.raises(ApiError) as exc:
            anonymous.join(late, "m3")
        assert exc.value.status == 401 and "expired" in exc.value.detail
        fresh = cloud.client.create_join_token(600).token
        with pytest.raises(ApiError) as exc:  # a name that has joined is not taken over
            anonymous.join(fresh, "m1")
        assert exc.value.status == 409 and exc.value.field == "name"
        assert anonymous.join(fresh, "m4").host_name == "m4"  # the 409 did not spend it
        with pytest.raises(ApiError) as exc:
            cloud.client.request("POST", "/v1/hosts/tokens", json={"expires_in": 10})
        assert exc.value.status == 422 and exc.value.field == "expires_in"
        member = NubesClient(
            cloud.url, cloud.client.create_project(s.ProjectCreate(name="p")).token
        )
        with pytest.raises(ApiError) as exc:
            member.create_join_token()
        assert exc.value.status == 403
        # tokens are kept only as hashes
        with cloud.app.state.nubes.sessions() as session:
            stored = [row.token_sha256 for row in session.query(JoinToken)]
        assert token.split(".")[0] not in stored and len(stored) == 3
    finally:
        cloud.close()


def test_rotated_and_removed_credentials_stop_at_once(ready: Cloud) -> None:
    host_id = _joined_id(ready, "host1")
    old = ready.credentials["host1"]
    with NubesClient(ready.url, old) as agent:
        new = agent.rotate_credential(host_id)
        with pytest.raises(ApiError) as exc:
            agent.heartbeat(host_id)
        assert exc.value.status == 401
    with NubesClient(ready.url, new) as agent:
        agent.heartbeat(host_id)
        server = ready.client.create_server(
            s.ServerCreate(name="a", image="img", flavor="m1.tiny", network="net")
        )
        ready.credentials["host1"] = new  # the running agent's is revoked: it keeps failing
        with pytest.raises(ApiError) as exc:
            ready.client.remove_host("host1")
        assert exc.value.status == 409 and exc.value.field == "host"
        ready.client.remove_host("host1", force=True)
        with pytest.raises(ApiError) as exc:
            agent.heartbeat(host_id)
        assert exc.value.status == 401
    gone = ready.client.server(server.id)
    assert gone.status == "ERROR" and "host1 was removed" in gone.fault
    ready.client.delete_server(server.id)  # a server on no host goes at once
    with pytest.raises(ApiError) as exc:
        ready.client.server(server.id)
    assert exc.value.status == 404


def test_host_list_says_how_each_host_joined(ready: Cloud) -> None:
    (host,) = ready.client.hosts()
    assert host.joined_via == "join-token"
    assert host.agent_version  # the agent's package version, as registered
