"""Wire models of volumes and of the server lifecycle beyond start/stop: attach, snapshot,
rebuild, resize."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nubes.schemas.common import Name
from nubes.schemas.resources import Model

MAX_VOLUME_GB = 2048


class VolumeCreate(Model):
    name: Name
    size_gb: int = Field(ge=1, le=MAX_VOLUME_GB, description="GiB")
    image: str | None = Field(
        default=None, max_length=64, description="an image to copy onto it (blank without)"
    )
    host: str | None = Field(
        default=None, max_length=64, description="admin only; otherwise the scheduler picks"
    )


class Volume(Model):
    id: str
    name: str
    size_gb: int
    status: str  # creating | available | attaching | in-use | detaching | deleting | error
    host: str | None
    server: str | None  # the server it is attached to
    image: str | None
    fault: str
    created_at: datetime


class VolumeAttach(Model):
    volume: str = Field(min_length=1, max_length=64, description="volume name or id")


class SnapshotCreate(Model):
    name: Name


class Rebuild(Model):
    image: str | None = Field(
        default=None, max_length=64, description="the image of the new disk (default: its own)"
    )


class Resize(Model):
    flavor: str = Field(min_length=1, max_length=64)
