"""GET /metrics: Prometheus text that parses and moves with the cloud."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s
from tests.cloud import Cloud


def scrape(cloud: Cloud) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = cloud.client.request("GET", "/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_when_servers_are_created(ready: Cloud) -> None:
    before = scrape(ready)
    assert value(before, "nubes_host_capacity", host="host1", resource="vcpus") > 0
    assert value(before, "nubes_host_used", host="host1", resource="vcpus") == 0
    body = s.ServerCreate(name="web1", image="img", flavor="m1.tiny", network="net")  # type: ignore[call-arg]
    server = ready.client.create_server(body)
    ready.wait_status(server.id, "ACTIVE")
    after = scrape(ready)
    assert value(after, "nubes_servers", status="ACTIVE") == 1
    assert value(after, "nubes_host_used", host="host1", resource="vcpus") == server_vcpus(ready)
    created = value(after, "nubes_operation_duration_seconds_count", kind="create", result="done")
    assert created == 1
    # the route's template, never the raw path (an id in a label would grow without bound)
    shown = value(
        after,
        "nubes_api_request_duration_seconds_count",
        route="/v1/servers/{ref}",
        method="GET",
        status="2xx",
    )
    assert shown >= 1
    assert not any(server.id in str(labels) for _, labels in after)


def server_vcpus(cloud: Cloud) -> int:
    return next(
        f.vcpus for f in cloud.client.flavors() if f.name == cloud.client.servers()[0].flavor
    )


def test_metrics_need_the_admin_token(ready: Cloud) -> None:
    project = ready.client.create_project(s.ProjectCreate(name="team"))  # type: ignore[call-arg]
    with NubesClient(ready.url, project.token) as member, NubesClient(ready.url, "") as nobody:
        for who, status in ((member, 403), (nobody, 401)):
            with pytest.raises(ApiError) as err:
                who.request("GET", "/metrics")
            assert err.value.status == status


def test_metrics_open_by_setting(make_cloud: object) -> None:
    cloud = make_cloud(metrics_open=True)  # type: ignore[operator]
    with NubesClient(cloud.url, "") as nobody:
        assert "nubes_host_capacity" in nobody.request("GET", "/metrics").text
