"""Volumes (`nubes volume ...`): thin, the logic is in control/volumes.py."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from nubes.api.deps import CallerDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.control import lookup, volumes
from nubes.db.models import Volume
from nubes.schemas import volumes as v

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])


@router.get("")
def list_volumes(session: SessionDep, who: CallerDep, page: PageDep) -> list[v.Volume]:
    query = select(Volume).where(Volume.project_id == who.project_id)
    rows = paginate(session, query, (Volume.created_at, Volume.id), page)
    return [volumes.to_wire(session, vol) for vol in rows]


@router.post("", status_code=202)
def create_volume(
    body: v.VolumeCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> v.Volume:
    """Made on its host by the host's agent: `creating`, then `available`."""
    return volumes.create(session, state.settings, body, who)


@router.get("/{ref}")
def show_volume(ref: str, session: SessionDep, who: CallerDep) -> v.Volume:
    return volumes.to_wire(session, lookup.owned(session, Volume, ref, who, "volume"))


@router.delete("/{ref}", status_code=202)
def delete_volume(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> v.Volume:
    """Only a detached volume; its file goes with its host's next pass."""
    vol = lookup.owned(session, Volume, ref, who, "volume")
    return volumes.delete(session, state.settings, vol)
