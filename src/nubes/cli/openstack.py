"""nubes openstack ...: what the OpenStack clients need to use this cloud."""

from __future__ import annotations

import os
from typing import Any

import typer
import yaml

from nubes.cli.common import client, handle_errors
from nubes.schemas import openstack as so

openstack_app = typer.Typer(
    help="The OpenStack-compatible API (openstack CLI, openstacksdk, Ansible).",
    no_args_is_help=True,
)


def clouds(cred: so.Credential, ca_file: str, name: str = "nubes") -> dict[str, Any]:
    """A clouds.yaml document with one cloud, authenticating by application credential."""
    cloud: dict[str, Any] = {
        "auth_type": "v3applicationcredential",
        "auth": {
            "auth_url": cred.auth_url,
            "application_credential_id": cred.id,
            "application_credential_secret": cred.secret,
        },
        "region_name": cred.region,
        "identity_api_version": 3,
        "interface": "public",
    }
    if cred.auth_url.startswith("https://"):
        cloud["cacert"] = ca_file
    return {"clouds": {name: cloud}}


@openstack_app.command("clouds-yaml")
@handle_errors
def clouds_yaml(
    project: str = typer.Option(
        None, help="admin: a credential for this project (default: the caller's own)"
    ),
) -> None:
    """Print a clouds.yaml (a cloud named `nubes`) with a new application credential:

    nubes openstack clouds-yaml > ~/.config/openstack/clouds.yaml
    openstack --os-cloud nubes server list
    """
    cred = client().create_openstack_credential(so.CredentialCreate(project=project))
    # a CLI on another machine has the CA where NUBES_CA_FILE says; else the API machine's
    ca_file = os.environ.get("NUBES_CA_FILE") or cred.ca_file
    typer.echo(f"# project {cred.project}: the secret is shown only now", nl=True)
    typer.echo(yaml.safe_dump(clouds(cred, ca_file), sort_keys=False), nl=False)
