"""Federation: the client library, cluster file, local launcher and command line.

The client library's names are imported on first use (PEP 562), not with the package: the
``selfmodel`` command line, which imports this package first, must choose gRPC's transport
before anything imports ``grpc`` (see node.transport).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from federation.client import (
        AsyncClient,
        BeliefView,
        CachedModel,
        Client,
        Observed,
        Retracted,
        SelfModelView,
        Stance,
        org,
        parse_subject,
        team,
        user,
    )
    from node.errors import (
        DeadlineExceeded,
        HandoffTimeout,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        SelfModelError,
        Unauthenticated,
    )
    from sync.observation import Evidence, Subject, SubjectKind

__all__ = [
    "AsyncClient",
    "BeliefView",
    "CachedModel",
    "Client",
    "DeadlineExceeded",
    "Evidence",
    "HandoffTimeout",
    "InvalidArgument",
    "NotFound",
    "Observed",
    "PermissionDenied",
    "ResourceExhausted",
    "Retracted",
    "SelfModelError",
    "SelfModelView",
    "Stance",
    "Subject",
    "SubjectKind",
    "Unauthenticated",
    "org",
    "parse_subject",
    "team",
    "user",
]

_FROM = {
    "federation.client": (
        "AsyncClient BeliefView CachedModel Client Observed Retracted SelfModelView Stance org "
        "parse_subject team user"
    ),
    "node.errors": (
        "DeadlineExceeded HandoffTimeout InvalidArgument NotFound PermissionDenied "
        "ResourceExhausted SelfModelError Unauthenticated"
    ),
    "sync.observation": "Evidence Subject SubjectKind",
}
_MODULE_OF = {name: module for module, names in _FROM.items() for name in names.split()}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'federation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
