"""A host's heartbeat: a thousand hosts send one every 10 s, so they are written many at once.

`beat_own_hosts` checks a batch of heartbeats' credentials and writes them in one transaction,
no ORM session (api/heartbeat_path.py gathers them). Anything else (another host's credential, a
revoked one, an admin, an unknown host) falls back to the ordinary checks, which then give the
precise 401/403/404, and `beat`."""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, select, update

from nubes.control.caller import HOST_CREDENTIAL_PREFIX, hash_token
from nubes.db.engine import no_flush_wait
from nubes.db.models import Host, HostCredential, utcnow
from nubes.errors import NotFound

_BEAT = update(Host).where(Host.id == bindparam("host_id")).values(last_heartbeat=bindparam("now"))


def beat(engine: Engine, host_id: str) -> None:
    """The heartbeat of a caller already checked (an admin's, for a host it registered)."""
    with engine.begin() as conn:
        no_flush_wait(conn)  # a heartbeat lost in a crash is sent again a period later
        done = conn.execute(_BEAT, {"host_id": host_id, "now": utcnow()})
    if done.rowcount != 1:
        raise NotFound(f"host {host_id} is not registered", field="host")


def beat_own_hosts(engine: Engine, beats: dict[str, str]) -> set[str]:
    """Many hosts' heartbeats in one transaction (api/heartbeat_path.py gathers them):
    `beats` maps a host id to the SHA-256 of the credential it came with. Writes the heartbeat
    of, and returns, the hosts whose credential that is; the others are left to the route."""
    with engine.begin() as conn:
        no_flush_wait(conn)  # see `beat`: the hosts' rows are let go without a disk flush
        owned = conn.execute(
            select(HostCredential.host_id, HostCredential.secret_sha256)
            .join(Host, Host.id == HostCredential.host_id)
            .where(HostCredential.host_id.in_(list(beats)), Host.fenced_at.is_(None))
        )
        good = {host for host, sha in owned if beats.get(host) == sha}
        if good:
            conn.execute(update(Host).where(Host.id.in_(good)).values(last_heartbeat=utcnow()))
    return good


def credential_sha256(token: str) -> str | None:
    """The hash `beat_own_hosts` compares, or None for a token that is no host's credential."""
    return hash_token(token) if token.startswith(HOST_CREDENTIAL_PREFIX) else None
