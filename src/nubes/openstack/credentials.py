"""`POST /v1/openstack/credentials`: an application credential for the OpenStack clients, and
what a clouds.yaml needs beside it (`nubes openstack clouds-yaml`)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from nubes.api.deps import CallerDep, SessionDep, StateDep
from nubes.db.models import Project
from nubes.errors import Forbidden, NotFound
from nubes.openstack import tokens
from nubes.schemas.openstack import Credential, CredentialCreate

router = APIRouter(prefix="/v1/openstack", tags=["openstack"])


@router.post("/credentials", status_code=201)
def create_credential(
    body: CredentialCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> Credential:
    role = who.role
    project = session.get(Project, who.project_id)
    if body.project:
        if not who.is_admin and body.project not in (
            project.name if project else "",
            who.project_id,
        ):
            raise Forbidden("project: only an admin makes credentials for another project")
        project = session.scalar(
            select(Project).where((Project.name == body.project) | (Project.id == body.project))
        )
        if project is None:
            raise NotFound(f"project {body.project!r} not found", field="project")
        if project.id != who.project_id:
            role = "member"
    if project is None:
        raise NotFound("the caller's project is gone", field="project")
    ident, secret = tokens.make_app_credential(session, project, role, body.name)
    return Credential(
        id=ident,
        secret=secret,
        project=project.name,
        project_id=project.id,
        auth_url=f"{state.settings.public_url}/identity/v3",
        ca_file=str(state.settings.tls_dir / "ca.pem"),
    )
