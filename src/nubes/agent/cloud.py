"""Which cloud a host belongs to: an agent acts only on desired state from that cloud.

The first cloud id the agent sees is remembered in the host's state directory (0600). Desired
state from another cloud (a second API pointed at the same host, a database restored from
elsewhere) is refused whole: nothing is built, stopped or destroyed. Removing the file is how
an operator moves a host to another cloud.
"""

from __future__ import annotations

from dataclasses import asdict

from nubes.agent import records
from nubes.agent.layout import CloudRecord, HostLayout
from nubes.schemas.agent import DesiredState


def accept(layout: HostLayout, desired: DesiredState) -> tuple[CloudRecord | None, str]:
    """The host's record if `desired` is its cloud's, else None and why nothing is done."""
    if not desired.cloud_id:
        return None, "the desired state carries no cloud id: nothing done"
    read = records.read_record(layout.cloud, CloudRecord)
    known = read.values.get("cloud_id", "")
    if read.damage and not known:
        return None, (
            f"host record {layout.cloud.name} {read.damage}: nothing done until it is"
            " repaired or removed"
        )
    if known and known != desired.cloud_id:
        return None, (
            f"desired state from cloud {desired.cloud_id}, but this host belongs to cloud"
            f" {known}: nothing done"
        )
    if known and not read.damage:
        return CloudRecord(**read.values), ""
    # first contact (a gc asked for before it is not this host's to carry out), or a repair
    record = CloudRecord(
        cloud_id=desired.cloud_id, gc_done=read.values.get("gc_done", desired.gc_request)
    )
    save(layout, record)
    return record, ""


def save(layout: HostLayout, record: CloudRecord) -> None:
    records.write_record(layout.cloud, asdict(record))
