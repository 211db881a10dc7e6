"""The errors of the selfmodel API as a program acts on them: shared by the node, which answers
them, and the clients, which raise them (importable as ``selfmodel.errors`` without the node).

    SelfModelError                  INTERNAL
     ├── InvalidArgument            INVALID_ARGUMENT    + BadRequest field violations
     │    └── InvalidObservation
     ├── Unauthenticated            UNAUTHENTICATED
     ├── PermissionDenied           PERMISSION_DENIED
     ├── NotFound                   NOT_FOUND
     ├── DeadlineExceeded           DEADLINE_EXCEEDED
     │    └── HandoffTimeout        a handoff position still pending at the caller's deadline
     ├── ResourceExhausted          RESOURCE_EXHAUSTED  + QuotaFailure
     └── Unavailable                UNAVAILABLE         + RetryInfo
          └── HandoffPending        the node has not merged a handoff position yet

On the wire an error is a ``google.rpc.Status`` (grpcio-status): its code, its message, and
details: always an ``ErrorInfo`` (a stable ``reason`` of ``REASONS``, domain ``DOMAIN``,
``metadata``), plus ``BadRequest``, ``QuotaFailure`` and ``RetryInfo`` where they apply.
``to_status`` and ``from_status`` are inverse on everything a program acts on; every reason
and what it means is listed in ``REASONS`` (and docs/errors.md, which a test keeps equal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "selfmodel.dev"
# A HANDOFF_POSITION_PENDING answer is final (ErrorInfo metadata ``final``: the caller asks no
# more) when the caller's deadline leaves less than its retry delay plus this; a client makes
# its last ask with about this much left.
LAST_ASK_S = 0.1


class Reason(StrEnum):
    """Why a call failed, in words a program can switch on (ErrorInfo.reason)."""

    FIELD_INVALID = "FIELD_INVALID"
    CONFIDENCE_REQUIRED = "CONFIDENCE_REQUIRED"
    MEMBER_INVALID = "MEMBER_INVALID"
    REQUEST_UNDECODABLE = "REQUEST_UNDECODABLE"
    HANDOFF_TOKEN_INVALID = "HANDOFF_TOKEN_INVALID"
    HANDOFF_TOKEN_OTHER_SUBJECT = "HANDOFF_TOKEN_OTHER_SUBJECT"
    HANDOFF_POSITION_IMPLAUSIBLE = "HANDOFF_POSITION_IMPLAUSIBLE"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_MALFORMED = "TOKEN_MALFORMED"
    TOKEN_UNKNOWN = "TOKEN_UNKNOWN"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    TENANT_DENIED = "TENANT_DENIED"
    CONTEXT_DENIED = "CONTEXT_DENIED"
    DOMAIN_DENIED = "DOMAIN_DENIED"
    OPERATOR_REQUIRED = "OPERATOR_REQUIRED"
    SOURCE_DENIED = "SOURCE_DENIED"
    MEMBERSHIP_DENIED = "MEMBERSHIP_DENIED"
    PEER_UNAUTHENTICATED = "PEER_UNAUTHENTICATED"
    PEER_DENIED = "PEER_DENIED"
    PEER_FOREIGN_WRITE = "PEER_FOREIGN_WRITE"
    SUBJECT_TOO_LARGE = "SUBJECT_TOO_LARGE"
    MEMBER_GROUPS_EXHAUSTED = "MEMBER_GROUPS_EXHAUSTED"
    COUNTER_EXHAUSTED = "COUNTER_EXHAUSTED"
    WATCHES_EXHAUSTED = "WATCHES_EXHAUSTED"
    CONNECTION_WATCHES_EXHAUSTED = "CONNECTION_WATCHES_EXHAUSTED"
    HANDOFF_POSITION_PENDING = "HANDOFF_POSITION_PENDING"
    IDEMPOTENT_WRITE_PENDING = "IDEMPOTENT_WRITE_PENDING"
    IDEMPOTENT_WRITE_LOST = "IDEMPOTENT_WRITE_LOST"
    CLOCK_AHEAD = "CLOCK_AHEAD"
    CLOCK_AHEAD_OF_PEERS = "CLOCK_AHEAD_OF_PEERS"
    REPLICATION_BEHIND = "REPLICATION_BEHIND"
    DISK_FULL = "DISK_FULL"
    STORE_UNWRITABLE = "STORE_UNWRITABLE"
    NODE_STARTING = "NODE_STARTING"
    NODE_STOPPING = "NODE_STOPPING"
    INTERNAL = "INTERNAL"


class ReasonDoc(NamedTuple):
    """What a reason means to a caller: its status code, when it is answered, the ErrorInfo
    metadata keys it carries, and whether the same call may succeed later."""

    code: str
    meaning: str
    metadata: tuple[str, ...]
    retry: bool


REASONS: dict[Reason, ReasonDoc] = {
    Reason.FIELD_INVALID: ReasonDoc(
        "INVALID_ARGUMENT",
        "a request field breaks a rule; BadRequest names the field and the rule",
        ("field", "limit", "setting"),
        False,
    ),
    Reason.CONFIDENCE_REQUIRED: ReasonDoc(
        "INVALID_ARGUMENT",
        "an observation without a confidence (the field was not set)",
        ("field",),
        False,
    ),
    Reason.MEMBER_INVALID: ReasonDoc(
        "INVALID_ARGUMENT",
        "a member that cannot belong to the group: of another tenant, or not the kind the group "
        "holds (a team's members are users, an organization's teams)",
        ("field", "group", "member"),
        False,
    ),
    Reason.REQUEST_UNDECODABLE: ReasonDoc(
        "INVALID_ARGUMENT",
        "the request bytes are not a message of the method's type",
        ("method",),
        False,
    ),
    Reason.HANDOFF_TOKEN_INVALID: ReasonDoc(
        "INVALID_ARGUMENT",
        "`at_least` or `based_on` is not a handoff token a write or read returned",
        ("field", "limit", "setting"),
        False,
    ),
    Reason.HANDOFF_TOKEN_OTHER_SUBJECT: ReasonDoc(
        "INVALID_ARGUMENT",
        "a handoff token of other subjects, passed to a read of this one",
        ("field", "subject", "token_subjects"),
        False,
    ),
    Reason.HANDOFF_POSITION_IMPLAUSIBLE: ReasonDoc(
        "INVALID_ARGUMENT",
        "a handoff token naming a position no node of the cluster has issued",
        ("field", "subject", "actor", "counter", "held", "setting"),
        False,
    ),
    Reason.PAGE_TOKEN_INVALID: ReasonDoc(
        "INVALID_ARGUMENT",
        "`page_token` is not the `next_page_token` of the same listing (kind, tenant or subject)",
        ("field",),
        False,
    ),
    Reason.IDEMPOTENCY_KEY_REUSED: ReasonDoc(
        "INVALID_ARGUMENT",
        "an idempotency key this agent used for a different request within the window",
        ("field", "key"),
        False,
    ),
    Reason.TOKEN_MISSING: ReasonDoc(
        "UNAUTHENTICATED", "no `authorization: Bearer <token>` metadata", (), False
    ),
    Reason.TOKEN_MALFORMED: ReasonDoc(
        "UNAUTHENTICATED", "authorization metadata that is not one `Bearer <token>`", (), False
    ),
    Reason.TOKEN_UNKNOWN: ReasonDoc(
        "UNAUTHENTICATED", "a bearer token the node's token file does not hold", (), False
    ),
    Reason.TOKEN_REVOKED: ReasonDoc(
        "UNAUTHENTICATED", "a revoked bearer token", ("token_id",), False
    ),
    Reason.TENANT_DENIED: ReasonDoc(
        "PERMISSION_DENIED",
        "a subject of a tenant other than the token's",
        ("agent", "tenant", "token_tenant"),
        False,
    ),
    Reason.CONTEXT_DENIED: ReasonDoc(
        "PERMISSION_DENIED",
        "a write to a context the token may not write",
        ("agent", "context", "allowed"),
        False,
    ),
    Reason.DOMAIN_DENIED: ReasonDoc(
        "PERMISSION_DENIED",
        "a write through a node of a domain the token may not write through",
        ("agent", "domain", "allowed"),
        False,
    ),
    Reason.OPERATOR_REQUIRED: ReasonDoc(
        "PERMISSION_DENIED",
        "an operator-only call with an agent's token",
        ("agent", "action"),
        False,
    ),
    Reason.SOURCE_DENIED: ReasonDoc(
        "PERMISSION_DENIED",
        "an agent retracting another source's observations",
        ("agent", "source"),
        False,
    ),
    Reason.MEMBERSHIP_DENIED: ReasonDoc(
        "PERMISSION_DENIED",
        "an agent without the membership permission adding or removing a group member",
        ("agent", "action"),
        False,
    ),
    Reason.PEER_UNAUTHENTICATED: ReasonDoc(
        "UNAUTHENTICATED",
        "a Sync call without a peer's credentials (certificate or peer token)",
        ("cause",),
        False,
    ),
    Reason.PEER_DENIED: ReasonDoc(
        "PERMISSION_DENIED",
        "a Sync call from a node not in the cluster file, or to a port that serves no Sync",
        ("cause",),
        False,
    ),
    Reason.PEER_FOREIGN_WRITE: ReasonDoc(
        "PERMISSION_DENIED",
        "a delta stream carrying writes of another node than the sender",
        ("peer", "actor", "origin"),
        False,
    ),
    Reason.SUBJECT_TOO_LARGE: ReasonDoc(
        "RESOURCE_EXHAUSTED",
        "a write that would take a subject past a subject limit; QuotaFailure names it",
        ("subject", "limit", "value", "maximum", "setting"),
        False,
    ),
    Reason.MEMBER_GROUPS_EXHAUSTED: ReasonDoc(
        "RESOURCE_EXHAUSTED",
        "an add of a member already in as many groups as a member may join "
        "(max_groups_per_member); QuotaFailure names it",
        ("member", "limit", "setting"),
        False,
    ),
    Reason.COUNTER_EXHAUSTED: ReasonDoc(
        "RESOURCE_EXHAUSTED",
        "the subject's event counter of this node's actor is at the bound every node accepts",
        ("subject", "actor", "maximum"),
        False,
    ),
    Reason.WATCHES_EXHAUSTED: ReasonDoc(
        "RESOURCE_EXHAUSTED",
        "the node serves its most open watches; QuotaFailure names the setting",
        ("limit", "setting"),
        True,
    ),
    Reason.CONNECTION_WATCHES_EXHAUSTED: ReasonDoc(
        "RESOURCE_EXHAUSTED",
        "the connection holds its most open watches; QuotaFailure names the setting",
        ("limit", "setting"),
        False,
    ),
    Reason.HANDOFF_POSITION_PENDING: ReasonDoc(
        "UNAVAILABLE",
        "the node has not merged the handoff token's position yet; RetryInfo says when to ask "
        "again",
        ("subject", "actor", "counter", "held", "final"),
        True,
    ),
    Reason.IDEMPOTENT_WRITE_PENDING: ReasonDoc(
        "UNAVAILABLE",
        "a retried write whose first call this node holds only in part (the rest not merged "
        "yet): ask again",
        ("key", "found", "wanted"),
        True,
    ),
    Reason.IDEMPOTENT_WRITE_LOST: ReasonDoc(
        "UNAVAILABLE",
        "a retried write whose first call this node holds in part, the rest since replaced, "
        "retracted or forgotten here: retry on the node that took the first call",
        ("key", "found", "wanted"),
        False,
    ),
    Reason.CLOCK_AHEAD: ReasonDoc(
        "UNAVAILABLE",
        "the node's saved clock is ahead of its wall clock: writes wait until it catches up",
        ("ahead_ms", "max_offset_ms", "setting"),
        True,
    ),
    Reason.CLOCK_AHEAD_OF_PEERS: ReasonDoc(
        "UNAVAILABLE",
        "the node's wall clock is ahead of most of its peers': writes wait until it is fixed",
        ("ahead_ms", "max_offset_ms", "setting", "peers"),
        True,
    ),
    Reason.REPLICATION_BEHIND: ReasonDoc(
        "UNAVAILABLE",
        "writes are held back: the delta stream to a connected peer is further behind than the "
        "bound and not catching up; they are taken again once it has caught up to half of it",
        ("node", "peer", "lag_s", "max_lag_s", "setting"),
        True,
    ),
    Reason.DISK_FULL: ReasonDoc(
        "UNAVAILABLE",
        "writes are suspended: the disk of the data directory is full or under its floor",
        ("node", "setting"),
        True,
    ),
    Reason.STORE_UNWRITABLE: ReasonDoc(
        "UNAVAILABLE",
        "writes are suspended after an I/O error of the data directory, or while it reopens",
        ("node",),
        True,
    ),
    Reason.NODE_STARTING: ReasonDoc(
        "UNAVAILABLE",
        "the node has not finished starting (its peers vouch for its run)",
        ("node",),
        True,
    ),
    Reason.NODE_STOPPING: ReasonDoc("UNAVAILABLE", "the node is shutting down", ("node",), True),
    Reason.INTERNAL: ReasonDoc(
        "INTERNAL", "a failure inside the node; its log has the cause", ("method",), False
    ),
}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One field of a request and the rule it breaks (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """A limit a call would pass (google.rpc.QuotaFailure.Violation): ``subject`` is what the
    limit applies to (a subject, a node, a connection), ``description`` the limit and setting."""

    subject: str
    description: str


class SelfModelError(Exception):
    """An error of the API. ``reason`` (a ``Reason``, or whatever a newer node sent) and
    ``metadata`` come from ErrorInfo; ``retry_after_s`` from RetryInfo (None: not given)."""

    status: ClassVar[str] = "INTERNAL"
    default_reason: ClassVar[str] = Reason.INTERNAL

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
        violations: Sequence[FieldViolation] = (),
        quota: Sequence[QuotaViolation] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = str(reason if reason is not None else self.default_reason)
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}
        self.violations = tuple(violations)
        self.quota = tuple(quota)
        self.retry_after_s = retry_after_s


class InvalidArgument(SelfModelError):
    """A request field breaks a rule; nothing was changed. ``field`` and ``description`` are
    the first violation's: "confidence: must be a finite number within [0, 1], got 1.5"."""

    status = "INVALID_ARGUMENT"
    default_reason = Reason.FIELD_INVALID

    def __init__(
        self,
        field: str,
        description: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        found = tuple(violations) or ((FieldViolation(field, description),) if field else ())
        super().__init__(
            f"{field}: {description}" if field else description,
            reason=reason,
            metadata={**({"field": field} if field else {}), **(metadata or {})},
            violations=found,
        )
        self.field = field
        self.description = description


class InvalidObservation(InvalidArgument):
    pass


class Unauthenticated(SelfModelError):
    status = "UNAUTHENTICATED"
    default_reason = Reason.TOKEN_UNKNOWN


class PermissionDenied(SelfModelError):
    status = "PERMISSION_DENIED"
    default_reason = Reason.TENANT_DENIED


class NotFound(SelfModelError):
    status = "NOT_FOUND"


class DeadlineExceeded(SelfModelError):
    """The call's deadline passed before the node answered."""

    status = "DEADLINE_EXCEEDED"


class HandoffTimeout(DeadlineExceeded):
    """The node had not merged the handoff token's position by the caller's deadline (the
    client asked again while it answered HANDOFF_POSITION_PENDING)."""

    default_reason = Reason.HANDOFF_POSITION_PENDING


class ResourceExhausted(SelfModelError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(SelfModelError):
    """The node cannot answer now; the same call may succeed later (``retry_after_s``)."""

    status = "UNAVAILABLE"
    default_reason = Reason.NODE_STARTING


class HandoffPending(Unavailable):
    """The node has not merged the handoff token's position yet: ask again after
    ``retry_after_s`` (the client does, until the caller's deadline)."""

    default_reason = Reason.HANDOFF_POSITION_PENDING


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
_BY_REASON: dict[str, type[SelfModelError]] = {
    Reason.HANDOFF_POSITION_PENDING: HandoffPending,
}


def plain(value: float) -> str:
    """A number as every language writes it: 1.5, 0.3, NaN, Infinity, -Infinity (not Python's
    ``nan``/``inf``, nor a float32's 0.30000001192092896)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return f"{value:.7g}"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: SelfModelError) -> status_pb2.Status:
    """The google.rpc.Status of ``exc``: code, message, ErrorInfo and the details that apply."""
    status = status_pb2.Status(code=getattr(code_pb2, exc.status), message=str(exc))
    status.details.append(
        _pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata))
    )
    if exc.violations:
        status.details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
        )
    if exc.quota:
        status.details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=q.subject, description=q.description
                        )
                        for q in exc.quota
                    ]
                )
            )
        )
    if exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(0.0, exc.retry_after_s) * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def from_status(code: str, message: str, status: status_pb2.Status | None) -> SelfModelError:
    """The exception of a failed call: its class by status code (and reason), its fields from
    the details; a status without details (from gRPC itself, or an older node) keeps the code's
    class and an empty reason."""
    cls = BY_STATUS.get(code, SelfModelError)
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    quota: list[QuotaViolation] = []
    retry: float | None = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            quota += [QuotaViolation(v.subject, v.description) for v in failure.violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry = info_retry.retry_delay.ToNanoseconds() / 1e9
    special = _BY_REASON.get(reason)
    if special is not None and issubclass(special, cls):
        cls = special
    message = message or code
    exc: SelfModelError
    if issubclass(cls, InvalidArgument):
        first = violations[0] if violations else FieldViolation("", message)
        exc = cls(
            first.field, first.description, reason=reason, metadata=metadata, violations=violations
        )
        exc.metadata = metadata  # as sent: no field added
    else:
        exc = cls(message, reason=reason, metadata=metadata, quota=quota, retry_after_s=retry)
        exc.violations = tuple(violations)
    exc.message, exc.args = message, (message,)  # the node's message, as it was sent
    exc.retry_after_s = retry
    return exc


def from_rpc_error(exc: grpc.RpcError) -> SelfModelError:
    """The exception of a failed gRPC call (sync or asyncio), built from its status details."""
    code = exc.code()  # type: ignore[attr-defined]
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:  # details whose code disagrees with the call's: trust the call
        status = None
    return from_status(code.name, exc.details() or "", status)  # type: ignore[attr-defined]


__all__ = [
    "BY_STATUS",
    "DOMAIN",
    "LAST_ASK_S",
    "REASONS",
    "DeadlineExceeded",
    "FieldViolation",
    "HandoffPending",
    "HandoffTimeout",
    "InvalidArgument",
    "InvalidObservation",
    "NotFound",
    "PermissionDenied",
    "QuotaViolation",
    "Reason",
    "ReasonDoc",
    "ResourceExhausted",
    "SelfModelError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "from_status",
    "plain",
    "to_status",
]
