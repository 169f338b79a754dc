"""Security groups through the API: the default group, rules, remote groups expanded to their
members' addresses, and what each port's host is told to enforce."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from nubes.client import ApiError
from nubes.control import secgroups
from nubes.db.models import Host, SecurityGroup, SecurityGroupRule
from nubes.network.fake import FakeNetworkDriver
from nubes.network.secgroups import Rule
from nubes.schemas import resources as s
from tests.cloud import Cloud


def create(cloud: Cloud, name: str, **kw: object) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net", **kw)  # type: ignore[arg-type]
    return cloud.client.create_server(body)


def rules_on_host(cloud: Cloud, server: s.Server) -> tuple[Rule, ...]:
    driver = cloud.agents[0][0].network
    assert isinstance(driver, FakeNetworkDriver)
    ip = server.nics[0].ip
    specs = [p.spec for p in driver.state.ports.values() if p.spec.ip == ip]
    assert specs, f"no port {ip} on the host"
    return specs[0].rules


def test_default_group_allows_egress_and_ingress_from_its_members(ready: Cloud) -> None:
    a = create(ready, "a")
    assert a.security_groups == ["default"]
    ready.wait_status("a", "ACTIVE")
    b = create(ready, "b")
    ready.wait_status("b", "ACTIVE")
    members = sorted(f"{x.nics[0].ip}/32" for x in (a, b))

    def current() -> tuple[Rule, ...]:
        return rules_on_host(ready, ready.client.server("a"))

    ready.wait(
        lambda: current() == (Rule("egress"), Rule("ingress", remotes=tuple(members))),
        what="a's rules to name both members",
    )
    default = ready.client.security_group("default")
    assert [(r.direction, r.protocol, r.remote_group) for r in default.rules] == [
        ("egress", "any", None),
        ("ingress", "any", "default"),
    ]
    with pytest.raises(ApiError) as err:
        ready.client.delete_security_group("default")
    assert err.value.status == 409


def test_rules_reach_running_ports_and_groups_follow_servers(ready: Cloud) -> None:
    web = ready.client.create_security_group(s.SecurityGroupCreate(name="web"))
    assert [(r.direction, r.protocol) for r in web.rules] == [("egress", "any")]
    server = create(ready, "w", security_groups=["web"])
    ready.wait_status("w", "ACTIVE")
    ssh = ready.client.create_security_group_rule(
        "web",
        s.SecurityGroupRuleCreate(
            direction="ingress", protocol="tcp", port_min=22, remote_ip="10.9.0.0/16"
        ),
    )
    want = (Rule("egress"), Rule("ingress", "tcp", 22, 22, ("10.9.0.0/16",)))
    ready.wait(lambda: rules_on_host(ready, server) == want, what="the new rule on the host")
    ready.client.delete_security_group_rule(ssh.id)
    ready.wait(lambda: rules_on_host(ready, server) == (Rule("egress"),), what="rule gone")
    # into default as well, and out of web
    ready.client.add_server_security_group("w", "default")
    ready.client.remove_server_security_group("w", "web")
    assert ready.client.server("w").security_groups == ["default"]
    with pytest.raises(ApiError) as err:
        ready.client.delete_security_group("nope")
    assert err.value.status == 404
    ready.client.delete_security_group("web")  # unused now


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (dict(direction="ingress", protocol="icmp", port_min=22), "port_min"),
        (dict(direction="ingress", protocol="tcp", port_min=80, port_max=22), "port_max"),
        (dict(direction="ingress", remote_ip="10.0.0.300/8"), "remote_ip"),
        (dict(direction="ingress", remote_ip="10.0.0.0/8", remote_group="default"), "remote_ip"),
        (dict(direction="ingress", remote_group="nope"), "remote_group"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(
    ready: Cloud, rule: dict[str, object], field: str
) -> None:
    with pytest.raises(ApiError) as err:
        ready.client.create_security_group_rule("default", s.SecurityGroupRuleCreate(**rule))  # type: ignore[arg-type]
    assert err.value.status in (404, 422) and err.value.field == field


def test_quotas_on_groups_and_rules(tmp_path: object) -> None:
    from pathlib import Path

    from tests.functional.conftest import upload  # noqa: F401

    cloud = Cloud(
        Path(str(tmp_path)), hosts=0, quota_security_groups=2, quota_security_group_rules=3
    )
    try:
        ready_groups = cloud.client.security_groups()  # makes `default` (2 rules)
        assert [g.name for g in ready_groups] == ["default"]
        cloud.client.create_security_group(s.SecurityGroupCreate(name="one"))  # 3 rules now
        with pytest.raises(ApiError) as err:
            cloud.client.create_security_group(s.SecurityGroupCreate(name="two"))
        assert err.value.status == 409 and "quota" in err.value.detail
        with pytest.raises(ApiError) as err:
            cloud.client.create_security_group_rule(
                "one", s.SecurityGroupRuleCreate(direction="ingress", protocol="icmp")
            )
        assert err.value.status == 409 and err.value.field == "security_group_rules"
    finally:
        cloud.close()


def test_a_get_that_makes_the_default_group_survives_a_commit_since_its_snapshot(
    cloud: Cloud,
) -> None:
    """A GET reads in a DEFERRED SQLite transaction; the first look at a project's groups makes
    its `default` one. Written in that transaction, it failed at once ("database is locked",
    a 503) whenever another connection had committed since the GET's first read."""
    state = cloud.app.state.nubes
    project = cloud.client.create_project(s.ProjectCreate(name="late")).id
    with state.reads() as reads:
        reads.scalar(select(SecurityGroup.id).limit(1))  # the snapshot begins here
        with state.sessions() as other:  # another request commits meanwhile
            other.execute(update(Host).values(generation=Host.generation + 1))
            other.commit()
        group = secgroups.ensure_default(reads, project)
        reads.commit()  # as the routes do
        assert group.name == "default" and group.project_id == project
    with state.reads() as again:  # made once, with its two rules
        rows = again.scalars(select(SecurityGroup).where(SecurityGroup.project_id == project))
        (made,) = rows.all()
        rules = again.scalars(
            select(SecurityGroupRule).where(SecurityGroupRule.group_id == made.id)
        )
        assert {r.direction for r in rules} == {"egress", "ingress"}
