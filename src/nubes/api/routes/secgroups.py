"""Security groups and their rules (Neutron's semantics), and a server's groups."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nubes.api.deps import CallerDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.control import generations, lookup, secgroups
from nubes.db.models import Instance, InstanceSecurityGroup, SecurityGroup, SecurityGroupRule
from nubes.errors import Conflict, NotFound
from nubes.schemas import resources as s

router = APIRouter(tags=["security groups"])


@router.get("/v1/security-groups")
def list_groups(session: SessionDep, who: CallerDep, page: PageDep) -> list[s.SecurityGroup]:
    secgroups.ensure_default(session, who.project_id)
    session.commit()
    query = select(SecurityGroup).where(SecurityGroup.project_id == who.project_id)
    rows = paginate(session, query, (SecurityGroup.created_at, SecurityGroup.id), page)
    return [secgroups.to_wire(session, g) for g in rows]


@router.get("/v1/security-groups/{ref}")
def show_group(ref: str, session: SessionDep, who: CallerDep) -> s.SecurityGroup:
    if ref == secgroups.DEFAULT:
        secgroups.ensure_default(session, who.project_id)
        session.commit()
    return secgroups.to_wire(session, lookup.owned(session, SecurityGroup, ref, who, "group"))


@router.post("/v1/security-groups", status_code=201)
def create_group(
    body: s.SecurityGroupCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> s.SecurityGroup:
    secgroups.ensure_default(session, who.project_id)
    taken = select(SecurityGroup.id).where(
        SecurityGroup.project_id == who.project_id, SecurityGroup.name == body.name
    )
    if session.scalar(taken):
        raise Conflict(f"security group {body.name!r} already exists", field="name")
    secgroups.check_quota(session, state.settings, who.project_id, "security_groups")
    row = SecurityGroup(project_id=who.project_id, name=body.name, description=body.description)
    session.add(row)
    try:
        session.flush()
        # as in Neutron: a new group lets its members start anything, and lets nothing in
        session.add(SecurityGroupRule(group_id=row.id, direction="egress"))
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"security group {body.name!r} already exists", field="name") from None
    return secgroups.to_wire(session, row)


@router.delete("/v1/security-groups/{ref}", status_code=204)
def delete_group(ref: str, session: SessionDep, who: CallerDep) -> None:
    row = lookup.owned(session, SecurityGroup, ref, who, "group")
    if row.name == secgroups.DEFAULT:
        raise Conflict("the default security group cannot be deleted", field="group")
    users = session.scalars(
        select(Instance.name)
        .join(InstanceSecurityGroup, InstanceSecurityGroup.instance_id == Instance.id)
        .where(InstanceSecurityGroup.group_id == row.id, Instance.deleted_at.is_(None))
    ).all()
    if users:
        raise Conflict(f"security group {row.name!r} is used by {', '.join(sorted(users))}")
    referring = session.scalar(
        select(SecurityGroup.name)
        .join(SecurityGroupRule, SecurityGroupRule.group_id == SecurityGroup.id)
        .where(SecurityGroupRule.remote_group_id == row.id, SecurityGroup.id != row.id)
    )
    if referring:
        raise Conflict(f"a rule of security group {referring!r} names {row.name!r}")
    for rule in session.scalars(
        select(SecurityGroupRule).where(SecurityGroupRule.group_id == row.id)
    ):
        session.delete(rule)
    for link in session.scalars(
        select(InstanceSecurityGroup).where(InstanceSecurityGroup.group_id == row.id)
    ):
        session.delete(link)  # of deleted servers
    session.flush()
    session.delete(row)
    session.commit()


@router.post("/v1/security-groups/{ref}/rules", status_code=201)
def create_rule(
    ref: str,
    body: s.SecurityGroupRuleCreate,
    session: SessionDep,
    who: CallerDep,
    state: StateDep,
) -> s.SecurityGroupRule:
    if ref == secgroups.DEFAULT:
        secgroups.ensure_default(session, who.project_id)
    group = lookup.owned(session, SecurityGroup, ref, who, "group")
    secgroups.check_quota(session, state.settings, who.project_id, "security_group_rules")
    row = secgroups.rule_row(session, group, body, who)
    session.add(row)
    session.flush()
    secgroups.bump_rules_of(session, group.id)
    session.commit()
    state.notifier.notify()
    return secgroups.rule_wire(session, row)


@router.delete("/v1/security-group-rules/{rule_id}", status_code=204)
def delete_rule(rule_id: str, session: SessionDep, who: CallerDep, state: StateDep) -> None:
    row = session.get(SecurityGroupRule, rule_id)
    group = session.get(SecurityGroup, row.group_id) if row else None
    if row is None or group is None or group.project_id != who.project_id:
        raise NotFound(f"security group rule {rule_id!r} not found", field="rule")
    session.delete(row)
    secgroups.bump_rules_of(session, group.id)
    session.commit()
    state.notifier.notify()


@router.post("/v1/servers/{ref}/security-groups", status_code=204)
def add_to_server(
    ref: str, body: s.ServerSecurityGroup, session: SessionDep, who: CallerDep, state: StateDep
) -> None:
    inst = lookup.owned(session, Instance, ref, who, "server")
    if body.group == secgroups.DEFAULT:
        secgroups.ensure_default(session, who.project_id)
    group = lookup.owned(session, SecurityGroup, body.group, who, "group")
    if session.get(InstanceSecurityGroup, (inst.id, group.id)) is None:
        session.add(InstanceSecurityGroup(instance_id=inst.id, group_id=group.id))
        session.flush()
        secgroups.bump_members_of(session, [group.id])
        generations.bump_after_commit(session, [inst.host_id])
    session.commit()
    state.notifier.notify()


@router.delete("/v1/servers/{ref}/security-groups/{group_ref}", status_code=204)
def remove_from_server(
    ref: str, group_ref: str, session: SessionDep, who: CallerDep, state: StateDep
) -> None:
    inst = lookup.owned(session, Instance, ref, who, "server")
    group = lookup.owned(session, SecurityGroup, group_ref, who, "group")
    link = session.get(InstanceSecurityGroup, (inst.id, group.id))
    if link is None:
        raise NotFound(
            f"server {inst.name!r} is not in security group {group.name!r}", field="group"
        )
    session.delete(link)
    session.flush()
    secgroups.bump_members_of(session, [group.id])
    generations.bump_after_commit(session, [inst.host_id])
    session.commit()
    state.notifier.notify()
