"""Find resources by id or name within the caller's project: others' answer 404."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nubes.control.caller import Caller
from nubes.db.models import (
    Flavor,
    Host,
    Image,
    Instance,
    Keypair,
    Network,
    Project,
    SecurityGroup,
    ServerGroup,
    Volume,
)
from nubes.errors import NotFound

T = TypeVar("T", Image, Keypair, Network, Instance, ServerGroup, SecurityGroup, Volume)

KIND = {
    Image: "image",
    Keypair: "keypair",
    Network: "network",
    Instance: "server",
    ServerGroup: "group",
    SecurityGroup: "security group",
    Volume: "volume",
}


def admin_project_id(session: Session) -> str | None:
    return session.scalar(select(Project.id).where(Project.name == "admin"))


def owned(session: Session, model: type[T], ref: str, who: Caller, field: str) -> T:
    """By id or name. Images of the admin project are public to every project."""
    projects: list[Any] = [who.project_id]
    if model is Image:
        projects.append(admin_project_id(session))
    query = select(model).where(
        or_(model.id == ref, model.name == ref), model.project_id.in_(projects)
    )
    if model is Instance:
        query = query.where(Instance.deleted_at.is_(None))
    rows = session.scalars(query).all()
    rows = sorted(rows, key=lambda r: (r.id != ref, r.project_id != who.project_id))
    if not rows:
        raise NotFound(f"{KIND[model]} {ref!r} not found", field=field)
    return rows[0]


def flavor(session: Session, ref: str) -> Flavor:
    row = session.scalar(select(Flavor).where(or_(Flavor.id == ref, Flavor.name == ref)))
    if row is None:
        raise NotFound(f"flavor {ref!r} not found", field="flavor")
    return row


def host(session: Session, ref: str) -> Host:
    row = session.scalar(select(Host).where(or_(Host.id == ref, Host.name == ref)))
    if row is None:
        raise NotFound(f"host {ref!r} not found", field="host")
    return row
