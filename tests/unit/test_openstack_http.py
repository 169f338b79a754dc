"""The OpenStack layer's pure parts: microversion negotiation, error shapes, loose booleans,
marker pages and Neutron's filters."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from starlette.datastructures import Headers, QueryParams

from nubes.errors import BadRequest
from nubes.openstack.compute import negotiate, requested_version
from nubes.openstack.http import NotAcceptable, error_body, flag, last_segment, page
from nubes.openstack.neutron import listed


def request(headers: dict[str, str] | None = None, query: str = "") -> Any:
    return SimpleNamespace(
        headers=Headers(headers or {}),
        state=SimpleNamespace(),
        query_params=QueryParams(query),
        url=SimpleNamespace(path="/network/v2.0/networks"),
        base_url="https://h:1/",
    )


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ({}, None),
        ({"OpenStack-API-Version": "compute 2.1"}, "2.1"),
        ({"OpenStack-API-Version": "image 2.5, compute latest"}, "latest"),
        ({"OpenStack-API-Version": "image 2.5"}, None),
        ({"X-OpenStack-Nova-API-Version": "2.1"}, "2.1"),
    ],
)
def test_the_requested_version(headers: dict[str, str], version: str | None) -> None:
    assert requested_version(request(headers)) == version


def test_negotiation() -> None:
    for ok in (
        {},
        {"OpenStack-API-Version": "compute latest"},
        {"X-OpenStack-Nova-API-Version": "2.1"},
    ):
        r = request(ok)
        negotiate(r)
        assert r.state.os_headers["OpenStack-API-Version"] == "compute 2.1"
    with pytest.raises(NotAcceptable, match="maximum is 2.1"):
        negotiate(request({"OpenStack-API-Version": "compute 2.90"}))
    with pytest.raises(NotAcceptable):
        negotiate(request({"X-OpenStack-Nova-API-Version": "3.0"}))
    for bad in ("compute 2.x", "compute 2", "compute "):
        with pytest.raises(BadRequest):
            negotiate(request({"OpenStack-API-Version": bad}))


def test_error_shapes() -> None:
    assert error_body("compute", 404, "m") == {"itemNotFound": {"code": 404, "message": "m"}}
    assert error_body("compute", 409, "m") == {"conflictingRequest": {"code": 409, "message": "m"}}
    assert "computeFault" in error_body("compute", 500, "m")
    assert error_body("network", 404, "m")["NeutronError"]["type"] == "HTTPNotFound"
    assert error_body("identity", 401, "m") == {
        "error": {"code": 401, "message": "m", "title": "Unauthorized"}
    }
    assert error_body("image", 400, "m")["message"] == "m"


def test_loose_booleans_and_refs() -> None:
    assert [flag(v) for v in (True, "True", "1", "on", "false", "0", False)] == [
        True, True, True, True, False, False, False,
    ]  # fmt: skip
    assert flag("None") is None and flag(None) is None and flag("maybe") is None
    assert last_segment("https://h/compute/v2.1/flavors/abc/") == "abc"
    assert last_segment("abc") == "abc"


def test_marker_pages() -> None:
    rows = [{"id": str(i)} for i in range(5)]
    assert page(rows, None, 2) == rows[:2]
    assert page(rows, "1", 2) == rows[2:4]
    assert page(rows, "4", None) == []
    assert page(rows, None, 0) == []
    with pytest.raises(BadRequest):
        page(rows, "nope", None)


def test_neutron_filters_and_links() -> None:
    docs = [
        {"id": "a", "name": "blue", "router:external": False, "subnets": ["s"], "mtu": 1450},
        {"id": "b", "name": "public", "router:external": True, "subnets": [], "mtu": 1450},
        {"id": "c", "name": "red", "router:external": False, "subnets": [], "mtu": 1400},
    ]
    names = lambda q: [d["name"] for d in listed(request(query=q), docs, "networks")["networks"]]  # noqa: E731
    assert names("router:external=True") == ["public"]
    assert names("router:external=false") == ["blue", "red"]
    assert names("name=blue&name=red") == ["blue", "red"]
    assert names("name=&status=ACTIVE") == ["blue", "public", "red"]  # empty and unknown: no filter
    assert names("mtu=1400") == ["red"]
    assert names("subnets=s&fields=id") == ["blue", "public", "red"]
    first = listed(request(query="limit=2"), docs, "networks")
    assert [d["id"] for d in first["networks"]] == ["a", "b"]
    assert first["networks_links"][0]["href"].endswith("?limit=2&marker=b")
    assert "networks_links" not in listed(request(query="limit=2&marker=b"), docs, "networks")
