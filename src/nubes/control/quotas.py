"""Quotas per project: servers, vCPUs, RAM, images, volumes, networks, security groups and
rules, floating IPs. Defaults are settings (NUBES_QUOTA_<RESOURCE>); a project's own limits
are rows of `project_quotas` that an admin sets (`nubes quota set`). -1 is unlimited.

The admin's own project (the operator's: benchmarks and tests fill hosts from it) has no
default limit on servers, vCPUs, RAM, images and volumes: only what an admin sets for it.

Checks run in the creating transaction, after locking the project's row on PostgreSQL (SQLite's
transactions already hold its one write lock): two racing creates count one after the other,
so they cannot together overshoot, as the scheduler's claims cannot overcommit a host."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.control import lookup
from nubes.db.models import (
    ExternalAddress,
    Image,
    Instance,
    Network,
    Project,
    ProjectQuota,
    SecurityGroup,
    SecurityGroupRule,
    Volume,
)
from nubes.errors import Conflict

UNLIMITED = -1
RESOURCES = (
    "servers",
    "vcpus",
    "ram_mb",
    "images",
    "volumes",
    "networks",
    "security_groups",
    "security_group_rules",
    "floating_ips",
)
OPEN_FOR_ADMIN = frozenset({"servers", "vcpus", "ram_mb", "images", "volumes"})
WORDS = {"ram_mb": "MiB of RAM", "vcpus": "vCPUs", "floating_ips": "floating IPs"}


def limits(session: Session, settings: Settings, project_id: str) -> dict[str, tuple[int, bool]]:
    """{resource: (limit, whether it is the default)}."""
    own = dict(
        session.execute(
            select(ProjectQuota.resource, ProjectQuota.limit).where(
                ProjectQuota.project_id == project_id
            )
        ).all()
    )
    admins = project_id == lookup.admin_project_id(session)
    out: dict[str, tuple[int, bool]] = {}
    for r in RESOURCES:
        if r in own:
            out[r] = (int(own[r]), False)
        else:
            default = (
                UNLIMITED if admins and r in OPEN_FOR_ADMIN else getattr(settings, f"quota_{r}")
            )
            out[r] = (default, True)
    return out


def usage(session: Session, project_id: str, only: str | None = None) -> dict[str, int]:
    """What the project holds (one aggregate query per kind; `only`: that kind's alone)."""
    out: dict[str, int] = {}
    want = RESOURCES if only is None else (only,)
    if {"servers", "vcpus", "ram_mb"} & set(want):
        n, cpus, ram = session.execute(
            select(
                func.count(Instance.id), func.sum(Instance.vcpus), func.sum(Instance.ram_mb)
            ).where(Instance.project_id == project_id, Instance.deleted_at.is_(None))
        ).one()
        out |= {"servers": int(n or 0), "vcpus": int(cpus or 0), "ram_mb": int(ram or 0)}
    counts = {
        "images": select(func.count()).where(Image.project_id == project_id),
        "networks": select(func.count()).where(
            Network.project_id == project_id, Network.external.is_(False)
        ),
        "security_groups": select(func.count()).where(SecurityGroup.project_id == project_id),
        "security_group_rules": select(func.count())
        .select_from(SecurityGroupRule)
        .join(SecurityGroup, SecurityGroup.id == SecurityGroupRule.group_id)
        .where(SecurityGroup.project_id == project_id),
        "floating_ips": select(func.count()).where(
            ExternalAddress.project_id == project_id, ExternalAddress.kind == "floating"
        ),
    }
    for r in want:
        if r in counts:
            out[r] = int(session.scalar(counts[r]) or 0)
        elif r == "volumes":
            out[r] = int(
                session.scalar(select(func.count()).where(Volume.project_id == project_id)) or 0
            )
    return out


def _lock(session: Session, project_id: str) -> None:
    """FOR NO KEY UPDATE: quota checks of one project queue on it, but rows that merely
    reference the project (an operation, a port...) do not wait (their foreign key takes
    FOR KEY SHARE, which FOR UPDATE would block)."""
    if session.get_bind().dialect.name != "sqlite":
        query = select(Project.id).where(Project.id == project_id)
        session.execute(query.with_for_update(key_share=True))


def check(session: Session, settings: Settings, project_id: str, adding: dict[str, int]) -> None:
    """Conflict (409) naming the quota and the usage if `adding` goes past a limit.

    Nothing to count, nothing to lock: with every limit it touches unlimited (the admin's
    project by default) a create takes no lock on the project's row. Else the limits are read
    again under the lock (one set meanwhile counts)."""
    limit_of = limits(session, settings, project_id)
    if all(limit_of[r][0] == UNLIMITED for r in adding):
        return
    _lock(session, project_id)
    limit_of = limits(session, settings, project_id)
    for resource, n in adding.items():
        limit = limit_of[resource][0]
        if limit == UNLIMITED:
            continue
        used = usage(session, project_id, resource)[resource]
        if used + n > limit:
            words = WORDS.get(resource, resource.replace("_", " "))
            raise Conflict(
                f"quota exceeded: {resource}: the project uses {used} of its {limit} {words}"
                + (f" and this needs {n} more" if n != 1 else ""),
                field=resource,
            )


def set_limits(session: Session, project_id: str, values: dict[str, int | None]) -> None:
    """`None` puts a resource back on the default."""
    for resource, value in values.items():
        session.execute(
            delete(ProjectQuota).where(
                ProjectQuota.project_id == project_id, ProjectQuota.resource == resource
            )
        )
        if value is not None:
            session.add(ProjectQuota(project_id=project_id, resource=resource, limit=value))
