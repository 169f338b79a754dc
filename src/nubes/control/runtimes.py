"""What a server runs under: QEMU (a virtual machine) or runc (a container, its image a rootfs),
and the refusal of a VM-only action for a container."""

from __future__ import annotations

from sqlalchemy.orm import Session

from nubes.db.models import Image, Instance
from nubes.errors import Conflict

CONTAINER_FORMAT = "rootfs"


def runtime_of(session: Session, inst: Instance) -> str:
    """runc for a container, qemu for a virtual machine."""
    image = session.get(Image, inst.image_id) if inst.image_id else None
    return "runc" if image is not None and image.disk_format == CONTAINER_FORMAT else "qemu"


def vm_only(session: Session, inst: Instance, action: str) -> None:
    """Refuse an action on a virtual machine's disk or QEMU for a container (409)."""
    if runtime_of(session, inst) == "runc":
        raise Conflict(
            f"server {inst.name} is a container: {action} is for virtual machines", field="server"
        )
