"""Quotas per project: defaults, a project's own limits, clear refusals, no overshoot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from nubes.cli.main import app
from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s
from nubes.schemas.quotas import QuotaUpdate
from tests.cloud import Cloud
from tests.functional.test_openstack_errors import admin_token
from tests.functional.test_races import RACE, race, server


def used(client: NubesClient, project: str | None = None) -> dict[str, tuple[int, int]]:
    return {q.resource: (q.limit, q.used) for q in client.quotas(project).quotas}


def test_a_create_past_a_quota_is_refused_naming_it_and_the_usage(ready: Cloud) -> None:
    team = ready.client.create_project(s.ProjectCreate(name="team"))
    with NubesClient(ready.url, team.token) as member:
        member.create_network(s.NetworkCreate(name="net", cidr="10.30.0.0/24"))
        assert used(member)["servers"] == (10, 0)  # the default (NUBES_QUOTA_SERVERS)
        ready.client.set_quotas("team", QuotaUpdate(servers=2, vcpus=3))
        for name in ("a", "b"):
            member.create_server(s.ServerCreate(**server(name)))
        with pytest.raises(ApiError) as err:
            member.create_server(s.ServerCreate(**server("c")))
        assert (err.value.status, err.value.field) == (409, "servers")
        assert err.value.detail == "quota exceeded: servers: the project uses 2 of its 2 servers"
        ready.client.set_quotas("team", QuotaUpdate(servers=None))  # back to the default
        with pytest.raises(ApiError) as err:
            member.create_server(s.ServerCreate(**server("c", flavor="m1.medium")))
        assert err.value.field == "vcpus" and err.value.detail.endswith(
            "uses 2 of its 3 vCPUs and this needs 2 more"
        )
        assert used(member)["servers"] == (10, 2)
        # a member reads its own project's quotas, no other's, and sets none
        with pytest.raises(ApiError) as err:
            member.quotas("admin")
        assert err.value.status == 404
        with pytest.raises(ApiError) as err:
            member.set_quotas("team", QuotaUpdate(servers=50))
        assert err.value.status == 403


def test_the_folded_quotas_and_images(ready: Cloud) -> None:
    ready.client.set_quotas("admin", QuotaUpdate(networks=1, images=1))
    with pytest.raises(ApiError) as err:
        ready.client.create_network(s.NetworkCreate(name="net2", cidr="10.40.0.0/24"))
    assert err.value.field == "networks" and "uses 1 of its 1 networks" in err.value.detail
    with pytest.raises(ApiError) as err:
        ready.client.create_image(s.ImageCreate(name="img2", disk_format="qcow2"))
    assert err.value.field == "images"


def test_racing_creates_cannot_overshoot(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud(hosts=1, **RACE)
    cloud.client.set_quotas("admin", QuotaUpdate(servers=3))
    answers: list[httpx.Response] = race(cloud, [server(f"q{i}") for i in range(10)])
    codes = Counter(a.status_code for a in answers)
    assert codes == {202: 3, 409: 7}, [a.text for a in answers]
    assert {a.json()["field"] for a in answers if a.status_code == 409} == {"servers"}
    assert len(cloud.client.servers()) == 3


def test_cli_quota_show_and_set(ready: Cloud) -> None:
    env = {"NUBES_URL": ready.url, "NUBES_TOKEN": ready.token}
    ready.client.create_project(s.ProjectCreate(name="team"))
    cmd = ["quota", "set", "team", "--servers", "20", "--vcpus", "40", "--ram", "-1", "-o", "json"]
    out = CliRunner().invoke(app, cmd, env=env)
    assert out.exit_code == 0, out.output
    got: dict[str, Any] = {q["resource"]: q for q in json.loads(out.output)["quotas"]}
    assert (got["servers"]["limit"], got["vcpus"]["limit"], got["ram_mb"]["limit"]) == (20, 40, -1)
    assert got["images"]["default"] and not got["servers"]["default"]
    out = CliRunner().invoke(app, ["quota", "show", "team"], env=env)
    assert out.exit_code == 0 and "unlimited" in out.output and "20" in out.output, out.output


def test_openstack_limits_report_the_quotas(ready: Cloud) -> None:
    ready.client.set_quotas("admin", QuotaUpdate(servers=7, vcpus=-1))
    ready.client.create_server(s.ServerCreate(**server("x")))
    sock = str(ready.settings.api_socket)
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://nubes") as http:
        token = admin_token(http, ready)
        answer = http.get("/compute/v2.1/limits", headers={"x-auth-token": token})
    absolute = answer.json()["limits"]["absolute"]
    assert (absolute["maxTotalInstances"], absolute["totalInstancesUsed"]) == (7, 1)
    assert absolute["maxTotalCores"] == -1 and absolute["maxSecurityGroups"] == 10
