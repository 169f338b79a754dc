"""Glance v2: images listed (marker pagination), shown, created (queued), uploaded, deleted.
Custom properties are kept as strings in `images.properties`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from nubes.api.deps import SessionDep, StateDep
from nubes.api.routes import images as v1_images
from nubes.control.caller import Caller
from nubes.control.lookup import admin_project_id
from nubes.db.models import Image
from nubes.errors import BadRequest, Forbidden, NotFound
from nubes.openstack.http import OsCaller, iso_z, limit_of, make_router, page, text
from nubes.schemas import resources as s

router = make_router("image", "/image")
STATUS = {"queued": "queued", "active": "active", "error": "killed"}
# what a create may carry that is not a custom property
KNOWN = {"name", "disk_format", "container_format", "visibility", "protected", "tags", "id"}
KNOWN |= {"min_disk", "min_ram", "os_hidden"}
MD5 = "nubes.md5"  # kept with the properties, shown as `checksum`


@router.get("")
def versions(state: StateDep) -> JSONResponse:
    doc = {
        "id": "v2.16",
        "status": "CURRENT",
        "links": [{"rel": "self", "href": f"{state.settings.public_url}/image/v2/"}],
    }
    return JSONResponse({"versions": [doc]})


def properties(row: Image) -> dict[str, str]:
    try:
        props = json.loads(row.properties or "{}")
    except ValueError:
        return {}
    return props if isinstance(props, dict) else {}


def image_doc(row: Image, public_project: str | None) -> dict[str, Any]:
    props = properties(row)
    active = row.status == "active"
    doc: dict[str, Any] = {k: v for k, v in props.items() if k != MD5}
    doc |= {
        "id": row.id,
        "name": row.name,
        "status": STATUS.get(row.status, row.status),
        "visibility": "public" if row.project_id == public_project else "private",
        "protected": False,
        "os_hidden": False,
        "disk_format": row.disk_format,
        "container_format": "bare",
        "size": row.size if active else None,
        "virtual_size": row.virtual_size if active else None,
        "checksum": props.get(MD5) if active else None,
        "os_hash_algo": "sha256" if active else None,
        "os_hash_value": row.sha256 if active else None,
        "min_disk": 0,
        "min_ram": 0,
        "owner": row.project_id,
        "tags": [],
        "created_at": iso_z(row.created_at),
        "updated_at": iso_z(row.created_at),
        "self": f"/v2/images/{row.id}",
        "file": f"/v2/images/{row.id}/file",
        "schema": "/v2/schemas/image",
    }
    return doc


def visible(session: Session, who: Caller) -> tuple[list[Image], str | None]:
    public = admin_project_id(session)
    rows = session.scalars(
        select(Image)
        .where(Image.project_id.in_([who.project_id, public]))
        .order_by(Image.created_at.desc(), Image.id)
    )
    return list(rows), public


def _filtered(rows: list[Image], public: str | None, q: dict[str, str]) -> list[Image]:
    if q.get("name"):
        rows = [r for r in rows if r.name == q["name"]]
    if q.get("status"):
        rows = [r for r in rows if STATUS.get(r.status) == q["status"]]
    if q.get("owner"):
        rows = [r for r in rows if r.project_id == q["owner"]]
    if q.get("visibility") in ("public", "private"):
        want_public = q["visibility"] == "public"
        rows = [r for r in rows if (r.project_id == public) == want_public]
    if q.get("id", "").startswith("in:"):
        ids = set(q["id"][3:].split(","))
        rows = [r for r in rows if r.id in ids]
    if q.get("tag"):
        rows = []  # nubes images carry no tags
    return rows


@router.get("/v2/images")
def list_images(request: Request, session: SessionDep, who: OsCaller) -> Any:
    q = dict(request.query_params)
    rows, public = visible(session, who)
    rows = _filtered(rows, public, q)
    limit = limit_of(q.get("limit"))
    shown = page(rows, q.get("marker"), limit)
    answer: dict[str, Any] = {
        "images": [image_doc(r, public) for r in shown],
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    }
    rest = page(rows, shown[-1].id, None) if shown else []
    if limit and rest:
        answer["next"] = f"/v2/images?marker={shown[-1].id}&limit={limit}"
    return answer


def image_by_id(session: Session, ident: str, who: Caller) -> tuple[Image, str | None]:
    public = admin_project_id(session)
    row = session.get(Image, ident)
    if row is None or row.project_id not in (who.project_id, public):
        raise NotFound(f"No image found with ID {ident}")
    return row, public


@router.get("/v2/images/{ident}")
def show_image(ident: str, session: SessionDep, who: OsCaller) -> Any:
    row, public = image_by_id(session, ident, who)
    return image_doc(row, public)


def _custom(body: dict[str, Any]) -> dict[str, str]:
    props = {}
    for key, value in body.items():
        if key in KNOWN or value is None:
            continue
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(f"{key}: a property's value must be a string", field=key)
        props[key[:255]] = str(value)[:65535]
    return props


@router.post("/v2/images", status_code=201)
def create_image(
    body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> JSONResponse:
    if not isinstance(body, dict):
        raise BadRequest("the body must be an object of image attributes", field="body")
    fmt = text(body, "disk_format") or "raw"
    if fmt not in ("qcow2", "raw"):
        raise BadRequest(f"disk_format: {fmt!r} is not supported (qcow2, raw)", field="disk_format")
    container = text(body, "container_format") or "bare"
    if container != "bare":
        raise BadRequest("container_format: only bare is supported", field="container_format")
    if body.get("visibility") == "public" and not who.is_admin:
        raise Forbidden("visibility: only an admin publishes images", field="visibility")
    props = _custom(body)
    wanted = s.ImageCreate(name=text(body, "name", required=True) or "", disk_format=fmt)  # type: ignore[arg-type]
    row, _ = v1_images.new_image(session, wanted, who, state)
    row.properties = json.dumps(props)
    session.commit()
    return JSONResponse(image_doc(row, admin_project_id(session)), status_code=201)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remember_md5(session: Session, ident: str, path: Path) -> None:
    row = session.get(Image, ident)
    if row is None:
        return
    row.properties = json.dumps(properties(row) | {MD5: _md5(path)})
    session.commit()


@router.put("/v2/images/{ident}/file", status_code=204)
async def upload(
    ident: str, request: Request, session: SessionDep, who: OsCaller, state: StateDep
) -> Response:
    await run_in_threadpool(image_by_id, session, ident, who)
    made = await v1_images.upload_part(ident, "file", request, session, who, state)
    path = state.settings.images_dir / f"{made.id}.{made.disk_format}"
    if path.exists():
        await run_in_threadpool(_remember_md5, session, made.id, path)
    return Response(status_code=204)


def _patched(row: Image, ops: Any) -> dict[str, str]:
    """Glance's JSON patch on custom properties: add, replace, remove of `/<key>`."""
    if not isinstance(ops, list):
        raise BadRequest("the body must be a list of patch operations", field="body")
    props = properties(row)
    for i, op in enumerate(ops):
        where = f"[{i}]"
        if not isinstance(op, dict):
            raise BadRequest(f"{where}: must be an object", field=where)
        kind, path = text(op, "op", required=True, where=where), text(op, "path", where=where)
        key = (path or "").lstrip("/")
        if not key or "/" in key or key in KNOWN | {"status", "owner", MD5}:
            raise Forbidden(f"{where}.path: {path!r} cannot be changed here", field="path")
        if kind in ("add", "replace"):
            props |= _custom({key: op.get("value")})
        elif kind == "remove":
            props.pop(key, None)
        else:
            raise BadRequest(f"{where}.op: add, replace or remove", field="op")
    return props


def _apply_patch(session: Session, ident: str, who: Caller, ops: Any) -> dict[str, Any]:
    row, public = image_by_id(session, ident, who)
    if row.project_id != who.project_id:
        raise Forbidden("this image belongs to another project")
    row.properties = json.dumps(_patched(row, ops))
    session.commit()
    return image_doc(row, public)


@router.patch("/v2/images/{ident}")
async def update_image(ident: str, request: Request, session: SessionDep, who: OsCaller) -> Any:
    """`openstack image set --property k=v` (application/openstack-images-v2.1-json-patch)."""
    try:
        ops = json.loads(await request.body())
    except ValueError:
        raise BadRequest("the body must be a JSON patch", field="body") from None
    return await run_in_threadpool(_apply_patch, session, ident, who, ops)


@router.delete("/v2/images/{ident}", status_code=204)
def delete_image(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Response:
    image_by_id(session, ident, who)
    v1_images.delete_image(ident, session, who, state)
    return Response(status_code=204)
