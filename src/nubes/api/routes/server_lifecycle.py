"""A server's volumes, snapshots, rebuild and resize (control/volumes.py, control/lifecycle.py),
and the host's upload of a snapshot."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from nubes.api.deps import AgentDep, CallerDep, SessionDep, StateDep, require_own_host
from nubes.api.routes.images import to_wire
from nubes.api.routes.servers import shown
from nubes.control import compute, lifecycle, lookup, volumes
from nubes.db.models import Instance, Volume
from nubes.errors import BadRequest, InvalidInput
from nubes.schemas import agent as a
from nubes.schemas import resources as s
from nubes.schemas import volumes as v

router = APIRouter(tags=["servers"])


@router.post("/v1/servers/{ref}/volumes", status_code=202)
def attach_volume(ref: str, body: v.VolumeAttach, session: SessionDep, who: CallerDep) -> v.Volume:
    """Hot: the guest sees a new virtio disk (its serial: the volume id's first 20 characters).
    Volume and server must be on the same host (409 otherwise)."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    vol = lookup.owned(session, Volume, body.volume, who, "volume")
    return volumes.attach(session, inst, vol)


@router.delete("/v1/servers/{ref}/volumes/{volume}", status_code=202)
def detach_volume(ref: str, volume: str, session: SessionDep, who: CallerDep) -> v.Volume:
    """Asks the guest to let go of the disk (PCI unplug); `available` once it has."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    vol = lookup.owned(session, Volume, volume, who, "volume")
    return volumes.detach(session, inst, vol)


@router.post("/v1/servers/{ref}/snapshot", status_code=202)
def snapshot_server(
    ref: str, body: v.SnapshotCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Image:
    """An image of the project from the server's disk at one point (the guest is paused for
    the copy); `queued` until its host has uploaded it, then `active`."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    row = lifecycle.snapshot(session, state.settings, inst, body, who)
    answer = to_wire(row)
    session.commit()
    return answer


@router.post("/v1/servers/{ref}/rebuild", status_code=202)
def rebuild_server(
    ref: str, body: v.Rebuild, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Server:
    """A new disk from the image; the same id, ports and addresses. The disk's data is lost."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    lifecycle.rebuild(session, inst, body, who)
    answer = compute.to_wire(session, inst, state.settings.host_down_after)
    session.commit()
    return shown(answer, who)


@router.post("/v1/servers/{ref}/resize", status_code=202)
def resize_server(
    ref: str, body: v.Resize, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Server:
    """Cold, on its host: stopped, disk grown, started with the flavor's vCPUs and RAM."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    lifecycle.resize(session, state.settings, inst, body, who)
    answer = compute.to_wire(session, inst, state.settings.host_down_after)
    session.commit()
    return shown(answer, who)


def _target(session: SessionDep, who: AgentDep, host_id: str, image_id: str) -> None:
    require_own_host(who, host_id)
    lifecycle.snapshot_target(session, host_id, image_id)
    session.commit()  # no transaction held while the file arrives


@router.put("/v1/agent/hosts/{host_id}/snapshots/{image_id}", status_code=204)
async def upload_snapshot(
    host_id: str,
    image_id: str,
    request: Request,
    session: SessionDep,
    who: AgentDep,
    state: StateDep,
) -> None:
    """The host's flattened copy of a server's disk: inspected as any import."""
    await run_in_threadpool(_target, session, who, host_id, image_id)
    fd, tmp = tempfile.mkstemp(dir=state.settings.images_dir, prefix=".upload-")
    os.close(fd)
    path = Path(tmp)
    try:
        limit = lifecycle.upload_limit(state.settings)
        digest = await _receive(request, path, limit)
        await run_in_threadpool(
            lifecycle.store_snapshot, session, state.settings, host_id, image_id, path, digest
        )
    finally:
        path.unlink(missing_ok=True)


SPOOL_BLOCK = 4 * 1024 * 1024


async def _receive(request: Request, dest: Path, limit: int) -> str:
    """The body into dest, its sha256 on the way: written and hashed in blocks of 4 MiB in a
    worker thread (hashlib and the write let go of the GIL), not one hop per 64 KiB chunk."""
    digest, size, block = hashlib.sha256(), 0, bytearray()

    def flush(fh: BinaryIO, data: bytes) -> None:
        digest.update(data)
        fh.write(data)

    with dest.open("wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidInput("file: larger than an image may be", field="file")
            block += chunk
            if len(block) >= SPOOL_BLOCK:
                await run_in_threadpool(flush, fh, bytes(block))
                block.clear()
        await run_in_threadpool(flush, fh, bytes(block))
    if size == 0:
        raise BadRequest("file: the upload is empty", field="file")
    return digest.hexdigest()


@router.post("/v1/agent/hosts/{host_id}/snapshots/{image_id}/failed", status_code=204)
def snapshot_failed(
    host_id: str, image_id: str, body: a.SnapshotFailed, session: SessionDep, who: AgentDep
) -> None:
    """The host could not copy the disk: the image is `error`, with the reason."""
    require_own_host(who, host_id)
    row, inst = lifecycle.snapshot_target(session, host_id, image_id)
    lifecycle.snapshot_failed(session, row, inst, body.error)
    session.commit()
