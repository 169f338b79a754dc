"""Fault injection for the crash-safety tests. TEST ONLY: never set these settings in production.

A crash point ends the process at once with `os._exit(137)`, exactly what `kill -9` leaves behind:
no `finally`, no atexit, no flushed buffers, open transactions rolled back by the database.

- Agent (`NUBES_FAULT_CRASH_AFTER=disk|seed|ports|qemu`): right after that step of a build;
  `incoming-ready` (a migration's target, prepared and not yet reported), `mirror-ready` and
  `switch-over-point` (its source: the disk in step; paused before the switch-over).
- API (`NUBES_FAULT_API_CRASH=create-before-commit|create-after-commit|delete-after-commit`):
  inside the create transaction once its rows are written, right after it commits, or right
  after a delete request commits. Hooked on the session, so the request code has no test paths.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("nubes.faults")
CRASH_STATUS = 137  # what a shell reports for a process killed by SIGKILL
AGENT_POINTS = ("disk", "seed", "ports", "qemu")
MIGRATION_POINTS = ("incoming-ready", "mirror-ready", "switch-over-point")
API_POINTS = ("create-before-commit", "create-after-commit", "delete-after-commit")


def crash_if(configured: str, point: str) -> None:
    """Exit now, as kill -9 would, if `point` is one of the comma-separated configured ones."""
    if configured and point in configured.split(","):
        log.critical("fault injection: crashing at %s", point)
        sys.stderr.flush()
        os._exit(CRASH_STATUS)


def install_api_hooks(sessions: sessionmaker[Session], configured: str) -> None:
    """Crash the API at the configured points of server creates and deletes."""
    unknown = set(configured.split(",")) - set(API_POINTS)
    if unknown:
        raise ValueError(f"unknown API fault points {sorted(unknown)}; known: {API_POINTS}")
    from nubes.db.models import Instance, Operation

    def creating(o: object) -> bool:
        # a create's instance row is a Core INSERT (compute.schedule), not an ORM object:
        # its "create" operation, flushed with the port, marks the transaction instead
        return isinstance(o, Instance) or (isinstance(o, Operation) and o.kind == "create")

    @event.listens_for(sessions, "after_flush")
    def _flushed(session: Session, _ctx: Any) -> None:
        if any(creating(o) for o in session.new):
            crash_if(configured, "create-before-commit")  # rows written, transaction open
            session.info["fault_point"] = "create-after-commit"
        for obj in session.dirty:
            if isinstance(obj, Instance) and obj.desired_state == "deleted":
                session.info["fault_point"] = "delete-after-commit"

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        point = session.info.pop("fault_point", None)
        if point:
            crash_if(configured, point)

    @event.listens_for(sessions, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop("fault_point", None)
