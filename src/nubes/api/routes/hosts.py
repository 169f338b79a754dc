from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from nubes import tls
from nubes.api.deps import AdminDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.api.routes.servers import host_up
from nubes.control import evacuation, joining, lookup
from nubes.db.models import Host, Instance
from nubes.schemas import agent as a
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


def live_counts(session: SessionDep) -> dict[str, int]:
    """Live instances per host id, in one query."""
    rows = session.execute(
        select(Instance.host_id, func.count(Instance.id))
        .where(Instance.deleted_at.is_(None), Instance.host_id.is_not(None))
        .group_by(Instance.host_id)
    ).all()
    return {str(host_id): int(n) for host_id, n in rows}


def to_wire(session: SessionDep, h: Host, down_after: float, count: int | None = None) -> s.Host:
    if count is None:
        live = select(func.count(Instance.id)).where(
            Instance.host_id == h.id, Instance.deleted_at.is_(None)
        )
        count = session.scalar(live) or 0
    return s.Host(
        id=h.id,
        name=h.name,
        state="up" if host_up(h, down_after) else "down",
        enabled=h.enabled,
        address=h.address,
        accel=h.accel,
        accel_note=h.accel_note,
        vcpus=h.vcpus,
        ram_mb=h.ram_mb,
        disk_gb=h.disk_gb,
        used_vcpus=h.used_vcpus,
        used_ram_mb=h.used_ram_mb,
        used_disk_gb=h.used_disk_gb,
        instances=count,
        last_heartbeat=h.last_heartbeat,
        joined_via=h.joined_via,
        agent_version=h.agent_version,
        network_driver=h.network_driver,
        overlays=h.overlays,
        fenced=h.fenced_at is not None,
        runtimes=h.runtimes,
    )


@router.get("")
def list_hosts(session: SessionDep, _: AdminDep, state: StateDep, page: PageDep) -> list[s.Host]:
    """Hosts are the cloud's machinery (underlay addresses, capacity): admins only, as Nova's
    os-hypervisors. A member sees the host name of their own servers, nothing more."""
    rows = paginate(session, select(Host), (Host.created_at, Host.id), page)
    counts = live_counts(session)
    return [to_wire(session, h, state.settings.host_down_after, counts.get(h.id, 0)) for h in rows]


@router.post("/tokens", status_code=201)
def create_join_token(
    body: a.JoinTokenCreate, session: SessionDep, _: AdminDep, state: StateDep
) -> a.JoinTokenCreated:
    """A one-time token for a new machine, and the command to run there."""
    fingerprint = tls.fingerprint(tls.ensure_ca(state.settings.tls_dir).read_bytes())
    token, row = joining.make_join_token(session, body.expires_in, fingerprint)
    url = f"https://{public_address(state)}:{state.settings.api_port}"
    return a.JoinTokenCreated(
        token=token,
        expires_at=row.expires_at,
        ca_sha256=fingerprint,
        command=f"nubes host join {url} --token {token}",
    )


def public_address(state: StateDep) -> str:
    """The first address the HTTPS listener has that another machine could reach."""
    addresses = state.settings.listen_addresses
    outside = [x for x in addresses if not x.startswith("127.") and x not in ("::1", "localhost")]
    return (outside or addresses)[0]


@router.delete("/{ref}", status_code=204)
def remove_host(
    ref: str,
    session: SessionDep,
    _: AdminDep,
    state: StateDep,
    force: bool = Query(default=False, description="also when it has servers (they go to ERROR)"),
) -> None:
    joining.remove(session, lookup.host(session, ref), force)
    state.notifier.notify()


@router.post("/{ref}/evacuate")
def evacuate_host(ref: str, session: SessionDep, _: AdminDep, state: StateDep) -> s.Evacuation:
    """Fence a host that is down (409 if it is up) and rebuild its servers on other hosts
    from their images: same ids, ports and addresses; their disks' data is lost, and so are the
    host's volumes (error, detached)."""
    host = lookup.host(session, ref)
    done = evacuation.evacuate(session, host, state.settings)
    state.notifier.notify()
    return s.Evacuation(
        host=host.name,
        fenced=True,
        moved=done.moved,
        failed=done.failed,
        volumes_lost=done.volumes_lost,
    )


@router.get("/{ref}")
def show_host(ref: str, session: SessionDep, _: AdminDep, state: StateDep) -> s.Host:
    return to_wire(session, lookup.host(session, ref), state.settings.host_down_after)


def _set_enabled(ref: str, enabled: bool, session: SessionDep, state: StateDep) -> s.Host:
    h = lookup.host(session, ref)
    h.enabled = enabled
    session.commit()  # in no desired state: the scheduler and the gateway keeper read it
    return to_wire(session, h, state.settings.host_down_after)


@router.post("/{ref}/disable")
def disable_host(ref: str, session: SessionDep, _: AdminDep, state: StateDep) -> s.Host:
    return _set_enabled(ref, False, session, state)


@router.post("/{ref}/enable")
def enable_host(ref: str, session: SessionDep, _: AdminDep, state: StateDep) -> s.Host:
    return _set_enabled(ref, True, session, state)
