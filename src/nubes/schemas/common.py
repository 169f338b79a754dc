"""Shared field types. Names are checked here so nothing unsafe ever reaches a host."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

# Resource names: letters, digits, dot, dash, underscore; no path or shell characters.
Name = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", max_length=63)
]
# Server names become the guest hostname, so they follow RFC 1123 labels.
Hostname = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", max_length=63),
]
