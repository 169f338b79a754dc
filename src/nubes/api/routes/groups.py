"""Server groups: affinity policies the scheduler applies to the servers that name them."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nubes.api.deps import CallerDep, SessionDep
from nubes.api.paging import PageDep, paginate
from nubes.control import lookup
from nubes.db.models import Host, Instance, ServerGroup
from nubes.errors import Conflict
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/groups", tags=["groups"])


def to_wire(session: SessionDep, g: ServerGroup) -> s.Group:
    rows = session.execute(
        select(Instance.name, Host.name)
        .outerjoin(Host, Host.id == Instance.host_id)
        .where(Instance.group_id == g.id, Instance.deleted_at.is_(None))
        .order_by(Instance.name)
    ).all()
    return s.Group(
        id=g.id,
        name=g.name,
        policy=g.policy,
        members=[name for name, _ in rows],
        hosts=sorted({host for _, host in rows if host}),
        created_at=g.created_at,
    )


@router.get("")
def list_groups(session: SessionDep, who: CallerDep, page: PageDep) -> list[s.Group]:
    query = select(ServerGroup).where(ServerGroup.project_id == who.project_id)
    rows = paginate(session, query, (ServerGroup.created_at, ServerGroup.id), page)
    return [to_wire(session, g) for g in rows]


@router.get("/{ref}")
def show_group(ref: str, session: SessionDep, who: CallerDep) -> s.Group:
    return to_wire(session, lookup.owned(session, ServerGroup, ref, who, "group"))


@router.post("", status_code=201)
def create_group(body: s.GroupCreate, session: SessionDep, who: CallerDep) -> s.Group:
    taken = select(ServerGroup.id).where(
        ServerGroup.project_id == who.project_id, ServerGroup.name == body.name
    )
    if session.scalar(taken):
        raise Conflict(f"group {body.name!r} already exists", field="name")
    row = ServerGroup(project_id=who.project_id, name=body.name, policy=body.policy)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # a racing create took the name
        session.rollback()
        raise Conflict(f"group {body.name!r} already exists", field="name") from None
    return to_wire(session, row)


@router.delete("/{ref}", status_code=204)
def delete_group(ref: str, session: SessionDep, who: CallerDep) -> None:
    """Refused while servers are in it: their placement was chosen under its policy."""
    row = lookup.owned(session, ServerGroup, ref, who, "group")
    members = session.scalars(
        select(Instance.name).where(Instance.group_id == row.id, Instance.deleted_at.is_(None))
    ).all()
    if members:
        raise Conflict(
            f"group {row.name!r} has servers: {', '.join(sorted(members))}; delete them first"
        )
    # deleted instances keep no reference to a group that is gone
    for inst in session.scalars(select(Instance).where(Instance.group_id == row.id)):
        inst.group_id = None
    session.delete(row)
    session.commit()
