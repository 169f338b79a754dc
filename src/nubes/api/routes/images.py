from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from nubes.api import url_imports
from nubes.api.deps import AgentDep, Caller, CallerDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.control import images, lookup, migrations, quotas
from nubes.control.images import ARCHIVE_FORMATS
from nubes.control.lookup import admin_project_id
from nubes.control.state import AppState
from nubes.db.models import Image, Instance, Volume
from nubes.errors import BadRequest, Conflict, Forbidden, InvalidInput, NotFound
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/images", tags=["images"])
BOOT_FILE_MAX = 512 * 1024 * 1024
Part = Literal["file", "kernel", "initrd"]


def to_wire(i: Image) -> s.Image:
    return s.Image(
        id=i.id,
        name=i.name,
        disk_format=i.disk_format,
        kind="container" if i.disk_format in ARCHIVE_FORMATS else "vm",
        status=i.status,
        size=i.size,
        virtual_size=i.virtual_size,
        sha256=i.sha256,
        kernel=bool(i.kernel_sha256),
        initrd=bool(i.initrd_sha256),
        cmdline=i.cmdline,
        default_user=i.default_user,
        ready_pattern=i.ready_pattern,
        error=i.error,
        created_at=i.created_at,
    )


@router.get("")
def list_images(session: SessionDep, who: CallerDep, page: PageDep) -> list[s.Image]:
    projects = [who.project_id, admin_project_id(session)]
    query = select(Image).where(Image.project_id.in_(projects))
    rows = paginate(session, query, (Image.created_at, Image.id), page)
    return [to_wire(i) for i in rows]


@router.get("/{ref}")
def show_image(ref: str, session: SessionDep, who: CallerDep) -> s.Image:
    return to_wire(lookup.owned(session, Image, ref, who, "image"))


@router.post("", status_code=201)
async def create_image(
    body: s.ImageCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Image:
    """With `url`, the image is downloaded before the answer (see api/url_imports.py for
    the bounds)."""
    if not body.url:
        row, _ = await run_in_threadpool(new_image, session, body, who, state)
        return to_wire(row)
    with url_imports.admission(state.settings) as imports:
        row, address = await run_in_threadpool(new_image, session, body, who, state)
        await url_imports.download(imports, _import_url, session, row, body.url, address, state)
    return to_wire(row)


def new_image(
    session: Session, body: s.ImageCreate, who: Caller, state: AppState
) -> tuple[Image, str | None]:
    taken = select(Image).where(Image.project_id == who.project_id, Image.name == body.name)
    if session.scalar(taken):
        raise Conflict(f"image {body.name!r} already exists", field="name")
    quotas.check(session, state.settings, who.project_id, {"images": 1})
    address = None
    if body.url and body.disk_format in ARCHIVE_FORMATS:
        raise InvalidInput("url: container images are uploaded (--file), not fetched", field="url")
    if body.url:
        address = images.check_url(body.url, state.settings.allow_private_image_urls)
    row = Image(
        project_id=who.project_id,
        name=body.name,
        disk_format=body.disk_format,
        cmdline=body.cmdline,
        default_user=body.default_user,
        ready_pattern=body.ready_pattern,
    )
    session.add(row)
    session.commit()
    return row, address


def _import_url(
    session: Session, row: Image, url: str, address: str | None, state: AppState
) -> None:
    settings = state.settings
    max_size = settings.max_image_virtual_size_gb * 1024**3
    chunks = url_imports.within(images.download(url, address), settings.url_import_timeout)
    try:
        stored = images.store(settings).import_stream(
            row.id, chunks, row.disk_format, max_size, settings.max_upload_bytes
        )
    except httpx.HTTPError as exc:
        session.delete(row)
        session.commit()
        raise InvalidInput(f"url: download failed: {type(exc).__name__}", field="url") from exc
    except Exception:
        session.delete(row)
        session.commit()
        raise
    row.size, row.virtual_size, row.sha256 = stored.size, stored.virtual_size, stored.sha256
    row.status = "active"
    session.commit()


async def _spool(request: Request, dest: Path, limit: int | None) -> str:
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if limit is not None and size > limit:
                raise InvalidInput("file: too large", field="file")
            digest.update(chunk)
            await run_in_threadpool(fh.write, chunk)
    if size == 0:
        raise BadRequest("file: the upload is empty", field="file")
    return digest.hexdigest()


def _upload_target(session: Session, ref: str, part: str, who: Caller) -> Image:
    row = lookup.owned(session, Image, ref, who, "image")
    if row.project_id != who.project_id:
        raise Forbidden("this image belongs to another project")
    if part == "file" and row.status == "active":
        raise Conflict("image data was already uploaded", field="file")
    session.commit()  # end the transaction: the upload may take minutes
    return row


@router.put("/{ref}/{part}", status_code=200)
async def upload_part(
    ref: str, part: Part, request: Request, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Image:
    # Database work never runs on the event loop: a lock wait there would stall the requests
    # whose teardown (closing their session) releases that very lock.
    row = await run_in_threadpool(_upload_target, session, ref, part, who)
    st = images.store(state.settings)
    fd, tmp = tempfile.mkstemp(dir=state.settings.images_dir, prefix=".upload-")
    os.close(fd)
    path = Path(tmp)
    try:
        limit = None if part == "file" else BOOT_FILE_MAX
        digest = await _spool(request, path, limit)
        if part == "file":
            await run_in_threadpool(images.import_file, session, row, st, path, state.settings)
        else:
            os.replace(path, state.settings.images_dir / f"{row.id}.{part}")
            setattr(row, f"{part}_sha256", digest)
            await run_in_threadpool(session.commit)
    finally:
        path.unlink(missing_ok=True)
    return to_wire(row)


@router.get("/{ref}/{part}")
def download_part(
    ref: str, part: Part, session: SessionDep, who: AgentDep, state: StateDep
) -> FileResponse:
    row = session.get(Image, ref)
    if row is None or row.status != "active":
        raise NotFound(f"image {ref!r} not found or not active")
    if who.role == "host":  # a host fetches only what its own instances boot from
        needed = select(Instance.id).where(
            Instance.image_id == row.id,
            Instance.host_id == who.host_id,
            Instance.deleted_at.is_(None),
        )
        volume = select(Volume.id).where(Volume.image_id == row.id, Volume.host_id == who.host_id)
        if (
            session.scalar(needed.limit(1)) is None
            and session.scalar(volume.limit(1)) is None
            and not migrations.incoming_uses(session, who.host_id, row.id)
        ):
            raise Forbidden("no instance of this host uses this image", field="image")
    name = f"{row.id}.{row.disk_format}" if part == "file" else f"{row.id}.{part}"
    path = state.settings.images_dir / name
    if not path.exists():
        raise NotFound(f"image {ref!r} has no {part}")
    return FileResponse(path, media_type="application/octet-stream")


@router.delete("/{ref}", status_code=204)
def delete_image(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> None:
    row = lookup.owned(session, Image, ref, who, "image")
    if row.project_id != who.project_id and not who.is_admin:
        raise Forbidden("this image belongs to another project")
    live = select(Instance.id).where(Instance.image_id == row.id, Instance.deleted_at.is_(None))
    if session.scalar(live):
        raise Conflict(f"image {row.name!r} is used by servers; delete them first")
    if session.scalar(select(Instance.id).where(Instance.image_id == row.id).limit(1)):
        # deleted servers' rows keep their image (a foreign key): a 409, not the database's 500
        raise Conflict(f"image {row.name!r} is kept for the records of deleted servers")
    images.store(state.settings).delete(row.id)
    for part in ("kernel", "initrd"):
        (state.settings.images_dir / f"{row.id}.{part}").unlink(missing_ok=True)
    session.delete(row)
    session.commit()
