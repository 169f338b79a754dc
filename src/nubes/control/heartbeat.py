"""A host's heartbeat: a thousand hosts send one every few seconds, so it is one statement.

The credential check rides in the UPDATE itself (`EXISTS` on the credential's hash, bound to
that host), so a good heartbeat costs one round trip and no ORM session. Anything else (another
host's credential, a revoked one, an admin, an unknown host) falls back to the ordinary checks,
which then give the precise 401/403/404.

The statements are built once, with bound parameters: building one per call was a fifth of a
heartbeat's cost in the API process (bench/control_plane.py)."""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, exists, update

from nubes.control.caller import HOST_CREDENTIAL_PREFIX, hash_token
from nubes.db.models import Host, HostCredential, utcnow
from nubes.errors import NotFound

_BEAT = update(Host).where(Host.id == bindparam("host_id")).values(last_heartbeat=bindparam("now"))
_OWN_BEAT = _BEAT.where(
    exists().where(
        HostCredential.host_id == Host.id,
        HostCredential.secret_sha256 == bindparam("secret_sha256"),
    )
)


def beat_as_own_host(engine: Engine, host_id: str, token: str) -> bool:
    """True: `token` is `host_id`'s own credential and its heartbeat is written."""
    if not token.startswith(HOST_CREDENTIAL_PREFIX):
        return False
    params = {"host_id": host_id, "now": utcnow(), "secret_sha256": hash_token(token)}
    with engine.begin() as conn:
        return conn.execute(_OWN_BEAT, params).rowcount == 1


def beat(engine: Engine, host_id: str) -> None:
    """The heartbeat of a caller already checked (an admin's, for a host it registered)."""
    with engine.begin() as conn:
        done = conn.execute(_BEAT, {"host_id": host_id, "now": utcnow()})
    if done.rowcount != 1:
        raise NotFound(f"host {host_id} is not registered", field="host")
