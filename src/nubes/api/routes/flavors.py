from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from nubes.api.deps import AdminDep, CallerDep, SessionDep
from nubes.api.paging import PageDep, paginate
from nubes.control import lookup
from nubes.db.models import Flavor, Instance
from nubes.errors import Conflict
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/flavors", tags=["flavors"])

DEFAULT_FLAVORS = (
    ("m1.tiny", 1, 256, 1),
    ("m1.small", 1, 1024, 4),
    ("m1.medium", 2, 2048, 10),
    ("m1.large", 4, 4096, 20),
)


def to_wire(f: Flavor) -> s.Flavor:
    return s.Flavor(id=f.id, name=f.name, vcpus=f.vcpus, ram_mb=f.ram_mb, disk_gb=f.disk_gb)


@router.get("")
def list_flavors(session: SessionDep, _: CallerDep, page: PageDep) -> list[s.Flavor]:
    """By RAM (flavors have no creation time), then id; a page (api/paging.py)."""
    return [to_wire(f) for f in paginate(session, select(Flavor), (Flavor.ram_mb, Flavor.id), page)]


@router.get("/{ref}")
def show_flavor(ref: str, session: SessionDep, _: CallerDep) -> s.Flavor:
    return to_wire(lookup.flavor(session, ref))


@router.post("", status_code=201)
def create_flavor(body: s.FlavorCreate, session: SessionDep, _: AdminDep) -> s.Flavor:
    if session.scalar(select(Flavor).where(Flavor.name == body.name)):
        raise Conflict(f"flavor {body.name!r} already exists", field="name")
    row = Flavor(name=body.name, vcpus=body.vcpus, ram_mb=body.ram_mb, disk_gb=body.disk_gb)
    session.add(row)
    session.commit()
    return to_wire(row)


@router.delete("/{ref}", status_code=204)
def delete_flavor(ref: str, session: SessionDep, _: AdminDep) -> None:
    row = lookup.flavor(session, ref)
    live = select(Instance.id).where(Instance.flavor_id == row.id, Instance.deleted_at.is_(None))
    if session.scalar(live):
        raise Conflict(f"flavor {row.name!r} is used by servers", field="flavor")
    session.delete(row)
    session.commit()
