"""Bad input gets a 4xx naming the field, never a 500, and never leaves anything half-built."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cloud import Cloud

HOSTILE_NAMES = [
    "a;rm -rf /",
    "$(reboot)",
    "`id`",
    "../../etc/passwd",
    "a/b",
    "line\nbreak",
    "x" * 1000,
    "",
    "-leading-dash",
    "sp ace",
]


def post(cloud: Cloud, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    resp = cloud.client._http.post(path, json=body)
    return resp.status_code, resp.json() if resp.content else {}


def assert_nothing_built(cloud: Cloud) -> None:
    assert cloud.client.servers() == []
    host = cloud.client.hosts()[0]
    assert (host.used_vcpus, host.used_ram_mb, host.used_disk_gb) == (0, 0, 0)
    agent = cloud.agents[0][0]
    assert list(agent.layout.instances.iterdir()) == []


def server(**kw: Any) -> dict[str, Any]:
    body = {"name": "ok", "image": "img", "flavor": "m1.tiny", "network": "net"}
    body.update(kw)
    return body


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_server_names_rejected(ready: Cloud, name: str) -> None:
    status, body = post(ready, "/v1/servers", server(name=name))
    assert status == 422, body
    assert body["field"] == "name" and "name" in body["detail"]
    assert_nothing_built(ready)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("path", ["/v1/networks", "/v1/keypairs", "/v1/images", "/v1/flavors"])
def test_hostile_resource_names_rejected(ready: Cloud, path: str, name: str) -> None:
    bodies = {
        "/v1/networks": {"name": name, "cidr": "10.99.0.0/24"},
        "/v1/keypairs": {"name": name},
        "/v1/images": {"name": name},
        "/v1/flavors": {"name": name, "vcpus": 1, "ram_mb": 128, "disk_gb": 1},
    }
    status, body = post(ready, path, bodies[path])
    assert status == 422, body
    assert body["field"] == "name"


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("image", "nope", 404),
        ("flavor", "nope", 404),
        ("network", "nope", 404),
        ("key_name", "nope", 404),
        ("image", "", 422),
        ("flavor", "y" * 1000, 422),
        ("user_data", "x" * 70000, 422),
        ("extra", 1, 422),
    ],  # --host as a member: test_projects.py, test_members_cannot_manage_projects_or_force_hosts
)
def test_bad_references_name_the_field(ready: Cloud, field: str, value: Any, status: int) -> None:
    got, body = post(ready, "/v1/servers", server(**{field: value}))
    assert got == status, body
    assert body["field"] == field
    assert_nothing_built(ready)


def test_duplicate_names_conflict(ready: Cloud) -> None:
    assert post(ready, "/v1/servers", server(name="dup"))[0] == 202
    status, body = post(ready, "/v1/servers", server(name="dup"))
    assert status == 409 and body["field"] == "name"
    status, body = post(ready, "/v1/networks", {"name": "net", "cidr": "10.50.0.0/24"})
    assert status == 409 and body["field"] == "name"
    assert post(ready, "/v1/keypairs", {"name": "k"})[0] == 201
    assert post(ready, "/v1/keypairs", {"name": "k"})[0] == 409


@pytest.mark.parametrize(
    ("cidr", "status", "words"),
    [
        ("10.20.0.0/30", 422, "too small"),
        ("10.20.0.0/25", 409, "overlaps"),  # the fixture's net is 10.20.0.0/24
        ("10.20.0.5/24", 422, "host bits"),
        ("not-a-cidr", 422, "cidr"),
        ("fd00::/64", 422, "IPv4"),
        ("127.0.0.0/24", 422, "reserved"),
        ("169.254.0.0/24", 422, "reserved"),
    ],
)
def test_bad_cidrs(ready: Cloud, cidr: str, status: int, words: str) -> None:
    got, body = post(ready, "/v1/networks", {"name": "other", "cidr": cidr})
    assert got == status, body
    assert body["field"] == "cidr" and words in body["detail"]


def test_flavor_no_host_can_hold_says_why_per_host(ready: Cloud) -> None:
    ready.client.create_flavor(
        __import__("nubes.schemas.resources", fromlist=["FlavorCreate"]).FlavorCreate(
            name="huge", vcpus=64, ram_mb=1024 * 1024, disk_gb=10
        )
    )
    status, body = post(ready, "/v1/servers", server(flavor="huge"))
    assert status == 409, body
    assert "host1" in body["detail"] and "RAM" in body["detail"]
    assert_nothing_built(ready)


def test_bad_public_key_and_bad_json(ready: Cloud) -> None:
    status, body = post(ready, "/v1/keypairs", {"name": "k", "public_key": "ssh-rsa not;base64"})
    assert status == 422 and body["field"] == "public_key"
    resp = ready.client._http.post(
        "/v1/servers", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422


def test_no_token_and_bad_token(ready: Cloud) -> None:
    anon = ready.client._http.get("/v1/servers", headers={"authorization": ""})
    assert anon.status_code == 401
    bad = ready.client._http.get("/v1/servers", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
