"""Shared field types. Names are checked here so nothing unsafe ever reaches a host."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints, field_validator

# Resource names: letters, digits, dot, dash, underscore; no path or shell characters.
Name = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", max_length=63)
]
# Server names become the guest hostname, so they follow RFC 1123 labels.
Hostname = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", max_length=63),
]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class NoNul(BaseModel):
    """Refuses NUL characters in every string field: PostgreSQL cannot store them (and its
    driver refuses them even in a query), and no name, key or script needs one."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("NUL characters are not allowed")
        return value
