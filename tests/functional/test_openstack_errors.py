"""The OpenStack routes' edges, by hand: discovery without auth, Keystone's methods and
scoping, unknown and expired tokens, microversion negotiation, lookups by name, and bad
bodies answered 4xx in each service's error shape (never a 500)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from nubes.db.models import OsToken, utcnow
from nubes.schemas import resources as s
from tests.cloud import Cloud

PUBLIC = "https://127.0.0.1:8774"  # the default public URL (api_host, api_port)


@pytest.fixture
def http(ready: Cloud) -> Iterator[httpx.Client]:
    sock = str(ready.settings.api_socket)
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://nubes") as c:
        yield c


def password_body(user: str, password: str, scope: dict[str, Any] | None = None) -> Any:
    auth: dict[str, Any] = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"name": user, "domain": {"name": "Default"}, "password": password}
            },
        }
    }
    if scope is not None:
        auth["scope"] = scope
    return {"auth": auth}


def admin_token(http: httpx.Client, cloud: Cloud) -> str:
    answer = http.post("/identity/v3/auth/tokens", json=password_body("admin", cloud.token))
    assert answer.status_code == 201, answer.text
    return answer.headers["x-subject-token"]


def test_version_documents_need_no_auth_and_link_the_public_url(http: httpx.Client) -> None:
    for path, key in (
        ("/identity", "versions"),
        ("/identity/v3/", "version"),
        ("/compute/", "versions"),
        ("/compute/v2.1", "version"),
        ("/image/", "versions"),
        ("/network", "versions"),
    ):
        answer = http.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert f'"href":"{PUBLIC}/' in answer.text.replace(" ", ""), (path, answer.text)
        assert key in answer.json()
    assert http.get("/identity").json()["versions"]["values"][0]["status"] == "stable"


def test_password_token_and_application_credential_methods(
    http: httpx.Client, ready: Cloud
) -> None:
    team = ready.client.create_project(s.ProjectCreate(name="team"))
    answer = http.post("/identity/v3/auth/tokens", json=password_body("team", team.token))
    assert answer.status_code == 201
    body = answer.json()["token"]
    assert body["project"] == {"id": team.id, "name": "team", "domain": body["user"]["domain"]}
    assert body["expires_at"].endswith("Z")
    assert {e["type"] for e in body["catalog"]} == {"identity", "compute", "image", "network"}
    assert {e["endpoints"][0]["url"] for e in body["catalog"]} >= {f"{PUBLIC}/compute/v2.1"}
    first = answer.headers["x-subject-token"]
    again = http.post(
        "/identity/v3/auth/tokens",
        json={"auth": {"identity": {"methods": ["token"], "token": {"id": first}}}},
    )
    assert again.status_code == 201 and again.headers["x-subject-token"] != first
    assert again.json()["token"]["expires_at"] == body["expires_at"]  # no longer than its parent
    with httpx.Client(transport=http._transport, base_url="http://nubes") as member:
        member.headers["authorization"] = f"Bearer {team.token}"
        cred = member.post("/v1/openstack/credentials", json={}).json()
        refused = member.post("/v1/openstack/credentials", json={"project": "admin"})
        assert refused.status_code == 403
    assert cred["project"] == "team" and cred["auth_url"] == f"{PUBLIC}/identity/v3"
    by_cred = http.post(
        "/identity/v3/auth/tokens",
        json={
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": cred["id"], "secret": cred["secret"]},
                }
            }
        },
    )
    assert by_cred.status_code == 201
    by_name = http.post(
        "/identity/v3/auth/tokens",
        json={
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {
                        "name": "clouds-yaml",
                        "user": {"name": "team", "domain": {"name": "Default"}},
                        "secret": cred["secret"],
                    },
                }
            }
        },
    )
    assert by_name.status_code == 201, by_name.text
    assert by_cred.json()["token"]["project"]["id"] == team.id
    assert by_cred.json()["token"]["roles"][0]["name"] == "member"


def test_wrong_credentials_and_scopes_are_401(http: httpx.Client, ready: Cloud) -> None:
    wrong = http.post("/identity/v3/auth/tokens", json=password_body("admin", "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 401
    other = http.post(
        "/identity/v3/auth/tokens",
        json=password_body("admin", ready.token, {"project": {"name": "someone-else"}}),
    )
    assert other.status_code == 401
    secret = {"methods": ["application_credential"], "application_credential": {"secret": "x"}}
    no_id = http.post("/identity/v3/auth/tokens", json={"auth": {"identity": secret}})
    assert no_id.status_code == 400 and "application_credential.id" in no_id.text
    for bad in ({}, {"auth": []}, {"auth": {"identity": {"methods": "password"}}}, [1]):
        answer = http.post("/identity/v3/auth/tokens", json=bad)
        assert answer.status_code == 400, (bad, answer.text)


def test_unknown_and_expired_tokens_are_401(http: httpx.Client, ready: Cloud) -> None:
    missing = http.get("/compute/v2.1/servers")
    assert missing.status_code == 401 and "unauthorized" in missing.json()
    unknown = http.get("/network/v2.0/networks", headers={"x-auth-token": "ks_nothing"})
    assert unknown.status_code == 401 and "NeutronError" in unknown.json()
    token = admin_token(http, ready)
    headers = {"x-auth-token": token}
    assert http.get("/image/v2/images", headers=headers).status_code == 200
    with ready.app.state.nubes.sessions() as session:
        session.execute(update(OsToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert http.get("/image/v2/images", headers=headers).status_code == 401
    # a nubes bearer token is not a Keystone token
    bearer = http.get("/compute/v2.1/servers", headers={"x-auth-token": ready.token})
    assert bearer.status_code == 401


def test_microversions(http: httpx.Client, ready: Cloud) -> None:
    auth = {"x-auth-token": admin_token(http, ready)}
    for sent in ({}, {"OpenStack-API-Version": "compute latest"},
                 {"X-OpenStack-Nova-API-Version": "2.1"}):  # fmt: skip
        answer = http.get("/compute/v2.1/flavors", headers=auth | sent)
        assert answer.status_code == 200, sent
        assert answer.headers["openstack-api-version"] == "compute 2.1"
        assert answer.headers["x-openstack-nova-api-version"] == "2.1"
        assert "OpenStack-API-Version" in answer.headers["vary"]
    high = http.get(
        "/compute/v2.1/flavors", headers=auth | {"OpenStack-API-Version": "compute 2.99"}
    )
    assert high.status_code == 406
    assert "Maximum is 2.1" in high.text or "maximum is 2.1" in high.text
    assert high.headers["openstack-api-version"] == "compute 2.1"
    for bad in ("compute 2.x", "compute two", "compute 2"):
        answer = http.get("/compute/v2.1/flavors", headers=auth | {"OpenStack-API-Version": bad})
        assert answer.status_code == 400 and "badRequest" in answer.json(), bad


def test_lookups_by_name_answer_404(http: httpx.Client, ready: Cloud) -> None:
    auth = {"x-auth-token": admin_token(http, ready)}
    for path in (
        "/compute/v2.1/servers/web1",
        "/compute/v2.1/flavors/m1.tiny",
        "/compute/v2.1/os-keypairs/nokey",
        "/image/v2/images/img",
        "/network/v2.0/networks/net",
        "/network/v2.0/subnets/net",
        "/network/v2.0/security-groups/default",
        "/network/v2.0/floatingips/1.2.3.4",
    ):
        answer = http.get(path, headers=auth)
        assert answer.status_code == 404, (path, answer.text)
    compute = http.get("/compute/v2.1/servers/web1", headers=auth).json()
    assert compute["itemNotFound"]["code"] == 404
    assert http.get("/compute/v2.1/servers/", headers=auth).json() == {"servers": []}


def server_body(**server: Any) -> dict[str, Any]:
    return {"server": {"name": "s1", "imageRef": "x", "flavorRef": "x"} | server}


def test_bad_server_creates_are_4xx_naming_the_field(http: httpx.Client, ready: Cloud) -> None:
    auth = {"x-auth-token": admin_token(http, ready)}
    image = ready.client.image("img").id
    flavor = ready.client.flavors()[0].id
    good = {"imageRef": image, "flavorRef": flavor}
    cases: list[tuple[Any, int, str]] = [
        ({"nothing": 1}, 400, "server"),
        ([1, 2], 400, "server"),
        ({"server": {"name": "s1", "flavorRef": flavor}}, 400, "imageRef"),
        ({"server": {"name": "s1", "imageRef": image}}, 400, "flavorRef"),
        (server_body(imageRef="no-such-image", flavorRef=flavor), 404, "no-such-image"),
        (server_body(imageRef=image, flavorRef="no-such-flavor"), 404, "no-such-flavor"),
        (server_body(**good, name="bad name!"), 400, "name"),
        (server_body(**good, name=7), 400, "name"),
        (server_body(**good, networks="everything"), 400, "networks"),
        (server_body(**good, networks=[{"port": "p"}]), 400, "networks[0].port"),
        (server_body(**good, networks=[{"uuid": "nope"}]), 404, "nope"),
        (server_body(**good, user_data="***"), 400, "user_data"),
        (server_body(**good, min_count=3, max_count=3), 400, "min_count"),
        (server_body(**good, security_groups="web"), 400, "security_groups"),
        (server_body(**good, key_name="nokey"), 404, "nokey"),
    ]
    for body, status, says in cases:
        answer = http.post("/compute/v2.1/servers", json=body, headers=auth)
        assert answer.status_code == status, (body, answer.text)
        assert says in answer.text, (body, answer.text)
    user_data = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    made = http.post(
        "/compute/v2.1/servers", json=server_body(**good, user_data=user_data), headers=auth
    )
    assert made.status_code == 202, made.text
    server_id = made.json()["server"]["id"]
    action = f"/compute/v2.1/servers/{server_id}/action"
    for bad in ({"os-migrate": None}, {"reboot": {"type": "SOFTLY"}}, {}):
        answer = http.post(action, json=bad, headers=auth)
        assert answer.status_code == 400, (bad, answer.text)


def test_bad_neutron_and_glance_bodies_are_400(http: httpx.Client, ready: Cloud) -> None:
    auth = {"x-auth-token": admin_token(http, ready)}
    made = http.post("/network/v2.0/networks/", json={"network": {"name": "n2"}}, headers=auth)
    assert made.status_code == 201, made.text
    net = made.json()["network"]["id"]
    cases: list[tuple[str, Any, int, str]] = [
        ("/network/v2.0/networks", {"network": {}}, 400, "network.name"),
        ("/network/v2.0/networks", {"network": {"name": "net"}}, 409, "net"),
        ("/network/v2.0/subnets", {"subnet": {"network_id": net}}, 400, "subnet.cidr"),
        ("/network/v2.0/subnets", {"subnet": {"network_id": net, "cidr": "10.1.0.0/33"}}, 400,
         "cidr"),
        ("/network/v2.0/subnets", {"subnet": {"network_id": net, "cidr": "fd00::/64",
                                               "ip_version": 6}}, 400, "ip_version"),
        ("/network/v2.0/subnets", {"subnet": {"network_id": "nope", "cidr": "10.9.0.0/24"}},
         404, "nope"),
        ("/network/v2.0/security-group-rules", {"security_group_rule": {}}, 400,
         "security_group_id"),
        ("/network/v2.0/floatingips", {"floatingip": {"floating_network_id": "nope"}}, 404,
         "nope"),
        ("/image/v2/images", {"name": "i2", "disk_format": "vmdk"}, 400, "disk_format"),
        ("/image/v2/images", ["i2"], 400, "body"),
        ("/image/v2/images", {"name": "bad name!"}, 400, "name"),
    ]  # fmt: skip
    for path, body, status, says in cases:
        answer = http.post(path, json=body, headers=auth)
        assert answer.status_code == status, (path, body, answer.text)
        assert says in answer.text, (path, body, answer.text)
    group = http.get("/network/v2.0/security-groups?name=default", headers=auth).json()
    group_id = group["security_groups"][0]["id"]
    for rule, says in (
        ({"direction": "sideways"}, "direction"),
        ({"direction": "ingress", "protocol": "gre"}, "protocol"),
        ({"direction": "ingress", "ethertype": "IPv6"}, "ethertype"),
        ({"direction": "ingress", "protocol": "tcp", "port_range_min": "x"}, "port_range_min"),
    ):
        body = {"security_group_rule": {"security_group_id": group_id} | rule}
        answer = http.post("/network/v2.0/security-group-rules", json=body, headers=auth)
        assert answer.status_code == 400 and says in answer.text, (rule, answer.text)


def test_other_projects_resources_answer_404(http: httpx.Client, ready: Cloud) -> None:
    admin = {"x-auth-token": admin_token(http, ready)}
    made = http.post(
        "/compute/v2.1/servers",
        json=server_body(imageRef=ready.client.image("img").id,
                         flavorRef=ready.client.flavors()[0].id),
        headers=admin,
    )  # fmt: skip
    server_id = made.json()["server"]["id"]
    team = ready.client.create_project(s.ProjectCreate(name="team"))
    answer = http.post("/identity/v3/auth/tokens", json=password_body("team", team.token))
    member = {"x-auth-token": answer.headers["x-subject-token"]}
    assert http.get(f"/compute/v2.1/servers/{server_id}", headers=member).status_code == 404
    assert http.delete(f"/compute/v2.1/servers/{server_id}", headers=member).status_code == 404
    nets = http.get("/network/v2.0/networks", headers=member).json()["networks"]
    assert [n["name"] for n in nets] == []  # the admin's tenant network is not theirs
    images = http.get("/image/v2/images", headers=member).json()["images"]
    assert [i["visibility"] for i in images] == ["public"]  # the admin's images are public


def test_pagination_by_marker(http: httpx.Client, ready: Cloud) -> None:
    auth = {"x-auth-token": admin_token(http, ready)}
    for name in ("p1", "p2", "p3"):
        made = http.post("/image/v2/images", json={"name": name, "x_custom": 1}, headers=auth)
        assert made.status_code == 201 and made.json()["x_custom"] == "1"
    first = http.get("/image/v2/images?limit=2", headers=auth).json()
    assert len(first["images"]) == 2 and first["next"].startswith("/v2/images?marker=")
    rest = http.get("/image" + first["next"], headers=auth).json()
    seen = [i["name"] for i in first["images"] + rest["images"]]
    assert sorted(seen) == ["img", "p1", "p2", "p3"] and "next" not in rest
    assert http.get("/image/v2/images?marker=nope", headers=auth).status_code == 400
    good = {"imageRef": ready.client.image("img").id, "flavorRef": ready.client.flavors()[0].id}
    for name in ("a1", "a2"):
        made = http.post("/compute/v2.1/servers", json=server_body(**good, name=name), headers=auth)
        assert made.status_code == 202, made.text
    one = http.get("/compute/v2.1/servers/detail?limit=1", headers=auth).json()["servers"]
    two = http.get(f"/compute/v2.1/servers?limit=1&marker={one[0]['id']}", headers=auth).json()
    after = http.get(f"/compute/v2.1/servers?marker={two['servers'][0]['id']}", headers=auth).json()
    assert {one[0]["name"], two["servers"][0]["name"]} == {"a1", "a2"}
    assert after == {"servers": []}
    named = http.get("/compute/v2.1/servers/detail?name=^a1$", headers=auth).json()["servers"]
    assert [s["name"] for s in named] == ["a1"]
    assert (
        named[0]["OS-SRV-USG:launched_at"] is None or "Z" not in named[0]["OS-SRV-USG:launched_at"]
    )
    bad = http.get("/compute/v2.1/servers?name=(", headers=auth)
    assert bad.status_code == 400


WEIRD: list[Any] = [None, 0, -1, 2**70, True, "", "x" * 5000, "a\x00b", [], [1], {}, {"a": 1}]


def test_hostile_values_in_every_field_are_never_a_500(http: httpx.Client, ready: Cloud) -> None:
    """Each field of each OpenStack write, given each odd value over a good body: 4xx or a
    success, never a 500 (the clients act on the status)."""
    auth = {"x-auth-token": admin_token(http, ready)}
    net = http.post("/network/v2.0/networks", json={"network": {"name": "h1"}}, headers=auth)
    group = http.get("/network/v2.0/security-groups?name=default", headers=auth).json()
    image, flavor = ready.client.image("img").id, ready.client.flavors()[0].id
    writes: list[tuple[str, str | None, dict[str, Any]]] = [
        ("/compute/v2.1/servers", "server",
         {"name": "h", "imageRef": image, "flavorRef": flavor, "networks": [{"uuid": "net"}],
          "key_name": None, "user_data": None, "security_groups": [{"name": "default"}],
          "min_count": 1, "block_device_mapping_v2": []}),
        ("/compute/v2.1/os-keypairs", "keypair", {"name": "hk", "public_key": None}),
        ("/network/v2.0/networks", "network", {"name": "hn", "router:external": False}),
        ("/network/v2.0/subnets", "subnet",
         {"network_id": net.json()["network"]["id"], "cidr": "10.77.0.0/24", "name": "s",
          "ip_version": 4, "gateway_ip": None, "enable_dhcp": True}),
        ("/network/v2.0/security-groups", "security_group", {"name": "hg", "description": ""}),
        ("/network/v2.0/security-group-rules", "security_group_rule",
         {"security_group_id": group["security_groups"][0]["id"], "direction": "ingress",
          "protocol": "tcp", "port_range_min": 1, "port_range_max": 2, "ethertype": "IPv4",
          "remote_ip_prefix": None, "remote_group_id": None}),
        ("/network/v2.0/floatingips", "floatingip", {"floating_network_id": "x", "port_id": None}),
        ("/image/v2/images", None, {"name": "hi", "disk_format": "qcow2", "prop": "v"}),
        ("/identity/v3/auth/tokens", "auth",
         {"identity": {"methods": ["password"], "password": {"user": {"name": "admin",
                                                                      "password": "x"}}}}),
    ]  # fmt: skip
    failures = []
    for path, key, good in writes:
        for field in good:
            for value in WEIRD:
                inner = good | {field: value}
                body = {key: inner} if key else inner
                answer = http.post(path, json=body, headers=auth)
                if answer.status_code >= 500:
                    failures.append(f"{path} {field}={value!r:.40}: {answer.text[:200]}")
    for path in ("/compute/v2.1/servers/x/action", "/network/v2.0/floatingips/x"):
        for value in WEIRD:
            answer = http.request("PUT" if "floating" in path else "POST", path, json=value,
                                  headers=auth)  # fmt: skip
            if answer.status_code >= 500:
                failures.append(f"{path} {value!r:.40}: {answer.text[:200]}")
    assert not failures, "\n".join(failures[:20])
