"""What non-admin callers may see of host-side error texts.

Faults come from drivers and tools (QEMU, qemu-img, netlink) and quote host paths such as
/var/lib/nubes/hosts/<host>/instances/<id>/disk.qcow2, which tell a tenant how the host is laid
out. Tenants get the text with paths and secret-looking values replaced; admins get it whole,
and the API log always has the whole text.
"""

from __future__ import annotations

import re

from nubes.control.caller import Caller

HIDDEN_PATH = "<host path>"
# An absolute path: a "/" that does not continue a word, number, URL or CIDR ("10.0.0.0/24",
# "HTTP/1.1", "https://x/y"), followed by path characters.
_PATH = re.compile(r"(?<![\w./-])/(?!/)[^\s'\"`,;:()<>|]+")
_SECRET = re.compile(r"(?i)\b(password|passwd|token|secret|key)=[^\s,;'\"]+")


def text(message: str) -> str:
    """message with host paths and `password=...`-like values hidden."""
    return _PATH.sub(HIDDEN_PATH, _SECRET.sub(r"\1=<hidden>", message))


def for_caller(who: Caller | None, message: str) -> str:
    """The whole message for admins, the redacted one for everyone else."""
    if who is not None and who.is_admin:
        return message
    return text(message)
