"""The agents' side of the API: register, heartbeat, long-poll desired state, report."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from nubes import tls
from nubes.api.agent_lane import in_agent_lane
from nubes.api.deps import (
    AgentDep,
    Caller,
    SessionDep,
    StateDep,
    agent,
    any_caller,
    require_own_host,
)
from nubes.control import compute, generations, joining, lifecycle, migrations, operations, volumes
from nubes.control import heartbeat as heartbeats
from nubes.control.desired import desired_state
from nubes.control.state import AppState
from nubes.db.models import Host, Instance, utcnow
from nubes.errors import Forbidden, InvalidInput, NotFound
from nubes.schemas import agent as a

router = APIRouter(prefix="/v1/agent", tags=["agent"])

# Each server change wakes its host and its network's gateway host; a burst of creates woke
# the gateway host for each, and their fetches shared the API with the next creates (most of
# their tail, bench/control_plane.py). Small beside a boot; the lab's sync period is 1 s. A
# change to the host's own servers goes at once: its user waits for it (a create right after
# another change waited up to the whole gap: most of a container's create -> ready).
ANSWER_GAP = 0.5
join_router = APIRouter(prefix="/v1/join", tags=["agent"])


@join_router.get("/ca", response_class=PlainTextResponse)
def ca_certificate(state: StateDep) -> str:
    """The cloud's CA (public): a joining machine checks it against its token's fingerprint."""
    return tls.ensure_ca(state.settings.tls_dir).read_text()


@join_router.post("", status_code=201)
def join(body: a.JoinRequest, session: SessionDep, state: StateDep) -> a.Joined:
    """A new machine trades its one-time join token for its own host credential."""
    host, credential = joining.join(session, body.token, body.name)
    return a.Joined(host_id=host.id, host_name=host.name, credential=credential)


def _host(session: SessionDep, host_id: str, who: Caller) -> Host:
    require_own_host(who, host_id)
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound(f"host {host_id} is not registered", field="host")
    return host


@router.post("/hosts")
def register(
    body: a.HostRegister, session: SessionDep, who: AgentDep, state: StateDep
) -> dict[str, str]:
    if who.role == "host":
        host = _host(session, who.host_id, who)
        if host.name != body.name:
            raise Forbidden(
                f"this credential is host {host.name!r}'s, not {body.name!r}'s", field="name"
            )
    else:  # an admin registers a host by name (fake-driver tests; nubes up uses a join)
        found = session.scalar(select(Host).where(Host.name == body.name))
        if found is None:
            found = Host(name=body.name, joined_via="admin")
            session.add(found)
        host = found
    moved = host.address != body.address
    for key, value in body.model_dump().items():
        setattr(host, key, value)
    host.last_heartbeat = utcnow()
    session.flush()  # a new host's row, for the bumps
    generations.bump(session, [host.id])
    if moved:  # the other hosts of its networks reach it at the new address
        generations.bump_after_commit(session, generations.neighbours(session, host.id))
    session.commit()  # wakes its long-poll and its neighbours' (control/generations.py)
    return {"id": host.id}


@router.post("/hosts/{host_id}/heartbeat", status_code=204)
async def heartbeat(host_id: str, request: Request, state: StateDep) -> None:
    """A host's own heartbeat is answered before routing (api/heartbeat_path.py); what reaches
    this route is any other caller, for the precise 401/403/404 or an admin's heartbeat."""
    who = await run_in_threadpool(any_caller, request, state)
    await agent(who)
    require_own_host(who, host_id)
    await run_in_threadpool(heartbeats.beat, state.engine, host_id)


@router.post("/hosts/{host_id}/credential")
def rotate_credential(host_id: str, session: SessionDep, who: AgentDep) -> a.Credential:
    """A new credential for this host; the one used here stops working at once."""
    return a.Credential(credential=joining.rotate(session, _host(session, host_id, who)))


@router.post("/hosts/{host_id}/certificate")
def host_certificate(
    host_id: str, body: a.CertificateRequest, session: SessionDep, who: AgentDep, state: StateDep
) -> a.Certificate:
    """The host's serving certificate for the console channel: the CA signs the host's key for
    the host's id alone, whatever names the request asks for."""
    host = _host(session, host_id, who)
    try:
        pem = tls.sign_host_csr(state.settings.tls_dir, body.csr.encode(), host.id)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="csr") from exc
    return a.Certificate(certificate=pem.decode())


@router.get(
    "/hosts/{host_id}/desired",
    response_model=a.DesiredState,
    responses={304: {"description": "no change in `wait` seconds"}},
)
async def desired(
    host_id: str,
    who: AgentDep,
    state: StateDep,
    since: int = Query(default=-1),
    wait: float = Query(default=0.0, ge=0.0, le=60.0),
) -> a.DesiredState | Response:
    """Long-poll: answers when the host's generation differs from `since`; after `wait` seconds
    with no change, 304 Not Modified and no body (the agent keeps what it has: a thousand idle
    hosts' polls then cost no desired state each). The wait holds no thread and no database
    connection (control/watch.py). A host is sent a changed state at most every `ANSWER_GAP`
    seconds (the first change after a quiet while at once, a burst's later ones together),
    unless the change is to one of its own servers: a user waits for that one."""
    require_own_host(who, host_id)
    if wait > 0 and await in_agent_lane(_generation, state, host_id) == since:
        if not await state.notifier.wait(host_id, since, wait):
            return Response(status_code=304)
    if wait > 0 and since >= 0:  # not an agent's first fetch or its resync: those at once
        last = state.answered.get(host_id, 0.0)
        # a change to one of its own servers ends the gap (before or during it)
        await state.notifier.gap(host_id, last + ANSWER_GAP - time.monotonic())
    state.notifier.taken(host_id)  # before the read: a change after it is marked again
    answer = await in_agent_lane(_desired, state, host_id)
    state.answered[host_id] = time.monotonic()
    return answer


def _generation(state: AppState, host_id: str) -> int:
    """An unknown host is told at once (NotFound), not after the wait."""
    with state.reads() as session:
        generation = session.scalar(select(Host.generation).where(Host.id == host_id))
    if generation is None:
        raise NotFound(f"host {host_id} is not registered", field="host")
    return generation


def _desired(state: AppState, host_id: str) -> a.DesiredState:
    with state.reads() as session:
        host = session.get(Host, host_id)
        if host is None:
            raise NotFound(f"host {host_id} is not registered", field="host")
        return desired_state(session, host, host.generation)


@router.post("/hosts/{host_id}/report", status_code=204)
async def report(
    host_id: str, body: a.Report, session: SessionDep, who: AgentDep, state: StateDep
) -> None:
    await in_agent_lane(_report, host_id, body, session, who, state)


def _report(host_id: str, body: a.Report, session: Session, who: Caller, state: AppState) -> None:
    # Most reports (a resync's, a host's echo) change nothing: tell so in a read, which takes
    # no write lock, and write only when something changes (on SQLite the writers queue)
    with state.reads() as look, look.no_autoflush:
        host = _host(look, host_id, who)
        state.leftovers[host.name] = body.leftovers
        if not _fold(look, host, body, dry=True):
            return
        look.rollback()  # what the dry pass changed in its objects, forgotten
    # the write ends here, in the lane: left to the session's teardown (a threadpool task that
    # may wait for a thread), SQLite's write lock would outlive the request
    if _fold(session, _host(session, host_id, who), body, dry=False):
        session.commit()
    else:
        session.rollback()


def _fold(session: Session, host: Host, body: a.Report, dry: bool) -> bool:
    """Fold a report into the database; True if anything changed. `dry`: only tell, writing
    nothing (a deleted instance's end, which writes at once, is only said to be a change)."""
    changed = shown_changed = False
    for obs in body.instances:
        inst = session.get(Instance, obs.id)
        if inst is None or inst.host_id != host.id or inst.deleted_at is not None:
            continue
        if dry and obs.status == "DELETED" and inst.desired_state == "deleted":
            return True
        shown = (inst.status, inst.desired_state)  # what the host's desired state says
        changed |= operations.observe(session, inst, obs, host.name)
        changed |= apply_observation(session, inst, obs)
        shown_changed |= inst.deleted_at is None and shown != (inst.status, inst.desired_state)
    if volumes.fold(session, host, body.volumes, dry):
        changed = shown_changed = True
    if shown_changed and not dry:  # its agent acts on these: it is told (an extra fetch)
        generations.bump(session, [host.id], echo=True)
    if body.migrations:
        changed |= migrations.fold(session, host, body.migrations, dry)
    return changed


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
        inst.fault = obs.fault  # "", or what the agent repaired (a damaged record, say)
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
        if obs.fault and inst.eject_after_install and not inst.cdrom_ejected:
            # the installer rebooted or powered off (-no-reboot): eject, and the host starts
            # the server again from its disk (desired_state stays running)
            inst.cdrom_ejected, inst.fault = True, ""
        elif obs.fault and inst.desired_state == "running":
            # the guest died on its own: the hypervisor is the authority, record it as stopped
            inst.desired_state, inst.fault = "stopped", obs.fault
        elif obs.fault:
            inst.fault = obs.fault
        if inst.task_state == "stopping" or inst.desired_state == "stopped":
            inst.task_state = ""
    elif obs.status == "ERROR":
        inst.fault, inst.task_state = obs.fault, ""
    lifecycle.observed(session, inst, obs)  # a rebuild or resize carried out
    return before != (inst.status, inst.task_state, inst.fault, inst.ready_at, inst.desired_state)
