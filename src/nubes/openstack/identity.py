"""Keystone v3, the part clients use: version documents (no auth), tokens with the password,
token and application_credential methods, and the catalog (tokens.py has the mapping)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.api.deps import SessionDep, StateDep
from nubes.control.state import AppState
from nubes.db.models import Project
from nubes.errors import BadRequest, Unauthorized
from nubes.openstack import tokens
from nubes.openstack.http import derived_id, make_router, section, text
from nubes.openstack.tokens import Issued

router = make_router("identity", "/identity")
DOMAIN = {"id": "default", "name": "Default"}
REGION = "RegionOne"
SERVICES = (  # type, name, path under the public base URL
    ("identity", "keystone", "/identity/v3"),
    ("compute", "nova", "/compute/v2.1"),
    ("image", "glance", "/image"),
    ("network", "neutron", "/network"),
)
UPDATED = "2024-04-01T00:00:00Z"


def version_doc(state: AppState) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{state.settings.public_url}/identity/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


@router.get("")
def versions(state: StateDep) -> dict[str, Any]:
    return {"versions": {"values": [version_doc(state)]}}


@router.get("/v3")
def version(state: StateDep) -> dict[str, Any]:
    return {"version": version_doc(state)}


def catalog(state: AppState) -> list[dict[str, Any]]:
    base = state.settings.public_url
    entries = []
    for kind, name, path in SERVICES:
        endpoint = {
            "id": derived_id("endpoint", kind),
            "interface": "public",
            "region": REGION,
            "region_id": REGION,
            "url": base + path,
        }
        entries.append(
            {"type": kind, "name": name, "id": derived_id("service", kind), "endpoints": [endpoint]}
        )
    return entries


def roles(role: str) -> list[dict[str, str]]:
    names = ["admin", "member", "reader"] if role == "admin" else ["member", "reader"]
    return [{"id": derived_id("role", n), "name": n} for n in names]


def token_body(state: AppState, issued: Issued) -> dict[str, Any]:
    p = issued.project
    token: dict[str, Any] = {
        "methods": issued.methods,
        "expires_at": issued.expires_at.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "issued_at": issued.issued_at.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "audit_ids": [derived_id("audit", issued.token)[:22]],
        "user": {"id": p.id, "name": p.name, "domain": DOMAIN, "password_expires_at": None},
        "project": {"id": p.id, "name": p.name, "domain": DOMAIN},
        "is_domain": False,
        "roles": roles(issued.role),
        "catalog": catalog(state),
    }
    if issued.app_credential is not None:
        cred = issued.app_credential
        token["application_credential"] = {"id": cred.id, "name": cred.name, "restricted": True}
    return {"token": token}


def _password(session: Session, ttl: float, identity: dict[str, Any]) -> Issued:
    user = section(section(identity, "password"), "user")
    password = text(user, "password", required=True, where="password.user")
    name, ident = text(user, "name"), text(user, "id")
    if not name and not ident:
        raise BadRequest("password.user: needs a name or an id", field="password.user")
    return tokens.by_password(session, ttl, name, ident, password or "")


def _app_credential(session: Session, ttl: float, identity: dict[str, Any]) -> Issued:
    cred = section(identity, "application_credential")
    secret = text(cred, "secret", required=True, where="application_credential") or ""
    ident = text(cred, "id")
    if ident:
        return tokens.by_app_credential(session, ttl, ident, secret)
    # by name: then its user (a project) names it too
    name = text(cred, "name")
    found = cred.get("user")
    user: dict[str, Any] = found if isinstance(found, dict) else {}
    owner = text(user, "id", where="application_credential.user") or text(
        user, "name", where="application_credential.user"
    )
    if not name or not owner:
        raise BadRequest(
            "application_credential.id: required, or its name and user "
            "(nubes openstack clouds-yaml prints the id)",
            field="application_credential.id",
        )
    return tokens.by_app_credential_name(session, ttl, owner, name, secret)


def authenticate(session: Session, ttl: float, body: Any) -> Issued:
    identity = section(section(body, "auth"), "identity")
    methods = identity.get("methods")
    if not isinstance(methods, list) or not methods:
        raise BadRequest("auth.identity.methods: a list of methods is required", field="methods")
    method = methods[0]
    if method == "password":
        return _password(session, ttl, identity)
    if method == "token":
        ident = text(section(identity, "token"), "id", required=True, where="token")
        return tokens.by_token(session, ttl, ident or "")
    if method == "application_credential":
        return _app_credential(session, ttl, identity)
    raise Unauthorized(f"the auth method {method!r} is not supported")


def _check_scope(issued: Issued, body: Any) -> None:
    """A scope naming another project than the credential's is refused (a user is a project)."""
    scope = body["auth"].get("scope")
    if not isinstance(scope, dict) or not isinstance(scope.get("project"), dict):
        return  # unscoped or domain-scoped: the credential's own project
    wanted = scope["project"]
    p = issued.project
    if wanted.get("id") not in (None, p.id) or wanted.get("name") not in (None, p.name):
        raise Unauthorized(f"this credential may only be scoped to project {p.name!r}")


@router.post("/v3/auth/tokens", status_code=201)
def issue_token(body: Annotated[Any, Body()], session: SessionDep, state: StateDep) -> JSONResponse:
    issued = authenticate(session, state.settings.openstack_token_ttl, body)
    _check_scope(issued, body)
    return JSONResponse(
        token_body(state, issued), status_code=201, headers={"X-Subject-Token": issued.token}
    )


def _subject(request: Request, session: Session, state: AppState) -> Issued:
    """The token named by X-Subject-Token, checked by the one in X-Auth-Token."""
    tokens.verify(state, request.headers.get("x-auth-token", ""))
    subject = request.headers.get("x-subject-token", "")
    issued = tokens.describe(session, subject)
    if issued is None:
        raise Unauthorized("the subject token is unknown or has expired")
    return issued


@router.get("/v3/auth/tokens")
def validate_token(request: Request, session: SessionDep, state: StateDep) -> JSONResponse:
    issued = _subject(request, session, state)
    return JSONResponse(token_body(state, issued), headers={"X-Subject-Token": issued.token})


@router.delete("/v3/auth/tokens", status_code=204)
def revoke_token(request: Request, session: SessionDep, state: StateDep) -> Response:
    issued = _subject(request, session, state)
    tokens.revoke(session, issued.token)
    return Response(status_code=204)


@router.get("/v3/auth/catalog")
def show_catalog(request: Request, state: StateDep) -> dict[str, Any]:
    tokens.verify(state, request.headers.get("x-auth-token", ""))
    return {"catalog": catalog(state), "links": {"self": None}}


def _project_doc(state: AppState, p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "domain_id": DOMAIN["id"],
        "description": "",
        "enabled": True,
        "is_domain": False,
        "parent_id": DOMAIN["id"],
        "tags": [],
        "links": {"self": f"{state.settings.public_url}/identity/v3/projects/{p.id}"},
    }


@router.get("/v3/auth/projects")
def my_projects(request: Request, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """The projects a token may be scoped to: its own (a user is a project)."""
    who = tokens.verify(state, request.headers.get("x-auth-token", ""))
    project = session.get(Project, who.project_id)
    return {"projects": [_project_doc(state, project)] if project else [], "links": {}}


@router.get("/v3/projects")
def list_projects(request: Request, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """An admin's token sees every project, a member's its own."""
    who = tokens.verify(state, request.headers.get("x-auth-token", ""))
    query = select(Project).order_by(Project.name)
    if not who.is_admin:
        query = query.where(Project.id == who.project_id)
    rows = session.scalars(query)
    return {"projects": [_project_doc(state, p) for p in rows], "links": {}}
