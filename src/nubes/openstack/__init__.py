"""The OpenStack-compatible API subset (Keystone v3, Nova v2.1, Glance v2, Neutron v2.0) on the
API's own listener, translating to and from the same control/ calls as /v1: one state, two APIs.
What the real clients send and read is in docs/architecture.md ("The OpenStack API")."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    # each module adds its routes to its service's router on import
    from nubes.openstack import (
        compute,
        compute_misc,  # noqa: F401  (zones and limits on compute's router)
        credentials,
        flavors_keypairs,  # noqa: F401  (Nova's flavors and keypairs on compute's router)
        identity,
        image,
        networks,  # noqa: F401  (Neutron's resources on neutron's router)
        neutron,
        security,  # noqa: F401
    )

    for module in (identity, compute, image, neutron, credentials):
        app.include_router(module.router)
