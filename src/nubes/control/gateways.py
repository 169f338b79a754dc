"""Where each network's gateway, DHCP and NAT are served: one host per network
(`networks.dhcp_host_id`), moved when that host is down, disabled, or has no port left on the
network while another host has some. Any number of networks with the same addresses share a
host: each gateway lives in a network namespace of its own there (network/gateway.py).

A periodic pass in every API process; the conditional UPDATE makes racing passes (several API
servers on one PostgreSQL) harmless: only one of them moves a given network.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nubes.control import generations
from nubes.control.state import AppState
from nubes.db.models import Host, Instance, Network, Port, utcnow

log = logging.getLogger("nubes.api")


@dataclass
class _View:
    """What placing gateways needs to know, read once per pass."""

    names: dict[str, str]  # host id -> name
    up: set[str]
    usable: set[str]  # up and enabled
    ports: dict[str, Counter[str]]  # network id -> host id -> ports
    served: dict[str, list[Network]]  # host id -> the networks it serves (kept current)

    def load(self, host: str) -> int:
        return len(self.served.get(host, []))

    def move(self, net: Network, old: str | None, new: str) -> None:
        if old in self.served:
            self.served[old] = [n for n in self.served[old] if n.id != net.id]
        self.served.setdefault(new, []).append(net)


def _view(session: Session, down_after: float) -> tuple[_View, list[Network]]:
    cutoff = utcnow() - timedelta(seconds=down_after)
    hosts = session.scalars(select(Host)).all()
    up = {h.id for h in hosts if h.last_heartbeat is not None and h.last_heartbeat >= cutoff}
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
    served: dict[str, list[Network]] = defaultdict(list)
    for n in nets:
        if n.dhcp_host_id:
            served[n.dhcp_host_id].append(n)
    view = _View(
        names={h.id: h.name for h in hosts},
        up=up,
        usable={h.id for h in hosts if h.id in up and h.enabled},
        ports=ports,
        served=served,
    )
    return view, list(nets)


def _choose(view: _View, net: Network) -> str | None:
    """The host that should serve a network, or None to leave it where it is."""
    with_ports = view.ports[net.id]
    current = net.dhcp_host_id
    if not any(h in view.up for h in with_ports):
        return None  # no live instance on the network: nothing to serve
    fits = view.usable
    if current in fits and with_ports[current]:
        return None
    candidates = [h for h in fits if with_ports[h]] or (
        [] if current in fits else sorted(fits)  # one that gets the network just for this
    )
    if not candidates:
        return None  # keep a disabled or down host rather than serve from nowhere
    # the host with the fewest networks to serve, then the most ports of this one
    return min(candidates, key=lambda h: (view.load(h), -with_ports[h], view.names[h]))


def rehome(session: Session, down_after: float) -> list[tuple[str, str | None, str]]:
    """Move the gateways that need it; (network id, old host id, new host id) for each. The
    caller commits."""
    view, nets = _view(session, down_after)
    moved = []
    for net in nets:
        old = net.dhcp_host_id
        new = _choose(view, net)
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
            view.move(net, old, new)
            moved.append((net.id, old, new))
            log.info(
                "network %s: gateway and DHCP move from %s to %s",
                net.name, view.names.get(old or "", "nowhere"), view.names[new],
            )  # fmt: skip
    if moved:  # every host of those networks is told where their gateway is now
        hosts = generations.network_hosts(session, [net_id for net_id, _, _ in moved])
        generations.bump_after_commit(session, hosts | {old for _, old, _ in moved if old})
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
