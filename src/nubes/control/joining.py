"""Machines joining the cloud: one-time join tokens, host credentials, removal.

A join token is `<secret>.<CA fingerprint>`: the secret is stored only as a hash, is good once
and expires; the fingerprint lets the new machine pin the cloud's CA before it sends anything.
A host credential is `nh_<secret>`, bound to one host row: the agent routes let it speak for
that host alone (deps.require_own_host). Removing a host deletes its credentials, so its very
next request is refused."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from nubes.control import generations
from nubes.control.caller import HOST_CREDENTIAL_PREFIX, hash_token
from nubes.db.models import Host, HostCredential, Instance, JoinToken, Network, Volume, utcnow
from nubes.errors import Conflict, Unauthorized

JOIN_PREFIX = "nj_"


def make_join_token(
    session: Session, expires_in: float, ca_fingerprint: str
) -> tuple[str, JoinToken]:
    secret = JOIN_PREFIX + secrets.token_urlsafe(24)
    row = JoinToken(
        token_sha256=hash_token(secret), expires_at=utcnow() + timedelta(seconds=expires_in)
    )
    session.add(row)
    session.commit()
    return f"{secret}.{ca_fingerprint}", row


def split_join_token(token: str) -> tuple[str, str]:
    """(secret, CA fingerprint); the fingerprint is "" when the token carries none."""
    secret, _, fingerprint = token.strip().partition(".")
    return secret, fingerprint.lower()


def new_credential(session: Session, host: Host) -> str:
    secret = HOST_CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    session.add(HostCredential(secret_sha256=hash_token(secret), host_id=host.id))
    return secret


def join(session: Session, token: str, name: str) -> tuple[Host, str]:
    """Trade a join token for a credential of host `name`. One transaction: a token is spent
    only by a join that succeeds, and by one join only (conditional UPDATE)."""
    secret, _ = split_join_token(token)
    host = session.scalar(select(Host).where(Host.name == name))
    if host is not None and session.scalar(
        select(HostCredential.id).where(HostCredential.host_id == host.id).limit(1)
    ):
        raise Conflict(
            f"host {name!r} has joined already; `nubes host remove {name}` first", field="name"
        )
    now = utcnow()
    spent = session.execute(
        update(JoinToken)
        .where(
            JoinToken.token_sha256 == hash_token(secret),
            JoinToken.used_at.is_(None),
            JoinToken.expires_at > now,
        )
        .values(used_at=now, used_by=name)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Unauthorized("join token unknown, expired or already used: make a new one")
    if host is None:
        host = Host(name=name, state_dir="")
        session.add(host)
        session.flush()
    host.joined_via = "join-token"
    credential = new_credential(session, host)
    session.commit()  # a new host: nobody's desired state names it yet
    return host, credential


def rotate(session: Session, host: Host) -> str:
    """A new credential; the old ones stop working when this commits."""
    session.execute(delete(HostCredential).where(HostCredential.host_id == host.id))
    credential = new_credential(session, host)
    session.commit()
    return credential


def remove(session: Session, host: Host, force: bool) -> None:
    """Revoke the host's credentials and forget it. Refused while it has servers, unless
    forced: then those servers go to ERROR, on no host, and can only be deleted."""
    if host.fenced_at is not None and not force:
        # its kept credential is how its agent, if it comes back, learns to destroy its stale
        # guests (agent/fencing.py); once forgotten, that agent would hear a plain 401
        raise Conflict(
            f"host {host.name!r} is fenced: keep it so that its agent, if the machine comes "
            "back, destroys its stale guests; use --force once the machine is wiped or gone",
            field="host",
        )
    generations.bump_after_commit(session, generations.neighbours(session, host.id))
    live = list(
        session.scalars(
            select(Instance).where(Instance.host_id == host.id, Instance.deleted_at.is_(None))
        )
    )
    if live and not force:
        raise Conflict(
            f"host {host.name!r} has {len(live)} server(s): delete or move them, or use --force",
            field="host",
        )
    for inst in live:
        inst.host_id, inst.status, inst.task_state = None, "ERROR", ""
        inst.fault = f"its host {host.name} was removed from the cloud"
    session.execute(
        update(Instance)
        .where(Instance.host_id == host.id)
        .values(host_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Network)
        .where(Network.dhcp_host_id == host.id)
        .values(dhcp_host_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(  # a volume's file was on that host: gone with it
        update(Volume)
        .where(Volume.host_id == host.id)
        .values(
            host_id=None,
            instance_id=None,
            status="error",
            fault=f"its host {host.name} was removed",
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(HostCredential).where(HostCredential.host_id == host.id))
    session.delete(host)
    session.commit()
