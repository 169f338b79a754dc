"""One exception tree. Each error carries a message for the user and an HTTP status."""

from __future__ import annotations


class NubesError(Exception):
    status = 500
    title = "Internal error"
    type = "about:blank"  # the problem's type: a URI a client may act on

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(NubesError):
    status = 400
    title = "Bad request"


class InvalidInput(NubesError):
    status = 422
    title = "Invalid input"


class NotFound(NubesError):
    status = 404
    title = "Not found"


class Conflict(NubesError):
    status = 409
    title = "Conflict"


class NoValidHost(Conflict):
    title = "No valid host"


class Unauthorized(NubesError):
    status = 401
    title = "Unauthorized"


# the problem type a fenced host's credential is answered with: its agent destroys its guests
HOST_FENCED = "urn:nubes:problem:host-fenced"


class HostFenced(Unauthorized):
    """A host's credential after `host evacuate`: its servers run elsewhere now."""

    title = "Host fenced"
    type = HOST_FENCED


class Forbidden(NubesError):
    status = 403
    title = "Forbidden"


class ServiceUnavailable(NubesError):
    status = 503
    title = "Service unavailable"


class ImageRejected(InvalidInput):
    title = "Image rejected"


class DriverError(NubesError):
    """A host-side action failed (QEMU, netlink, qemu-img...)."""

    status = 500
    title = "Driver error"
