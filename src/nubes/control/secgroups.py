"""Security groups in the database: the `default` group of each project, a server's groups, the
rules each port's host enforces (remote groups expanded to their members' addresses), quotas."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.control import generations, lookup, quotas
from nubes.control.caller import Caller
from nubes.db.engine import READ_ONLY
from nubes.db.models import (
    Instance,
    InstanceSecurityGroup,
    Port,
    SecurityGroup,
    SecurityGroupRule,
)
from nubes.errors import InvalidInput
from nubes.schemas import agent as a
from nubes.schemas import resources as s

DEFAULT = "default"


def ensure_default(session: Session, project_id: str) -> SecurityGroup:
    """The project's `default` group, made on first use as Neutron's is: egress to anywhere,
    ingress only from the group's own members."""
    group = _default(session, project_id)
    if group is not None:
        return group
    if session.get_bind().get_execution_options().get(READ_ONLY, False):
        return _made_apart(session, project_id)
    group = SecurityGroup(project_id=project_id, name=DEFAULT, description="default")
    session.add(group)
    session.flush()
    session.add(SecurityGroupRule(group_id=group.id, direction="egress"))
    session.add(SecurityGroupRule(group_id=group.id, direction="ingress", remote_group_id=group.id))
    session.flush()
    return group


def _default(session: Session, project_id: str) -> SecurityGroup | None:
    return session.scalar(
        select(SecurityGroup).where(
            SecurityGroup.project_id == project_id, SecurityGroup.name == DEFAULT
        )
    )


def _made_apart(reads: Session, project_id: str) -> SecurityGroup:
    """A GET's first look at the group: made in a write transaction of its own. The GET's
    SQLite transaction is DEFERRED (db/engine.read_only); one that starts writing after another
    connection committed since its snapshot fails at once with "database is locked" (a 503
    the every-route test met under load)."""
    reads.commit()  # end the snapshot: the read below sees the group
    with Session(reads.get_bind().execution_options(**{READ_ONLY: False})) as writes:
        try:
            ensure_default(writes, project_id)
            writes.commit()
        except IntegrityError:  # a racing request made it first
            writes.rollback()
    group = _default(reads, project_id)
    assert group is not None  # committed by one of the two
    return group


def for_create(session: Session, refs: list[str], who: Caller) -> list[SecurityGroup]:
    if not refs:
        return [ensure_default(session, who.project_id)]
    if DEFAULT in refs:
        ensure_default(session, who.project_id)
    groups: dict[str, SecurityGroup] = {}
    for ref in refs:
        g = lookup.owned(session, SecurityGroup, ref, who, "security_group")
        groups[g.id] = g
    return list(groups.values())


def check_quota(session: Session, settings: Settings, project_id: str, what: str) -> None:
    quotas.check(session, settings, project_id, {what: 1})


def rule_row(
    session: Session, group: SecurityGroup, body: s.SecurityGroupRuleCreate, who: Caller
) -> SecurityGroupRule:
    """Validate a new rule (422 naming the field)."""
    protocol = "" if body.protocol == "any" else body.protocol
    if (body.port_min is not None or body.port_max is not None) and protocol not in ("tcp", "udp"):
        raise InvalidInput("port_min: ports need --protocol tcp or udp", field="port_min")
    if body.port_max is not None and body.port_min is None:
        raise InvalidInput("port_min: a range needs its start", field="port_min")
    if body.port_min is not None and (body.port_max or body.port_min) < body.port_min:
        raise InvalidInput("port_max: below port_min", field="port_max")
    if body.remote_ip and body.remote_group:
        raise InvalidInput("remote_ip: give remote_ip or remote_group, not both", field="remote_ip")
    cidr = ""
    if body.remote_ip:
        try:
            cidr = str(ipaddress.IPv4Network(body.remote_ip.strip(), strict=False))
        except ValueError:
            raise InvalidInput(
                f"remote_ip: {body.remote_ip!r} is not an IPv4 CIDR", field="remote_ip"
            ) from None
    remote = None
    if body.remote_group:
        remote = lookup.owned(session, SecurityGroup, body.remote_group, who, "remote_group")
    return SecurityGroupRule(
        group_id=group.id,
        direction=body.direction,
        protocol=protocol,
        port_min=body.port_min,
        port_max=body.port_max or body.port_min,
        remote_cidr=cidr,
        remote_group_id=remote.id if remote else None,
    )


def rule_wire(session: Session, r: SecurityGroupRule) -> s.SecurityGroupRule:
    remote = session.get(SecurityGroup, r.remote_group_id) if r.remote_group_id else None
    return s.SecurityGroupRule(
        id=r.id,
        direction=r.direction,
        protocol=r.protocol or "any",
        port_min=r.port_min,
        port_max=r.port_max,
        remote_ip=r.remote_cidr or None,
        remote_group=remote.name if remote else None,
    )


def to_wire(session: Session, g: SecurityGroup) -> s.SecurityGroup:
    rules = session.scalars(
        select(SecurityGroupRule)
        .where(SecurityGroupRule.group_id == g.id)
        .order_by(SecurityGroupRule.created_at, SecurityGroupRule.id)
    )
    return s.SecurityGroup(
        id=g.id,
        name=g.name,
        description=g.description,
        rules=[rule_wire(session, r) for r in rules],
        created_at=g.created_at,
    )


def names_of(session: Session, instance_id: str) -> list[str]:
    return sorted(
        session.scalars(
            select(SecurityGroup.name)
            .join(InstanceSecurityGroup, InstanceSecurityGroup.group_id == SecurityGroup.id)
            .where(InstanceSecurityGroup.instance_id == instance_id)
        )
    )


def names_of_many(session: Session, instance_ids: list[str]) -> dict[str, list[str]]:
    """instance id -> its groups' names, sorted (one query for a list's page)."""
    out: dict[str, list[str]] = {}
    if not instance_ids:
        return out
    rows = session.execute(
        select(InstanceSecurityGroup.instance_id, SecurityGroup.name)
        .join(SecurityGroup, InstanceSecurityGroup.group_id == SecurityGroup.id)
        .where(InstanceSecurityGroup.instance_id.in_(instance_ids))
        .order_by(SecurityGroup.name)
    )
    for inst_id, name in rows:
        out.setdefault(inst_id, []).append(name)
    return out


def rules_for(session: Session, instance_ids: list[str]) -> dict[str, list[a.DesiredRule]]:
    """instance id -> the rules of its groups, remote groups as their members' addresses."""
    if not instance_ids:
        return {}
    links = session.execute(
        select(InstanceSecurityGroup.instance_id, InstanceSecurityGroup.group_id).where(
            InstanceSecurityGroup.instance_id.in_(instance_ids)
        )
    ).all()
    group_ids = {g for _, g in links}
    rules = session.scalars(
        select(SecurityGroupRule).where(SecurityGroupRule.group_id.in_(group_ids))
    ).all()
    remote_ids = {r.remote_group_id for r in rules if r.remote_group_id}
    members: dict[str, list[str]] = defaultdict(list)
    if remote_ids:
        for group_id, ip in session.execute(
            select(InstanceSecurityGroup.group_id, Port.ip)
            .join(Instance, Instance.id == InstanceSecurityGroup.instance_id)
            .join(Port, Port.instance_id == Instance.id)
            .where(InstanceSecurityGroup.group_id.in_(remote_ids), Instance.deleted_at.is_(None))
        ):
            members[group_id].append(f"{ip}/32")
    by_group: dict[str, list[a.DesiredRule]] = defaultdict(list)
    for r in sorted(rules, key=lambda r: (r.created_at, r.id)):
        remotes: list[str] | None = None
        if r.remote_cidr:
            remotes = [r.remote_cidr]
        elif r.remote_group_id:
            remotes = sorted(set(members[r.remote_group_id]))
        by_group[r.group_id].append(
            a.DesiredRule(
                direction=r.direction,
                protocol=r.protocol,
                port_min=r.port_min,
                port_max=r.port_max,
                remotes=remotes,
            )
        )
    out: dict[str, list[a.DesiredRule]] = defaultdict(list)
    for instance_id, group_id in links:
        out[instance_id] += by_group[group_id]
    return out


def _member_hosts(session: Session, group_ids: Collection[str]) -> set[str]:
    """The hosts of the live servers in any of these groups."""
    if not group_ids:
        return set()
    return set(
        session.scalars(
            select(Instance.host_id)
            .join(InstanceSecurityGroup, InstanceSecurityGroup.instance_id == Instance.id)
            .where(
                InstanceSecurityGroup.group_id.in_(group_ids),
                Instance.deleted_at.is_(None),
                Instance.host_id.is_not(None),
            )
        )
    )


def bump_rules_of(session: Session, group_id: str) -> None:
    """A group's rules changed: the hosts of its members recompute their ports' rules."""
    generations.bump_after_commit(session, _member_hosts(session, [group_id]))


def bump_members_of(session: Session, group_ids: Collection[str]) -> None:
    """A server joined or left these groups: the hosts of servers whose rules name one of them
    as a remote group see its address come or go. (Its own host is bumped by the caller.)"""
    if not group_ids:
        return
    referring = set(
        session.scalars(
            select(SecurityGroupRule.group_id).where(
                SecurityGroupRule.remote_group_id.in_(group_ids)
            )
        )
    )
    generations.bump_after_commit(session, _member_hosts(session, referring))
