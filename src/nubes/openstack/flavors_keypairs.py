"""Nova's flavors (+ os-extra_specs) and os-keypairs, on nubes' flavors and keypairs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Request, Response
from sqlalchemy import select

from nubes.api.deps import SessionDep, StateDep
from nubes.api.routes import keypairs as v1_keypairs
from nubes.db.models import Flavor, Keypair
from nubes.errors import NotFound
from nubes.openstack.compute import router
from nubes.openstack.http import OsCaller, flag, integer, iso_z, limit_of, page, section, text
from nubes.openstack.servers_wire import link
from nubes.schemas import resources as s


def flavor_doc(f: Flavor, base: str) -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
        "ram": f.ram_mb,
        "vcpus": f.vcpus,
        "disk": f.disk_gb,
        "OS-FLV-EXT-DATA:ephemeral": 0,
        "swap": 0,
        "os-flavor-access:is_public": True,
        "OS-FLV-DISABLED:disabled": False,
        "rxtx_factor": 1.0,
        "links": link(base, "flavors", f.id),
    }


def _flavors(session: SessionDep, request: Request) -> list[Flavor]:
    q = request.query_params
    rows = list(session.scalars(select(Flavor).order_by(Flavor.ram_mb, Flavor.name, Flavor.id)))
    if flag(q.get("is_public")) is False:
        rows = []  # every nubes flavor is public
    min_ram, min_disk = integer(dict(q), "minRam"), integer(dict(q), "minDisk")
    rows = [r for r in rows if r.ram_mb >= (min_ram or 0) and r.disk_gb >= (min_disk or 0)]
    return page(rows, q.get("marker"), limit_of(q.get("limit")))


@router.get("/v2.1/flavors")
def list_flavors(request: Request, session: SessionDep, _: OsCaller, state: StateDep) -> Any:
    base = state.settings.public_url
    return {
        "flavors": [
            {"id": f.id, "name": f.name, "links": link(base, "flavors", f.id)}
            for f in _flavors(session, request)
        ]
    }


@router.get("/v2.1/flavors/detail")
def list_flavor_details(request: Request, session: SessionDep, _: OsCaller, state: StateDep) -> Any:
    base = state.settings.public_url
    return {"flavors": [flavor_doc(f, base) for f in _flavors(session, request)]}


def flavor_by_id(session: SessionDep, ident: str) -> Flavor:
    row = session.get(Flavor, ident)
    if row is None:
        raise NotFound(f"Flavor {ident} could not be found.")
    return row


@router.get("/v2.1/flavors/{ident}")
def show_flavor(ident: str, session: SessionDep, _: OsCaller, state: StateDep) -> Any:
    return {"flavor": flavor_doc(flavor_by_id(session, ident), state.settings.public_url)}


@router.get("/v2.1/flavors/{ident}/os-extra_specs")
def extra_specs(ident: str, session: SessionDep, _: OsCaller) -> Any:
    flavor_by_id(session, ident)
    return {"extra_specs": {}}


# --- keypairs: Nova names them, per user (here: per project) ---


def keypair_doc(k: Keypair, private_key: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": k.name,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
        "user_id": k.project_id,
        "type": "ssh",
        "created_at": iso_z(k.created_at),
        "deleted": False,
        "deleted_at": None,
        "updated_at": None,
    }
    if private_key is not None:
        doc["private_key"] = private_key
    return doc


def keypair_by_name(session: SessionDep, name: str, project_id: str) -> Keypair:
    row = session.scalar(
        select(Keypair).where(Keypair.project_id == project_id, Keypair.name == name)
    )
    if row is None:
        raise NotFound(f"Keypair {name} not found for user {project_id}")
    return row


@router.get("/v2.1/os-keypairs")
def list_keypairs(session: SessionDep, who: OsCaller) -> Any:
    rows = session.scalars(
        select(Keypair).where(Keypair.project_id == who.project_id).order_by(Keypair.name)
    )
    return {"keypairs": [{"keypair": keypair_doc(k)} for k in rows]}


@router.post("/v2.1/os-keypairs", status_code=200)
def create_keypair(body: Annotated[Any, Body()], session: SessionDep, who: OsCaller) -> Any:
    keypair = section(body, "keypair")
    wanted = s.KeypairCreate(
        name=text(keypair, "name", required=True, where="keypair") or "",
        public_key=text(keypair, "public_key", where="keypair"),
    )
    made = v1_keypairs.create_keypair(wanted, session, who)
    row = keypair_by_name(session, made.name, who.project_id)
    return {"keypair": keypair_doc(row, made.private_key)}


@router.get("/v2.1/os-keypairs/{name}")
def show_keypair(name: str, session: SessionDep, who: OsCaller) -> Any:
    row = keypair_by_name(session, name, who.project_id)
    return {"keypair": keypair_doc(row) | {"id": int(row.id[:7], 16)}}


@router.delete("/v2.1/os-keypairs/{name}", status_code=202)
def delete_keypair(name: str, session: SessionDep, who: OsCaller) -> Response:
    session.delete(keypair_by_name(session, name, who.project_id))
    session.commit()
    return Response(status_code=202)
