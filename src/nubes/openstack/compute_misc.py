"""Nova's cheap insurance: availability zones (one, `nova`) and absolute limits (the project's
quotas and usage, control/quotas.py; -1 is unlimited, as in Nova)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from nubes.api.deps import SessionDep, StateDep
from nubes.control import quotas
from nubes.db.models import Keypair
from nubes.openstack.compute import router
from nubes.openstack.http import OsCaller

ZONE = {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}


@router.get("/v2.1/os-availability-zone")
def zones(_: OsCaller) -> Any:
    return {"availabilityZoneInfo": [ZONE]}


@router.get("/v2.1/os-availability-zone/detail")
def zones_detail(_: OsCaller) -> Any:
    return {"availabilityZoneInfo": [ZONE]}


@router.get("/v2.1/limits")
def limits(session: SessionDep, who: OsCaller, state: StateDep) -> Any:
    limit = {r: v for r, (v, _) in quotas.limits(session, state.settings, who.project_id).items()}
    used = quotas.usage(session, who.project_id)
    keys = session.scalar(select(func.count()).where(Keypair.project_id == who.project_id))
    absolute = {
        "maxTotalInstances": limit["servers"],
        "maxTotalCores": limit["vcpus"],
        "maxTotalRAMSize": limit["ram_mb"],
        "maxTotalKeypairs": -1,
        "maxServerMeta": 128,
        "maxImageMeta": 128,
        "maxPersonality": 5,
        "maxPersonalitySize": 10240,
        "maxServerGroups": -1,
        "maxServerGroupMembers": -1,
        "maxSecurityGroups": limit["security_groups"],
        "maxSecurityGroupRules": limit["security_group_rules"],
        "maxTotalFloatingIps": limit["floating_ips"],
        "totalInstancesUsed": used["servers"],
        "totalCoresUsed": used["vcpus"],
        "totalRAMUsed": used["ram_mb"],
        "totalKeyPairsUsed": int(keys or 0),
        "totalServerGroupsUsed": 0,
        "totalSecurityGroupsUsed": used["security_groups"],
        "totalFloatingIpsUsed": used["floating_ips"],
    }
    return {"limits": {"rate": [], "absolute": absolute}}
