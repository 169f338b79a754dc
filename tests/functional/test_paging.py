"""Every /v1 list is paged: limit and marker, the next page in a Link header, the client
follows pages, and a page of servers costs the same queries however many servers it holds."""

from __future__ import annotations

import httpx
from sqlalchemy import event, select

from nubes.control import compute
from nubes.db.models import Instance
from nubes.schemas import resources as s
from tests.cloud import Cloud


def create(cloud: Cloud, name: str) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net")
    return cloud.client.create_server(body)


def test_pages_follow_the_link_and_neither_shift_nor_repeat(ready: Cloud) -> None:
    made = [create(ready, f"p{i}").id for i in range(5)]
    http = ready.client._http
    first = http.get("/v1/servers", params={"limit": 2})
    assert [x["id"] for x in first.json()] == made[:2]
    ready.client.delete_server(made[0])  # a row going between two pages shifts nothing
    second = http.get(first.links["next"]["url"])
    assert [x["id"] for x in second.json()] == made[2:4]
    third = http.get(second.links["next"]["url"])
    assert [x["id"] for x in third.json()] == made[4:]
    assert "next" not in third.links
    bad = http.get("/v1/servers", params={"marker": "nope"})
    assert (bad.status_code, bad.json()["field"]) == (422, "marker")
    assert http.get("/v1/servers", params={"limit": 1001}).status_code == 422
    assert http.get("/v1/servers", params={"limit": 0}).status_code == 422


def test_the_client_follows_pages(ready: Cloud) -> None:
    for i in range(100):
        ready.client.create_flavor(s.FlavorCreate(name=f"f{i:03}", vcpus=1, ram_mb=64, disk_gb=1))
    first = ready.client._http.get("/v1/flavors")
    assert len(first.json()) == 100 and "next" in first.links
    names = [f.name for f in ready.client.flavors()]
    assert len(names) == len(set(names)) == 104


def queries_for_a_page(cloud: Cloud) -> int:
    """The statements a page of servers costs, on one connection (the agents' beside it on
    the engine do not count)."""
    state = cloud.app.state.nubes
    statements: list[str] = []
    with state.reads() as session:
        conn = session.connection()

        def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            statements.append(statement)

        event.listen(conn, "before_cursor_execute", seen)
        rows = list(session.scalars(select(Instance).where(Instance.deleted_at.is_(None))))
        wire = compute.to_wire_many(session, rows, state.settings.host_down_after)
        assert len(wire) == len(rows) and all(w.addresses["net"] for w in wire)
    return len(statements)


def test_a_page_of_servers_costs_the_same_queries_for_any_number(ready: Cloud) -> None:
    for i in range(2):
        create(ready, f"a{i}")
    few = queries_for_a_page(ready)
    for i in range(2, 12):
        create(ready, f"a{i}")
    assert few == queries_for_a_page(ready) <= 8


def test_operations_are_paged_newest_first(ready: Cloud) -> None:
    for i in range(3):
        create(ready, f"o{i}")
    http: httpx.Client = ready.client._http
    page = http.get("/v1/operations", params={"limit": 2})
    rest = http.get(page.links["next"]["url"])
    kinds = [(o["kind"], o["server_id"]) for o in page.json() + rest.json()]
    assert len(kinds) == len(set(kinds)) == 3
    assert ready.client.operations(limit=1)[0].id == page.json()[0]["id"]
