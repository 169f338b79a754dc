from __future__ import annotations

import base64
import binascii
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import select

from nubes.api.deps import CallerDep, SessionDep
from nubes.api.paging import PageDep, paginate
from nubes.control import lookup
from nubes.db.models import Keypair
from nubes.errors import Conflict, InvalidInput
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/keypairs", tags=["keypairs"])

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
)
KEY_RE = re.compile(r"^(\S+) ([A-Za-z0-9+/=]+)( [^\r\n]*)?$")


def fingerprint(public_key: str) -> str:
    """Validate an OpenSSH public key line; return its SHA256 fingerprint as ssh-keygen does."""
    match = KEY_RE.match(public_key.strip())
    if not match or match.group(1) not in KEY_TYPES:
        raise InvalidInput("public_key: not an OpenSSH public key line", field="public_key")
    try:
        blob = base64.b64decode(match.group(2), validate=True)
    except binascii.Error as exc:
        raise InvalidInput("public_key: bad base64 in key", field="public_key") from exc
    kind = match.group(1).encode()
    if blob[4 : 4 + len(kind)] != kind:
        raise InvalidInput("public_key: key body does not match its type", field="public_key")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return "SHA256:" + digest


def generate() -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nubes", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        return path.read_text(), path.with_suffix(".pub").read_text().strip()


def to_wire(k: Keypair, private_key: str | None = None) -> s.Keypair:
    return s.Keypair(
        id=k.id,
        name=k.name,
        fingerprint=k.fingerprint,
        public_key=k.public_key,
        private_key=private_key,
        created_at=k.created_at,
    )


@router.get("")
def list_keypairs(session: SessionDep, who: CallerDep, page: PageDep) -> list[s.Keypair]:
    query = select(Keypair).where(Keypair.project_id == who.project_id)
    rows = paginate(session, query, (Keypair.created_at, Keypair.id), page)
    return [to_wire(k) for k in rows]


@router.get("/{ref}")
def show_keypair(ref: str, session: SessionDep, who: CallerDep) -> s.Keypair:
    return to_wire(lookup.owned(session, Keypair, ref, who, "keypair"))


@router.post("", status_code=201)
def create_keypair(body: s.KeypairCreate, session: SessionDep, who: CallerDep) -> s.Keypair:
    taken = select(Keypair).where(Keypair.project_id == who.project_id, Keypair.name == body.name)
    if session.scalar(taken):
        raise Conflict(f"keypair {body.name!r} already exists", field="name")
    private = None
    public = body.public_key
    if public is None:
        private, public = generate()
    row = Keypair(
        project_id=who.project_id,
        name=body.name,
        public_key=public.strip(),
        fingerprint=fingerprint(public),
    )
    session.add(row)
    session.commit()
    return to_wire(row, private)


@router.delete("/{ref}", status_code=204)
def delete_keypair(ref: str, session: SessionDep, who: CallerDep) -> None:
    session.delete(lookup.owned(session, Keypair, ref, who, "keypair"))
    session.commit()
