"""Quotas per project: a member reads its own project's, an admin reads and sets any."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nubes.api.deps import AdminDep, Caller, CallerDep, SessionDep, StateDep
from nubes.control import quotas
from nubes.control.state import AppState
from nubes.db.models import Project
from nubes.errors import NotFound
from nubes.schemas.quotas import QuotaItem, QuotaSet, QuotaUpdate

router = APIRouter(prefix="/v1/quotas", tags=["quotas"])


def _project(session: Session, ref: str, who: Caller) -> Project:
    row = session.scalar(select(Project).where(or_(Project.id == ref, Project.name == ref)))
    if row is None or (not who.is_admin and row.id != who.project_id):
        raise NotFound(f"project {ref!r} not found", field="project")
    return row


def _wire(session: Session, state: AppState, project: Project) -> QuotaSet:
    limits = quotas.limits(session, state.settings, project.id)
    used = quotas.usage(session, project.id)
    return QuotaSet(
        project=project.name,
        project_id=project.id,
        quotas=[
            QuotaItem(resource=r, limit=limits[r][0], used=used[r], default=limits[r][1])
            for r in quotas.RESOURCES
        ],
    )


@router.get("")
def my_quotas(session: SessionDep, who: CallerDep, state: StateDep) -> QuotaSet:
    """The caller's own project's limits and usage."""
    return _wire(session, state, _project(session, who.project_id, who))


@router.get("/{project}")
def show_quotas(project: str, session: SessionDep, who: CallerDep, state: StateDep) -> QuotaSet:
    return _wire(session, state, _project(session, project, who))


@router.put("/{project}")
def set_quotas(
    project: str, body: QuotaUpdate, session: SessionDep, who: AdminDep, state: StateDep
) -> QuotaSet:
    """Admin: set some limits (-1 unlimited; null back to the default). Usage above a new
    limit stays; only new creates are refused."""
    row = _project(session, project, who)
    quotas.set_limits(session, row.id, {f: getattr(body, f) for f in body.model_fields_set})
    answer = _wire(session, state, row)
    session.commit()
    return answer
