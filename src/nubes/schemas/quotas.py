"""Quotas on the wire: GET/PUT /v1/quotas/{project}."""

from __future__ import annotations

from pydantic import BaseModel, Field

from nubes.schemas.resources import Model

Limit = Field(default=None, ge=-1, le=2**40, description="-1: unlimited; null: the default")


class QuotaItem(BaseModel):
    resource: str
    limit: int  # -1: unlimited
    used: int
    default: bool  # the setting's default, not a limit of the project's own


class QuotaSet(BaseModel):
    project: str
    project_id: str
    quotas: list[QuotaItem]


class QuotaUpdate(Model):
    """Only the fields sent change; one sent as null goes back to the default."""

    servers: int | None = Limit
    vcpus: int | None = Limit
    ram_mb: int | None = Limit
    images: int | None = Limit
    volumes: int | None = Limit
    networks: int | None = Limit
    security_groups: int | None = Limit
    security_group_rules: int | None = Limit
    floating_ips: int | None = Limit
