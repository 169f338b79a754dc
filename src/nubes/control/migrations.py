"""Migrating a server between hosts that share no disk: the API's side.

A migration is a row whose phase both agents converge on (level-triggered, like everything
an agent does): `preparing` (the target builds an incoming guest and reports where it listens)
→ `migrating` (the source mirrors the disk over NBD, then memory; or, cold, stops the guest
and copies the disk) → `done` (the source reported the switch-over: the instance is now the
target's, the source removes its stopped copy) or `failed` (before the switch-over: the guest
stays on the source, the target removes what it prepared). The target's claim is taken when
the migration starts and the source's freed at the switch-over, so a host's usage is always
the sum of what may run there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from nubes.control import generations, operations, volumes
from nubes.control.runtimes import vm_only
from nubes.control.state import AppState
from nubes.db.models import Host, Instance, Migration, Operation, Volume, utcnow
from nubes.errors import Conflict, InvalidInput, NotFound
from nubes.scheduler import placement
from nubes.scheduler.filters import Request
from nubes.schemas import agent as a
from nubes.schemas import resources as s

ACTIVE = ("preparing", "migrating")


def host_up(host: Host, down_after: float) -> bool:
    from nubes.control.compute import host_up as up  # compute imports desired, which imports us

    return up(host, down_after)


_Step = Callable[[Session, Migration, a.ObservedMigration], None]


def find_server(session: Session, ref: str) -> Instance:
    """Any project's live server, by id, or by name when the name is unique (admins only)."""
    rows = session.scalars(
        select(Instance).where(
            or_(Instance.id == ref, Instance.name == ref), Instance.deleted_at.is_(None)
        )
    ).all()
    exact = [r for r in rows if r.id == ref]
    if exact:
        return exact[0]
    if not rows:
        raise NotFound(f"server {ref!r} not found", field="server")
    if len(rows) > 1:
        raise Conflict(f"several servers are named {ref!r}: give its id", field="server")
    return rows[0]


def current(session: Session, instance_id: str) -> Migration | None:
    return session.scalar(
        select(Migration).where(Migration.instance_id == instance_id, Migration.phase.in_(ACTIVE))
    )


def _target(
    state: AppState, session: Session, inst: Instance, source: Host, ref: str | None
) -> Host:
    """Claim the target host (forced or the scheduler's best other than the source)."""
    settings = state.settings
    if ref:
        target = session.scalar(select(Host).where(or_(Host.id == ref, Host.name == ref)))
        if target is None:
            raise NotFound(f"host {ref!r} not found", field="host")
        if target.id == source.id:
            raise InvalidInput(f"host: the server is already on {source.name}", field="host")
        if not host_up(target, settings.host_down_after):
            raise Conflict(f"host: {target.name} is down", field="host")
        if not target.enabled:
            raise Conflict(f"host: {target.name} is disabled", field="host")
        name = target.name
    else:
        req = Request(inst.vcpus, inst.ram_mb, inst.disk_gb)
        hosts = placement.host_states(session.connection(), settings)
        verdicts = placement.explain(hosts, req, settings)
        fit = [v.host for v in verdicts if v.weight is not None and v.host != source.name]
        if not fit:
            raise Conflict("host: no other host can take the server", field="host")
        name = fit[0]
    req = Request(inst.vcpus, inst.ram_mb, inst.disk_gb, force_host=name)
    claimed = placement.claim(session.connection(), req, settings)  # re-checked atomically
    found = session.get(Host, claimed.id)
    assert found is not None
    return found


def start(state: AppState, session: Session, inst: Instance, body: s.MigrateRequest) -> s.Migration:
    """Validate, claim the target, write the migration (the caller's transaction commits)."""
    if inst.desired_state == "deleted":
        raise Conflict("server is being deleted", field="server")
    vm_only(session, inst, "migration")
    if current(session, inst.id) is not None:
        raise Conflict("server is already migrating", field="server")
    source = session.get(Host, inst.host_id) if inst.host_id else None
    if source is None:
        raise Conflict("server is on no host", field="server")
    if not host_up(source, state.settings.host_down_after):
        raise Conflict(f"server's host {source.name} is down", field="server")
    if inst.status not in ("ACTIVE", "SHUTOFF"):
        raise Conflict(f"server is {inst.status}; only ACTIVE or SHUTOFF servers migrate")
    if body.live and (inst.status != "ACTIVE" or inst.desired_state != "running"):
        raise Conflict("live: only a running server migrates live", field="live")
    if inst.task_state:
        raise Conflict(f"server is busy ({inst.task_state})", field="server")
    carried = _volumes(session, inst, source, body.live)
    target = _target(state, session, inst, source, body.host)
    _volume_room(session, state, target, carried)
    mig = Migration(
        instance_id=inst.id,
        source_host_id=source.id,
        target_host_id=target.id,
        live=body.live,
        volumes=json.dumps([v.model_dump() for v in carried]),
    )
    session.add(mig)
    inst.task_state = "migrating"
    operations.begin(session, inst, "migrate", f"{source.name} → {target.name}")
    generations.bump(session, [source.id, target.id])
    session.flush()
    return to_wire(mig, source.name, target.name)


def _volumes(session: Session, inst: Instance, source: Host, live: bool) -> list[a.MigratingVolume]:
    """The attached volumes that travel with the server; 409 naming one that cannot."""
    out = []
    rows = session.scalars(select(Volume).where(Volume.instance_id == inst.id).order_by(Volume.id))
    for vol in rows:
        if vol.host_id != source.id:
            raise Conflict(f"volume {vol.name} is not on the server's host", field="volume")
        if vol.status != "in-use":
            raise Conflict(
                f"volume {vol.name} is {vol.status}: migrate once it is in-use", field="volume"
            )
        if live and not vol.port:  # hot-added this moment: its host has not said where yet
            raise Conflict(
                f"volume {vol.name} is not in the running guest yet; try again", field="volume"
            )
        out.append(a.MigratingVolume(id=vol.id, size_gb=vol.size_gb, port=vol.port))
    return out


def _volume_room(
    session: Session, state: AppState, target: Host, travelling: list[a.MigratingVolume]
) -> None:
    need = sum(v.size_gb for v in travelling)
    if need:
        session.refresh(target)  # the claim just made is a Core UPDATE: the row is stale
    if need and volumes.free_disk(session, target, state.settings) < need:
        raise Conflict(
            f"host: {target.name} has no room for the server's volumes ({need} GiB)",
            field="host",
        )


def travelling(mig: Migration) -> list[a.MigratingVolume]:
    return [a.MigratingVolume.model_validate(v) for v in json.loads(mig.volumes or "[]")]


def to_wire(mig: Migration, source: str, target: str) -> s.Migration:
    return s.Migration(
        id=mig.id,
        server=mig.instance_id,
        source=source,
        target=target,
        live=mig.live,
        phase=mig.phase,
        error=mig.error,
        total_ms=mig.total_ms,
        downtime_ms=mig.downtime_ms,
        created_at=mig.created_at,
        updated_at=mig.updated_at,
    )


def wire(session: Session, mig: Migration) -> s.Migration:
    ids = [mig.source_host_id, mig.target_host_id]
    names = {i: n for i, n in session.execute(select(Host.id, Host.name).where(Host.id.in_(ids)))}
    return to_wire(mig, names.get(mig.source_host_id, ""), names.get(mig.target_host_id, ""))


# -- the agents' side ---------------------------------------------------------------------


def incoming_claims(session: Session, host_id: str) -> tuple[int, int, int]:
    """vCPUs, RAM and disk this host holds for servers migrating to it (`nubes gc` counts them)."""
    row = session.execute(
        select(
            func.coalesce(func.sum(Instance.vcpus), 0),
            func.coalesce(func.sum(Instance.ram_mb), 0),
            func.coalesce(func.sum(Instance.disk_gb), 0),
        )
        .join(Migration, Migration.instance_id == Instance.id)
        .where(Migration.target_host_id == host_id, Migration.phase.in_(ACTIVE))
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def incoming_uses(session: Session, host_id: str, image_id: str) -> bool:
    """An instance migrating to this host boots from the image: the host may download it."""
    found = (
        select(Migration.id)
        .join(Instance, Instance.id == Migration.instance_id)
        .where(
            Migration.target_host_id == host_id,
            Migration.phase.in_(ACTIVE),
            Instance.image_id == image_id,
        )
    )
    return session.scalar(found.limit(1)) is not None


def for_host(session: Session, host: Host) -> list[Migration]:
    """What this host still has to do: the active ones, a source's done one until it has
    removed its copy, a target's failed one until it has removed what it prepared."""
    return list(
        session.scalars(
            select(Migration).where(
                or_(
                    Migration.phase.in_(ACTIVE)
                    & or_(Migration.source_host_id == host.id, Migration.target_host_id == host.id),
                    (Migration.phase == "done")
                    & (Migration.source_host_id == host.id)
                    & Migration.source_cleaned.is_(False),
                    (Migration.phase == "failed")
                    & (Migration.target_host_id == host.id)
                    & Migration.target_cleaned.is_(False),
                )
            )
        )
    )


def desired(
    session: Session, host: Host, migs: list[Migration], incoming: dict[str, a.DesiredInstance]
) -> list[a.DesiredMigration]:
    """`incoming`: the desired instances of the migrations this host is the target of."""
    ids = {m.source_host_id for m in migs} | {m.target_host_id for m in migs}
    rows = session.execute(select(Host.id, Host.address).where(Host.id.in_(ids)))
    address = {host_id: addr for host_id, addr in rows}
    out = []
    for m in migs:
        role: Literal["source", "target"] = "source" if m.source_host_id == host.id else "target"
        peer = m.target_host_id if role == "source" else m.source_host_id
        out.append(
            a.DesiredMigration(
                id=m.id,
                instance_id=m.instance_id,
                role=role,
                phase=m.phase,
                live=m.live,
                peer=address.get(peer, ""),
                port=m.port,
                nbd_port=m.nbd_port,
                instance=incoming.get(m.instance_id) if role == "target" else None,
                volumes=travelling(m),
            )
        )
    return out


def fold(session: Session, host: Host, observed: list[a.ObservedMigration], dry: bool) -> bool:
    """Fold a host's migration reports; True if anything changed (`dry`: only tell)."""
    changed = False
    for obs in observed:
        mig = session.get(Migration, obs.id)
        if mig is None or host.id not in (mig.source_host_id, mig.target_host_id):
            continue
        role = "source" if host.id == mig.source_host_id else "target"
        step = _transition(mig, role, obs)
        if step is None:
            continue
        changed = True
        if not dry:
            step(session, mig, obs)
    return changed


def _transition(mig: Migration, role: str, obs: a.ObservedMigration) -> _Step | None:
    if obs.state == "prepared" and role == "target" and mig.phase == "preparing":
        return _prepared
    if obs.state == "completed" and role == "source" and mig.phase in ACTIVE:
        return _completed
    if obs.state == "failed" and mig.phase in ACTIVE:
        return _failed
    if obs.state == "cleaned" and role == "source" and mig.phase == "done":
        return _source_cleaned
    if obs.state == "cleaned" and role == "target" and mig.phase == "failed":
        return _target_cleaned
    return None


def _prepared(session: Session, mig: Migration, obs: a.ObservedMigration) -> None:
    mig.phase, mig.port, mig.nbd_port = "migrating", obs.port, obs.nbd_port
    _op_step(session, mig.instance_id, "target prepared")
    generations.bump(session, [mig.source_host_id, mig.target_host_id])


def _completed(session: Session, mig: Migration, obs: a.ObservedMigration) -> None:
    """The switch-over happened: the instance is the target's from now on."""
    inst = session.get(Instance, mig.instance_id)
    assert inst is not None
    mig.phase, mig.total_ms, mig.downtime_ms = "done", obs.total_ms, obs.downtime_ms
    inst.host_id, inst.task_state = mig.target_host_id, ""
    # its volumes are in the target's guest now (mirrored with the disk); the source removes
    # its copies once told the migration is done
    moved = [v.id for v in travelling(mig)]
    if moved:
        session.execute(
            update(Volume)
            .where(Volume.id.in_(moved), Volume.host_id == mig.source_host_id)
            .values(host_id=mig.target_host_id)
            .execution_options(synchronize_session=False)
        )
    placement.release(session, mig.source_host_id, inst.vcpus, inst.ram_mb, inst.disk_gb)
    operations.finish(session, inst.id, "migrate")
    # the overlay follows: every host of its networks learns where its ports are now
    nets = generations.instance_networks(session, inst.id)
    generations.bump(session, [mig.source_host_id, mig.target_host_id])
    generations.bump_after_commit(session, generations.network_hosts(session, nets))


def _failed(session: Session, mig: Migration, obs: a.ObservedMigration) -> None:
    """Before the switch-over: the guest stays on the source; the target's claim goes."""
    inst = session.get(Instance, mig.instance_id)
    assert inst is not None
    mig.phase, mig.error = "failed", obs.error or "migration failed"
    if inst.task_state == "migrating":
        inst.task_state = ""
    placement.release(session, mig.target_host_id, inst.vcpus, inst.ram_mb, inst.disk_gb)
    for op in operations.running(session, inst.id):
        if op.kind == "migrate":
            _fail_op(op, mig.error)
    generations.bump(session, [mig.source_host_id, mig.target_host_id])


def _source_cleaned(session: Session, mig: Migration, obs: a.ObservedMigration) -> None:
    mig.source_cleaned = True


def _target_cleaned(session: Session, mig: Migration, obs: a.ObservedMigration) -> None:
    mig.target_cleaned = True


def _op_step(session: Session, instance_id: str, name: str) -> None:
    for op in operations.running(session, instance_id):
        if op.kind == "migrate":
            steps = json.loads(op.steps)
            steps.append({"step": name, "state": "done", "at": utcnow().isoformat()})
            op.steps = json.dumps(steps)


def _fail_op(op: Operation, error: str) -> None:
    op.status, op.error = "failed", error[:1000]
    steps = json.loads(op.steps)
    steps.append({"step": "failed", "state": "error", "at": utcnow().isoformat()})
    op.steps = json.dumps(steps)
