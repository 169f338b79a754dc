"""Placement's SQL path (the best few candidates by ORDER BY ... LIMIT, Python's filters, one
conditional UPDATE) chooses the very host the whole pipeline (every host through the filters and
weighers, ties by name) would, on random host tables, on SQLite and PostgreSQL; at RAM ratio 1
the database walks an index for it; and a closed PostgreSQL connection is replaced unnoticed."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, text

from nubes.conf import Settings
from nubes.db.engine import make_engine, migrate
from nubes.db.models import Host, new_id, utcnow
from nubes.errors import NoValidHost
from nubes.scheduler import placement
from nubes.scheduler.filters import POLICIES, GroupState, Request
from tests.pgcluster import PgCluster

# names whose order differs between code points and a locale's collation
NAMES = ["web-2", "web10", "Web3", "web_1", "a", "B", "host-1", "host1", "h.9", "z-0"]
OVERLAYS = ["vxlan", "vxlan", "vxlan,geneve", "vxlan geneve", "geneve", ""]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/fast.db"
        migrate(url)
    else:
        postgres: PgCluster = request.getfixturevalue("postgres")
        url = postgres.create_database(template=request.getfixturevalue("pg_template"))
    e = make_engine(url)
    request.addfinalizer(e.dispose)
    return e


def random_hosts(rng: random.Random, n: int) -> list[dict[str, object]]:
    names = rng.sample(NAMES, min(n, len(NAMES))) + [
        f"h{i:03}-{rng.randint(0, 9)}" for i in range(n)
    ]
    rows = []
    for name in names[:n]:
        vcpus = rng.choice([2, 4, 8])
        ram = rng.choice([1024, 2048, 4096])  # few sizes: many ties in free RAM
        rows.append(
            dict(
                id=new_id(), name=name, vcpus=vcpus, ram_mb=ram, disk_gb=rng.choice([10, 40]),
                used_vcpus=rng.randint(0, vcpus * 2), used_ram_mb=rng.choice([0, 256, 512, 1024]),
                used_disk_gb=rng.randint(0, 20), enabled=rng.random() > 0.1,
                overlays=rng.choice(OVERLAYS), state_dir="",
                last_heartbeat=utcnow() - timedelta(seconds=rng.choice([0, 0, 0, 3600])),
            )
        )  # fmt: skip
    return rows


def random_group(rng: random.Random, names: list[str]) -> GroupState | None:
    """None half the time; else a group of any policy with members on a few of the hosts."""
    if rng.random() < 0.5:
        return None
    members = {n: rng.randint(1, 3) for n in rng.sample(names, rng.choice([0, 1, 3, 10]))}
    return GroupState("g", rng.choice(POLICIES), members)


@pytest.mark.parametrize("first_read", [1, placement.CANDIDATES])
@pytest.mark.parametrize("seed", range(6))
def test_placement_chooses_what_the_whole_pipeline_would(
    engine: Engine, seed: int, first_read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(placement, "CANDIDATES", first_read)  # 1: many reads of every host
    rng = random.Random(seed)
    s = Settings(
        host_down_after=60.0,
        cpu_allocation_ratio=rng.choice([1.0, 4.0]),
        ram_allocation_ratio=rng.choice([1.0, 1.5]),
        disk_allocation_ratio=rng.choice([1.0, 2.0]),
        scheduler_weigher=rng.choice(["spread", "pack"]),
    )
    hosts = random_hosts(rng, rng.choice([20, 40, 120]))
    names = [str(h["name"]) for h in hosts]
    with engine.begin() as conn:
        conn.execute(insert(Host), hosts)
    placed = 0
    for _ in range(60):
        req = Request(
            vcpus=1, ram_mb=rng.choice([128, 256, 512]), disk_gb=1,
            overlay=rng.choice(["vxlan", "vxlan", "geneve", None]),
            group=random_group(rng, names),
        )  # fmt: skip
        with engine.begin() as conn:
            verdicts = placement.explain(placement.host_states(conn, s), req, s)
            best = next((v for v in verdicts if v.weight is not None), None)
            if best is None:
                with pytest.raises(NoValidHost):
                    placement.claim(conn, req, s)
                continue
            chosen = placement.claim(conn, req, s)
            assert chosen.name == best.host, (s.scheduler_weigher, req, verdicts[:4])
            placed += 1
    assert placed > 5


def test_a_connection_the_server_closed_is_replaced(request: pytest.FixtureRequest) -> None:
    """Without pool_pre_ping's round trip: the checkout notices the closed socket."""
    postgres: PgCluster = request.getfixturevalue("postgres")
    url = postgres.create_database(template=request.getfixturevalue("pg_template"))
    e = make_engine(url, timeout=5)
    try:
        with e.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with make_engine(url).connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(0.2)  # the server's goodbye reaches the pooled connection's socket
        with e.connect() as conn:  # no OperationalError: a new connection
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        e.dispose()


@pytest.mark.parametrize("weigher", ["spread", "pack"])
def test_the_first_read_walks_an_index(engine: Engine, weigher: str) -> None:
    """At RAM ratio 1 the candidates' ORDER BY ... LIMIT is an index's order: the database
    reads the first hosts of the index with room, not every host."""
    s = Settings(scheduler_weigher=weigher)
    rng = random.Random(1)
    with engine.begin() as conn:
        conn.execute(insert(Host), random_hosts(rng, 1000))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE hosts"))
        query, params = placement.candidates_for(Request(1, 256, 1), s, placement.CANDIDATES)
        sql = str(query.params(params).compile(conn, compile_kwargs={"literal_binds": True}))
        explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        plan = " ".join(str(row) for row in conn.execute(text(explain + sql)))
    index = "ix_hosts_least_free_ram" if weigher == "pack" else "ix_hosts_most_free_ram"
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan and " Sort " not in plan, plan
