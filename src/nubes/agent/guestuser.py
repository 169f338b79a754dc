"""The unprivileged user guests' QEMU runs as, and the file modes that let it work.

QEMU starts as root (it opens taps, disks and sockets), then `-runas` drops to this user and
`-sandbox on` filters its system calls. Anything QEMU may open again after the drop (a reopen of
a disk, a migration) must be usable by that user alone: the overlay is its own, the seed and
the cached image are readable by its group only, and nothing it can write is shared.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from nubes.conf import Settings

log = logging.getLogger("nubes.agent")


@dataclass(frozen=True)
class GuestUser:
    name: str = ""  # "" = guests run as the agent's own user
    uid: int | None = None
    gid: int | None = None

    def own(self, path: Path, mode: int) -> None:
        """The guest user owns path (a disk QEMU writes)."""
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)
        os.chmod(path, mode)

    def share(self, path: Path, mode: int) -> None:
        """root owns path; the guest user's group may read (and, for directories, enter) it."""
        if self.gid is not None:
            os.chown(path, 0, self.gid)
            os.chmod(path, mode)


def resolve(settings: Settings) -> GuestUser:
    """settings.qemu_user if it can be used. The default user may be missing (a warning: guests
    then run as root); a user set explicitly must exist. Raises ValueError."""
    name = settings.qemu_user
    if not name:
        return GuestUser()
    explicit = "qemu_user" in settings.model_fields_set
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if explicit:
            raise ValueError(f"qemu_user {name!r} does not exist on this host") from None
        log.warning("user %s does not exist (`make deps` creates it): guests run as root", name)
        return GuestUser()
    if os.geteuid() != 0:
        # -runas needs root; an agent that is not root runs guests as itself anyway
        if explicit:
            log.warning("the agent is not root: guests run as uid %d, not %s", os.geteuid(), name)
        return GuestUser()
    return GuestUser(name, entry.pw_uid, entry.pw_gid)
