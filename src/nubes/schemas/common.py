"""Shared field types. Names are checked here so nothing unsafe ever reaches a host."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError


def first_problem(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(field, "field: what is wrong") for the first of pydantic's errors, as the API answers
    a 422 and the CLI prints a request it checked itself. A FastAPI location's "body"/"query"/
    "path" part is not a field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    parts = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(parts) or "body"
    return field, f"{field}: {first.get('msg', 'invalid value')}"


def _says(rule: str) -> WrapValidator:
    """A name that breaks its pattern or length is told the rule in words, not the regex
    (the OpenAPI schema keeps the pattern)."""

    def check(value: Any, inner: ValidatorFunctionWrapHandler) -> Any:
        try:
            return inner(value)
        except ValidationError as exc:
            kinds = {e["type"] for e in exc.errors()}
            if kinds & {"string_pattern_mismatch", "string_too_long", "string_too_short"}:
                raise PydanticCustomError("invalid_name", rule) from None
            raise

    return WrapValidator(check)


# Resource names: letters, digits, dot, dash, underscore; no path or shell characters.
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", max_length=63),
    _says("1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"),
]
# Server names become the guest hostname, so they follow RFC 1123 labels.
Hostname = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", max_length=63),
    _says("a hostname: 1 to 63 letters, digits or '-', not starting or ending with '-'"),
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
