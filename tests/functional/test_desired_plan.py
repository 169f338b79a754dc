"""A host's desired state reads through indexes: instances deleted over a cloud's life (kept as
rows) and other hosts' instances are never scanned, on each of the agents' fetches."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event

from nubes.control.desired import desired_state
from nubes.db.models import Host
from nubes.schemas import resources as s
from tests.cloud import Cloud
from tests.functional.conftest import prepare


def test_a_desired_state_scans_no_instance_or_port_table(tmp_path: Path) -> None:
    cloud = prepare(Cloud(tmp_path, hosts=1, database_url=""), tmp_path)  # SQLite's planner
    try:
        body = s.ServerCreate(name="a", image="img", flavor="m1.tiny", network="net")
        cloud.client.create_server(body)
        state = cloud.app.state.nubes
        statements: list[tuple[str, Any]] = []

        me = threading.get_ident()  # not the cloud's own loops (its gateway keeper reads all)

        def seen(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
            if threading.get_ident() == me:
                statements.append((sql, params))

        event.listen(state.engine, "before_cursor_execute", seen)
        try:
            with state.reads() as session:
                host = session.query(Host).one()
                desired = desired_state(session, host, host.generation)
        finally:
            event.remove(state.engine, "before_cursor_execute", seen)
        assert [i.name for i in desired.instances] == ["a"]
        assert any("FROM instances" in sql for sql, _ in statements)
        with state.engine.connect() as conn:
            for sql, params in statements:
                raw = conn.connection.driver_connection
                assert raw is not None
                plan = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params)]
                scans = [
                    p for p in plan if p.startswith("SCAN ") and ("instances" in p or "ports" in p)
                ]
                assert not scans, (sql, plan)
    finally:
        cloud.close()
