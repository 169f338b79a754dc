"""The agents' side of the API: register, heartbeat, long-poll desired state, report."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query
from sqlalchemy import select

from nubes.api import compute, operations
from nubes.api.deps import AgentDep, SessionDep, StateDep
from nubes.api.desired import desired_state
from nubes.api.state import bump_generation, read_generation
from nubes.db.models import Host, Instance, utcnow
from nubes.errors import NotFound
from nubes.schemas import agent as a

router = APIRouter(prefix="/v1/agent", tags=["agent"])


def _host(session: SessionDep, host_id: str) -> Host:
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound(f"host {host_id} is not registered", field="host")
    return host


@router.post("/hosts")
def register(
    body: a.HostRegister, session: SessionDep, _: AgentDep, state: StateDep
) -> dict[str, str]:
    host = session.scalar(select(Host).where(Host.name == body.name))
    if host is None:
        host = Host(name=body.name)
        session.add(host)
    for key, value in body.model_dump().items():
        setattr(host, key, value)
    host.last_heartbeat = utcnow()
    bump_generation(session)
    session.commit()
    state.notifier.notify()
    return {"id": host.id}


@router.post("/hosts/{host_id}/heartbeat", status_code=204)
def heartbeat(host_id: str, session: SessionDep, _: AgentDep) -> None:
    _host(session, host_id).last_heartbeat = utcnow()
    session.commit()


@router.get("/hosts/{host_id}/desired")
def desired(
    host_id: str,
    session: SessionDep,
    _: AgentDep,
    state: StateDep,
    since: int = Query(default=-1),
    wait: float = Query(default=0.0, ge=0.0, le=60.0),
) -> a.DesiredState:
    """Long-poll: answers when the generation differs from `since`, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    local = state.notifier.local
    _host(session, host_id)  # an unknown host is told at once, not after the wait
    while True:
        generation = read_generation(session)
        left = deadline - time.monotonic()
        if generation != since or left <= 0:
            return desired_state(session, _host(session, host_id), generation)
        session.rollback()  # never hold a transaction (and SQLite's lock) while waiting
        local = state.notifier.wait(local, min(left, 1.0))


@router.post("/hosts/{host_id}/report", status_code=204)
def report(
    host_id: str, body: a.Report, session: SessionDep, _: AgentDep, state: StateDep
) -> None:
    host = _host(session, host_id)
    state.leftovers[host.name] = body.leftovers
    changed = False
    for obs in body.instances:
        inst = session.get(Instance, obs.id)
        if inst is None or inst.host_id != host_id or inst.deleted_at is not None:
            continue
        changed |= operations.observe(session, inst, obs, host.name)
        changed |= apply_observation(session, inst, obs)
    if changed:
        session.commit()


def apply_observation(session: SessionDep, inst: Instance, obs: a.ObservedInstance) -> bool:
    before = (inst.status, inst.task_state, inst.fault, inst.ready_at, inst.desired_state)
    if obs.status == "DELETED":
        if inst.desired_state == "deleted":
            compute.finish_delete(session, inst)
            return True
        return False
    if inst.desired_state == "deleted":
        return False  # a late report about an instance being torn down
    inst.status = obs.status
    if obs.status == "ACTIVE":
        inst.fault = ""
        inst.launched_at = inst.launched_at or utcnow()
        if not obs.ready:
            inst.ready_at = None  # e.g. rebooting: ready again once the guest says so
        elif inst.ready_at is None:
            inst.ready_at = utcnow()
        if inst.task_state in ("starting", "") or (
            inst.task_state == "rebooting" and obs.reboot_gen >= inst.reboot_gen
        ):
            inst.task_state = ""
    elif obs.status == "SHUTOFF":
        inst.ready_at = None
        if obs.fault and inst.desired_state == "running":
            # the guest died on its own: the hypervisor is the authority, record it as stopped
            inst.desired_state, inst.fault = "stopped", obs.fault
            bump_generation(session)
        if inst.task_state == "stopping" or inst.desired_state == "stopped":
            inst.task_state = ""
    elif obs.status == "ERROR":
        inst.fault, inst.task_state = obs.fault, ""
    return before != (inst.status, inst.task_state, inst.fault, inst.ready_at, inst.desired_state)
