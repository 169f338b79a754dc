"""What the Neutron routes share: the router, generic filters, pagination, documents."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import Request

from nubes.api.deps import StateDep
from nubes.openstack.http import flag, iso_z, limit_of, make_router, page

router = make_router("network", "/network")
NOT_FILTERS = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"}


@router.get("")
def versions(state: StateDep) -> dict[str, Any]:
    doc = {
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"rel": "self", "href": f"{state.settings.public_url}/network/v2.0/"}],
    }
    return {"versions": [doc]}


EXTENSIONS = (
    ("security-group", "security-group", "The security groups extension."),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding."),
    ("external-net", "Neutron external network", "Adds external network attribute."),
    ("port-security", "Port Security", "Provides port security."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at."),
)


@router.get("/v2.0/extensions")
def extensions() -> dict[str, Any]:
    return {
        "extensions": [
            {"alias": alias, "name": name, "description": text, "links": [], "updated": ""}
            for alias, name, text in EXTENSIONS
        ]
    }


def standard(ident: str, project_id: str, created: datetime | None) -> dict[str, Any]:
    """The attributes every Neutron resource carries."""
    return {
        "id": ident,
        "project_id": project_id,
        "tenant_id": project_id,
        "description": "",
        "tags": [],
        "created_at": iso_z(created),
        "updated_at": iso_z(created),
        "revision_number": 1,
    }


def _matches(doc: Mapping[str, Any], key: str, wanted: list[str]) -> bool:
    value = doc.get(key)
    if isinstance(value, list | dict):
        return True  # not a filter nubes applies (fixed_ips, tags...)
    if isinstance(value, bool):
        return any(flag(w) == value for w in wanted if flag(w) is not None) or all(
            flag(w) is None for w in wanted
        )
    return any(("" if value is None else str(value)) == w for w in wanted)


def listed(request: Request, docs: list[dict[str, Any]], collection: str) -> dict[str, Any]:
    """Neutron's list: filters on any attribute (unknown ones ignored), then limit/marker with
    `<collection>_links` when there is a next page."""
    params = request.query_params
    for key in set(params.keys()) - NOT_FILTERS:
        wanted = params.getlist(key)
        if all(w == "" for w in wanted):
            continue  # `?name=` (Terraform's data sources send it): no filter
        docs = [d for d in docs if key not in d or _matches(d, key, wanted)]
    limit = limit_of(params.get("limit"))
    shown = page(docs, params.get("marker"), limit)
    answer: dict[str, Any] = {collection: shown}
    if limit and shown and page(docs, shown[-1]["id"], None):
        href = f"{request.url.path}?limit={limit}&marker={shown[-1]['id']}"
        answer[f"{collection}_links"] = [{"rel": "next", "href": str(request.base_url)[:-1] + href}]
    return answer
