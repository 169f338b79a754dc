"""Nova's cheap insurance: availability zones (one, `nova`) and absolute limits (what the
project uses; nubes has no compute quotas yet, so the maxima are -1, unlimited)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from nubes.api.deps import SessionDep
from nubes.db.models import Instance, Keypair, SecurityGroup
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
def limits(session: SessionDep, who: OsCaller) -> Any:
    used = session.execute(
        select(func.count(Instance.id), func.sum(Instance.vcpus), func.sum(Instance.ram_mb)).where(
            Instance.project_id == who.project_id, Instance.deleted_at.is_(None)
        )
    ).one()
    keys = session.scalar(select(func.count()).where(Keypair.project_id == who.project_id))
    groups = session.scalar(select(func.count()).where(SecurityGroup.project_id == who.project_id))
    absolute = {
        "maxTotalInstances": -1,
        "maxTotalCores": -1,
        "maxTotalRAMSize": -1,
        "maxTotalKeypairs": -1,
        "maxServerMeta": 128,
        "maxImageMeta": 128,
        "maxPersonality": 5,
        "maxPersonalitySize": 10240,
        "maxServerGroups": -1,
        "maxServerGroupMembers": -1,
        "maxSecurityGroups": -1,
        "maxSecurityGroupRules": -1,
        "maxTotalFloatingIps": -1,
        "totalInstancesUsed": int(used[0] or 0),
        "totalCoresUsed": int(used[1] or 0),
        "totalRAMUsed": int(used[2] or 0),
        "totalKeyPairsUsed": int(keys or 0),
        "totalServerGroupsUsed": 0,
        "totalSecurityGroupsUsed": int(groups or 0),
        "totalFloatingIpsUsed": 0,
    }
    return {"limits": {"rate": [], "absolute": absolute}}
