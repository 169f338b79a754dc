"""Where each network's gateway, DHCP and NAT are served: one host per network
(`networks.dhcp_host_id`), moved when that host is down, disabled, or has no port left on the
network while another host has some.

A periodic pass in every API process; the conditional UPDATE makes racing passes (several API
servers on one PostgreSQL) harmless: only one of them moves a given network.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nubes.api.state import AppState, bump_generation
from nubes.db.models import Host, Instance, Network, Port, utcnow

log = logging.getLogger("nubes.api")


def _choose(
    current: str | None, with_ports: Counter[str], up: set[str], usable: set[str],
    served: Counter[str], names: dict[str, str],
) -> str | None:  # fmt: skip
    """The host that should serve a network, or None to leave it where it is."""
    if not any(h in up for h in with_ports):
        return None  # no live instance on the network: nothing to serve
    if current in usable and with_ports[current]:
        return None
    candidates = [h for h in usable if with_ports[h]] or (
        [] if current in usable else sorted(usable)
    )
    if not candidates:
        return None  # keep a disabled or down host rather than serve from nowhere
    # the host with the fewest networks to serve, then the most ports of this one
    return min(candidates, key=lambda h: (served[h], -with_ports[h], names[h]))


def rehome(session: Session, down_after: float) -> list[tuple[str, str | None, str]]:
    """Move the gateways that need it; (network id, old host id, new host id) for each. The
    caller commits."""
    cutoff = utcnow() - timedelta(seconds=down_after)
    hosts = session.scalars(select(Host)).all()
    names = {h.id: h.name for h in hosts}
    up = {h.id for h in hosts if h.last_heartbeat is not None and h.last_heartbeat >= cutoff}
    usable = {h.id for h in hosts if h.id in up and h.enabled}
    ports: dict[str, Counter[str]] = defaultdict(Counter)
    rows = session.execute(
        select(Port.network_id, Instance.host_id)
        .join(Instance, Instance.id == Port.instance_id)
        .where(Instance.deleted_at.is_(None), Instance.host_id.is_not(None))
    ).all()
    for net_id, host_id in rows:
        if host_id is not None:
            ports[net_id][host_id] += 1
    nets = session.scalars(select(Network).order_by(Network.created_at)).all()
    served = Counter(n.dhcp_host_id for n in nets if n.dhcp_host_id)
    moved = []
    for net in nets:
        old = net.dhcp_host_id
        new = _choose(old, ports[net.id], up, usable, served, names)
        if new is None or new == old:
            continue
        same = Network.dhcp_host_id.is_(None) if old is None else Network.dhcp_host_id == old
        result = session.execute(
            update(Network)
            .where(Network.id == net.id, same)
            .values(dhcp_host_id=new)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            served[new] += 1
            if old:
                served[old] -= 1
            moved.append((net.id, old, new))
            log.info(
                "network %s: gateway and DHCP move from %s to %s",
                net.name, names.get(old or "", "nowhere"), names[new],
            )  # fmt: skip
    if moved:
        bump_generation(session)
    return moved


def check_once(state: AppState) -> bool:
    with state.sessions() as session:
        moved = rehome(session, state.settings.host_down_after)
        session.commit()
    if moved:
        state.notifier.notify()
    return bool(moved)


def keeper_loop(state: AppState, stop: threading.Event) -> None:
    interval = max(0.2, state.settings.heartbeat_interval)
    while not stop.wait(interval):
        if not state.settings.state_dir.exists():
            return  # the cloud is gone (a test's, say)
        try:
            check_once(state)
        except Exception:
            log.exception("checking where gateways are served failed")


def start_keeper(state: AppState) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=keeper_loop, args=(state, stop), daemon=True).start()
    return stop
