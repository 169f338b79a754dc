"""Keystone's credentials mapped onto nubes' projects.

- a *user* is a project: user name = project name (user id = project id), in domain Default;
- its *password* is any nubes token of that project (`nubes project create` prints one; the
  admin's token is the admin project's password), with that token's role;
- an *application credential* (`nubes openstack clouds-yaml` makes one) is an id and a secret
  for one project and role;
- a *Keystone token* (`ks_…`) is issued for one of those, expires after
  `NUBES_OPENSTACK_TOKEN_TTL` seconds, and is what the other OpenStack routes accept in
  `X-Auth-Token`. Only hashes of secrets are stored.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from nubes.control.caller import Caller, hash_token
from nubes.control.state import AppState
from nubes.db.models import OsAppCredential, OsToken, Project, Token, utcnow
from nubes.errors import Unauthorized

PREFIX = "ks_"
STALE = timedelta(days=1)  # expired tokens are removed this long after they expire


@dataclass(frozen=True)
class Issued:
    token: str
    project: Project
    role: str
    methods: list[str]
    issued_at: datetime
    expires_at: datetime
    app_credential: OsAppCredential | None = None


def verify(state: AppState, token: str) -> Caller:
    """The caller a Keystone token speaks for; 401 if unknown or expired."""
    with state.reads() as session:
        row = session.scalar(select(OsToken).where(OsToken.token_sha256 == hash_token(token)))
        if row is None or row.expires_at <= utcnow():
            raise Unauthorized("the token is unknown or has expired")
        return Caller(project_id=row.project_id, role=row.role)


def project_by(session: Session, name: str | None, ident: str | None) -> Project:
    ref = ident or name or ""
    row = session.scalar(select(Project).where(or_(Project.id == ref, Project.name == ref)))
    if row is None:
        raise Unauthorized("the request you have made requires authentication")
    return row


def by_password(
    session: Session, ttl: float, user: str | None, user_id: str | None, password: str
) -> Issued:
    project = project_by(session, user, user_id)
    row = session.scalar(
        select(Token).where(
            Token.token_sha256 == hash_token(password), Token.project_id == project.id
        )
    )
    if row is None or row.role not in ("admin", "member"):
        raise Unauthorized("the request you have made requires authentication")
    return issue(session, ttl, project, row.role, ["password"])


def by_token(session: Session, ttl: float, token: str) -> Issued:
    row = session.scalar(select(OsToken).where(OsToken.token_sha256 == hash_token(token)))
    if row is None or row.expires_at <= utcnow():
        raise Unauthorized("the token is unknown or has expired")
    project = session.get(Project, row.project_id)
    if project is None:
        raise Unauthorized("the token's project is gone")
    return issue(session, ttl, project, row.role, ["token"], expires_at=row.expires_at)


def by_app_credential(session: Session, ttl: float, ident: str, secret: str) -> Issued:
    row = session.get(OsAppCredential, ident)
    if row is None or not secrets.compare_digest(row.secret_sha256, hash_token(secret)):
        raise Unauthorized("the application credential is unknown or its secret is wrong")
    project = session.get(Project, row.project_id)
    if project is None:
        raise Unauthorized("the credential's project is gone")
    return issue(session, ttl, project, row.role, ["application_credential"], app_credential=row)


def by_app_credential_name(
    session: Session, ttl: float, project: str, name: str, secret: str
) -> Issued:
    """A credential named by its name and its user (a project's name or id)."""
    owner = project_by(session, project, None)
    row = session.scalar(
        select(OsAppCredential).where(
            OsAppCredential.project_id == owner.id,
            OsAppCredential.name == name,
            OsAppCredential.secret_sha256 == hash_token(secret),
        )
    )
    if row is None:
        raise Unauthorized("the application credential is unknown or its secret is wrong")
    return by_app_credential(session, ttl, row.id, secret)


def issue(
    session: Session,
    ttl: float,
    project: Project,
    role: str,
    methods: list[str],
    expires_at: datetime | None = None,
    app_credential: OsAppCredential | None = None,
) -> Issued:
    now = utcnow()
    expires = expires_at or now + timedelta(seconds=ttl)
    token = PREFIX + secrets.token_urlsafe(32)
    session.execute(delete(OsToken).where(OsToken.expires_at < now - STALE))
    session.add(
        OsToken(
            token_sha256=hash_token(token),
            project_id=project.id,
            role=role,
            methods=",".join(methods),
            expires_at=expires,
        )
    )
    session.commit()
    return Issued(token, project, role, methods, now, expires, app_credential)


def revoke(session: Session, token: str) -> None:
    session.execute(delete(OsToken).where(OsToken.token_sha256 == hash_token(token)))
    session.commit()


def make_app_credential(
    session: Session, project: Project, role: str, name: str
) -> tuple[str, str]:
    """(id, secret) of a new application credential; the secret is shown only now."""
    secret = secrets.token_urlsafe(32)
    row = OsAppCredential(
        name=name, secret_sha256=hash_token(secret), project_id=project.id, role=role
    )
    session.add(row)
    session.commit()
    return row.id, secret


def describe(session: Session, token: str) -> Issued | None:
    """A live token as it was issued (GET /v3/auth/tokens), or None."""
    row = session.scalar(select(OsToken).where(OsToken.token_sha256 == hash_token(token)))
    if row is None or row.expires_at <= utcnow():
        return None
    project = session.get(Project, row.project_id)
    if project is None:
        return None
    methods = row.methods.split(",") if row.methods else []
    return Issued(token, project, row.role, methods, row.created_at, row.expires_at)
