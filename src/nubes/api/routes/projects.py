"""Projects (tenants) and their member tokens. Admin only."""

from __future__ import annotations

import secrets

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nubes.api.deps import AdminDep, SessionDep, hash_token
from nubes.api.paging import PageDep, paginate
from nubes.db.models import Project, Token, new_id
from nubes.errors import Conflict
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/projects", tags=["projects"])


def to_wire(p: Project) -> s.Project:
    return s.Project(id=p.id, name=p.name, created_at=p.created_at)


@router.get("")
def list_projects(session: SessionDep, _: AdminDep, page: PageDep) -> list[s.Project]:
    rows = paginate(session, select(Project), (Project.created_at, Project.id), page)
    return [to_wire(p) for p in rows]


@router.post("", status_code=201)
def create_project(body: s.ProjectCreate, session: SessionDep, _: AdminDep) -> s.ProjectCreated:
    """The member token is in this answer only: nubes keeps its SHA-256, never the token."""
    if session.scalar(select(Project.id).where(Project.name == body.name)):
        raise Conflict(f"project {body.name!r} already exists", field="name")
    project = Project(id=new_id(), name=body.name)
    session.add(project)
    token = secrets.token_urlsafe(32)
    session.add(Token(token_sha256=hash_token(token), project_id=project.id, role="member"))
    try:
        session.commit()
    except IntegrityError:  # a racing create took the name
        session.rollback()
        raise Conflict(f"project {body.name!r} already exists", field="name") from None
    return s.ProjectCreated(**to_wire(project).model_dump(), token=token)
