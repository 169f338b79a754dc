"""Who is calling: a user of a project (admin or member) or a joined host."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# a host's credential starts with this, so one lookup finds it (and logs can tell it apart)
HOST_CREDENTIAL_PREFIX = "nh_"


@dataclass(frozen=True)
class Caller:
    project_id: str
    role: str  # admin | member | host
    host_id: str = ""  # the one host a host credential speaks for

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
