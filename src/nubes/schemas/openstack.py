"""Wire models of the OpenStack layer's one /v1 route (nubes openstack clouds-yaml)."""

from __future__ import annotations

from pydantic import Field

from nubes.schemas.resources import Model


class CredentialCreate(Model):
    project: str | None = Field(
        default=None, max_length=64, description="admin: another project (a member credential)"
    )
    name: str = Field(default="clouds-yaml", max_length=64)


class Credential(Model):
    """An application credential for the OpenStack clients, and what a clouds.yaml needs."""

    id: str
    secret: str = Field(description="shown only in this answer; nubes keeps its hash")
    project: str
    project_id: str
    auth_url: str
    region: str = "RegionOne"
    ca_file: str = Field(description="the cloud's CA on the API machine")
