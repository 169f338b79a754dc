"""First start: schema, the admin project and token, default flavors, the client config."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.api.routes.flavors import DEFAULT_FLAVORS
from nubes.control.caller import hash_token
from nubes.control.desired import CLOUD_ID, GC_REQUEST
from nubes.db.models import Flavor, Meta, Project, Token


def seed_database(session: Session) -> str | None:
    """Idempotent. Returns the new admin token on first start, else None."""
    if session.get(Meta, CLOUD_ID) is None:
        # made once: agents act only on desired state that carries the id they first saw
        session.add(Meta(key=CLOUD_ID, value=secrets.randbits(62) + 1))
    if session.get(Meta, GC_REQUEST) is None:
        session.add(Meta(key=GC_REQUEST, value=0))
    if not session.scalar(select(Flavor.id).limit(1)):
        for name, vcpus, ram, disk in DEFAULT_FLAVORS:
            session.add(Flavor(name=name, vcpus=vcpus, ram_mb=ram, disk_gb=disk))
    token = None
    if session.scalar(select(Project).where(Project.name == "admin")) is None:
        project = Project(name="admin")
        session.add(project)
        session.flush()
        token = secrets.token_urlsafe(32)
        session.add(Token(token_sha256=hash_token(token), project_id=project.id, role="admin"))
    session.commit()
    return token


def write_client_config(path: Path, url: str, token: str) -> None:
    """0600: the token is a secret. The CLI reads this file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    os.replace(tmp, path)
