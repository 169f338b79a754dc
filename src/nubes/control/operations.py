"""The operation log: each mutating request on a server, its steps, who holds it, its end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.control import generations, metrics
from nubes.db.models import Instance, Operation, utcnow
from nubes.schemas.agent import ObservedInstance

# what ends each kind of operation, by the status the host reports
DONE_WHEN = {
    "create": "ACTIVE",
    "start": "ACTIVE",
    "reboot": "ACTIVE",
    "stop": "SHUTOFF",
    "delete": "DELETED",
    "evacuate": "ACTIVE",
}


def _step(name: str, state: str = "done", at: datetime | None = None) -> dict[str, str]:
    """`at`: when the host says the step ended (its clock); else now, on the API's."""
    if at is None:
        when = utcnow()
    else:  # naive times are taken as UTC, like every time nubes stores
        when = at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at
    return {"step": name, "state": state, "at": when.isoformat(timespec="milliseconds")}


def _ended(session: Session, op: Operation, result: str) -> None:
    """Its duration, for /metrics (observed once the transaction commits)."""
    took = (utcnow() - op.created_at).total_seconds() if op.created_at else 0.0
    metrics.operation_ended(session, op.kind, result, took)


def begin(session: Session, inst: Instance, kind: str, *steps: str) -> Operation:
    """Record a request; an older one still running on the instance is superseded."""
    for old in running(session, inst.id):
        old.status, old.error = "superseded", f"superseded by {kind}"
        _ended(session, old, "superseded")
    op = Operation(
        project_id=inst.project_id,
        instance_id=inst.id,
        kind=kind,
        holder="api",
        steps=json.dumps([_step("accepted"), *(_step(s) for s in steps)]),
    )
    session.add(op)
    return op


def running(session: Session, instance_id: str) -> list[Operation]:
    return list(
        session.scalars(
            select(Operation).where(
                Operation.instance_id == instance_id, Operation.status == "running"
            )
        )
    )


def observe(session: Session, inst: Instance, obs: ObservedInstance, host_name: str) -> bool:
    """Fold an agent's report into the instance's running operation; True if it changed."""
    changed = False
    for op in running(session, inst.id):
        before = (op.steps, op.status, op.holder)
        steps = json.loads(op.steps)
        steps += [_step(s.name, at=s.at) for s in obs.steps]
        op.holder = host_name
        if obs.status == "ERROR":
            op.status, op.error = "failed", obs.fault
            steps.append(_step("failed", "error"))
            _ended(session, op, "failed")
        elif obs.status == DONE_WHEN.get(op.kind) and not (
            op.kind == "reboot" and obs.reboot_gen < inst.reboot_gen
        ):
            op.status = "done"
            steps.append(_step(obs.status.lower()))
            _ended(session, op, "done")
        op.steps = json.dumps(steps)
        changed |= before != (op.steps, op.status, op.holder)
    return changed


def finish(session: Session, instance_id: str, kind: str) -> None:
    for op in running(session, instance_id):
        if op.kind == kind:
            op.status = "done"
            op.steps = json.dumps([*json.loads(op.steps), _step("done")])
            _ended(session, op, "done")


def expire(session: Session, older_than: float) -> int:
    """Bound every transitional state: operations running too long fail with a reason."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    stale = session.scalars(
        select(Operation).where(Operation.status == "running", Operation.created_at < cutoff)
    ).all()
    for op in stale:
        op.status = "failed"
        op.error = f"did not finish within {older_than:.0f} s (host down or unreachable?)"
        _ended(session, op, "expired")
        inst = session.get(Instance, op.instance_id) if op.instance_id else None
        if inst is not None and inst.deleted_at is None:
            inst.task_state = ""
            if inst.status == "BUILD":
                inst.status, inst.fault = "ERROR", op.error
                generations.bump(session, [inst.host_id])  # its agent stops building it
    return len(stale)
