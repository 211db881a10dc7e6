"""Federation: the client library, cluster file, local launcher and command line."""

from federation.client import (
    AsyncClient,
    BeliefView,
    CachedModel,
    Client,
    Observed,
    Retracted,
    SelfModelView,
    Support,
    org,
    parse_subject,
    team,
    user,
)
from federation.pages import PolicyView, SubjectsPage
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
    "PolicyView",
    "ResourceExhausted",
    "Retracted",
    "SelfModelError",
    "SelfModelView",
    "Subject",
    "SubjectKind",
    "SubjectsPage",
    "Support",
    "Unauthenticated",
    "org",
    "parse_subject",
    "team",
    "user",
]
