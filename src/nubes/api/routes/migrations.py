"""Moving servers between hosts (admin only): `nubes server migrate`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from nubes.api.deps import AdminDep, AgentDep, SessionDep, StateDep, require_own_host
from nubes.api.paging import PageDep, paginate
from nubes.control import consoles, migrations
from nubes.db.models import Host, Migration
from nubes.errors import NotFound
from nubes.schemas import resources as s
from nubes.schemas.console import ChannelRequest

router = APIRouter(tags=["migrations"])


@router.post("/v1/servers/{ref}/migrate", status_code=202)
def migrate_server(
    ref: str, body: s.MigrateRequest, session: SessionDep, who: AdminDep, state: StateDep
) -> s.Migration:
    """Move the server to another host (`host`, or the scheduler's choice): `live` keeps it
    running (its disk mirrored over NBD, then its memory); otherwise it is stopped, its disk
    copied and it starts on the target. Follow it with `GET /v1/migrations/{id}`."""
    inst = migrations.find_server(session, ref)
    answer = migrations.start(state, session, inst, body)
    session.commit()  # wakes both hosts' long-polls
    return answer


@router.get("/v1/migrations")
def list_migrations(session: SessionDep, who: AdminDep, page: PageDep) -> list[s.Migration]:
    rows = paginate(session, select(Migration), (Migration.created_at, Migration.id), page)
    return [migrations.wire(session, m) for m in rows]


@router.get("/v1/migrations/{migration_id}")
def show_migration(migration_id: str, session: SessionDep, who: AdminDep) -> s.Migration:
    mig = session.get(Migration, migration_id)
    if mig is None:
        raise NotFound(f"migration {migration_id!r} not found", field="migration")
    return migrations.wire(session, mig)


@router.get("/v1/agent/hosts/{host_id}/migrations/{migration_id}/console-log")
def incoming_console_log(
    host_id: str, migration_id: str, session: SessionDep, who: AgentDep, state: StateDep
) -> Response:
    """A migration's target, as it prepares, takes the console log so far from the source
    (through the API's console channel: hosts never talk to each other but for the
    migration itself), so the log goes on where it was."""
    require_own_host(who, host_id)
    mig = session.get(Migration, migration_id)
    if mig is None or mig.target_host_id != host_id or mig.phase not in migrations.ACTIVE:
        raise NotFound(f"no migration {migration_id!r} to this host", field="migration")
    source = session.get(Host, mig.source_host_id)
    assert source is not None
    ep, request = consoles.endpoint(source), ChannelRequest(op="log", instance=mig.instance_id)
    session.commit()  # no transaction held across the call to the host
    return Response(consoles.call(state.settings, ep, request), media_type="text/plain")
