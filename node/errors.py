"""One exception hierarchy for the domain; each names the gRPC status it maps to at the edge.

The servicer maps these to status codes in one place (node/servicer.py) and the client library
maps status codes back to the same classes (federation/client.py), so agents catch domain errors.
"""

from __future__ import annotations


class SelfModelError(Exception):
    status = "INTERNAL"


class InvalidArgument(SelfModelError):
    """A request field breaks a rule; nothing was changed."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidObservation(InvalidArgument):
    pass


class Unauthenticated(SelfModelError):
    status = "UNAUTHENTICATED"


class PermissionDenied(SelfModelError):
    status = "PERMISSION_DENIED"


class NotFound(SelfModelError):
    status = "NOT_FOUND"


class DeadlineExceeded(SelfModelError):
    """The call's deadline passed before the node answered."""

    status = "DEADLINE_EXCEEDED"


class HandoffTimeout(DeadlineExceeded):
    """The local node had not merged the handoff token's position before the deadline."""


class ResourceExhausted(SelfModelError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(SelfModelError):
    status = "UNAVAILABLE"


BY_STATUS: dict[str, type[SelfModelError]] = {
    cls.status: cls
    for cls in (
        SelfModelError,
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        DeadlineExceeded,
        ResourceExhausted,
        Unavailable,
    )
}
