"""How the node ends a failed call: one way, ``abort``, for every service and wrapper.

The exceptions themselves, their reasons and their google.rpc details live in
``selfmodel.errors``, which clients import without the node; this module re-exports them so
the node's code raises them by the same names, and turns one into the call's status: code,
message, ErrorInfo and the details that apply, sent as grpc-status-details-bin (grpcio-status).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_status import rpc_status

from selfmodel.errors import (
    BY_STATUS,
    REASONS,
    DeadlineExceeded,
    FieldViolation,
    HandoffPending,
    HandoffTimeout,
    InvalidArgument,
    InvalidObservation,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    Reason,
    ResourceExhausted,
    SelfModelError,
    Unauthenticated,
    Unavailable,
    to_status,
)
from sync.admission import Held
from sync.bounds import SETTINGS as SUBJECT_SETTINGS
from sync.bounds import Excess
from sync.hlc import ClockAheadError, ClockAheadOfPeersError
from sync.observation import Subject

log = logging.getLogger("selfmodel.node")
F = TypeVar("F", bound=Callable[..., Any])

# How soon a write refused for a clock ahead of its peers may be tried again: the node learns
# its peers' clocks from their replies, within a few seconds.
PEER_CLOCK_RETRY_S = 2.0


def abort(context: grpc.ServicerContext, exc: SelfModelError) -> NoReturn:
    """Ends the call with ``exc`` as its google.rpc.Status (raises, as ``context.abort`` does)."""
    context.abort_with_status(rpc_status.to_status(to_status(exc)))
    raise AssertionError("unreachable: abort_with_status raises")


def map_errors(fn: F) -> F:
    """Maps domain errors to status codes; an unexpected error is logged and never crashes."""

    @functools.wraps(fn)
    def wrapped(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except SelfModelError as exc:
            abort(context, exc)
        except Exception:
            if aborted(context):
                raise  # the handler chose its status with abort: keep it
            log.exception("%s failed", fn.__name__)
            abort(context, internal(fn.__name__))

    return wrapped  # type: ignore[return-value]


def aborted(context: grpc.ServicerContext) -> bool:
    """True once the handler called ``abort`` (which raises a bare Exception)."""
    code = context.code()  # type: ignore[attr-defined]
    return code is not None and code != grpc.StatusCode.OK


def internal(method: str) -> SelfModelError:
    """What a caller is told of a failure inside the node (the node logs the cause)."""
    return SelfModelError(
        f"{method} failed inside the node; see its log",
        reason=Reason.INTERNAL,
        metadata={"method": method},
    )


def too_large(subject: Subject, found: Excess, outcome: str) -> ResourceExhausted:
    """A write or retract refused because it would take ``subject`` past a subject limit."""
    setting, option = SUBJECT_SETTINGS[found.limit]
    return ResourceExhausted(
        f"subject {subject} {found.describe()}; {outcome}",
        reason=Reason.SUBJECT_TOO_LARGE,
        metadata={
            "subject": subject,
            "limit": found.limit,
            "value": found.value,
            "maximum": found.maximum,
            "setting": setting,
        },
        quota=[
            QuotaViolation(
                f"subject {subject}",
                f"at most {found.maximum} {found.unit or found.limit} per subject "
                f"({', '.join(filter(None, (setting, option)))})",
            )
        ],
    )


def clock_ahead(node: str, refusal: ClockAheadError) -> Unavailable:
    """A write refused while the node's clock would mint timestamps its peers refuse."""
    metadata: dict[str, object] = {
        "ahead_ms": refusal.ahead_ms,
        "max_offset_ms": refusal.max_offset_ms,
        "setting": "max_clock_offset_ms",
    }
    if isinstance(refusal, ClockAheadOfPeersError):
        metadata["peers"] = ",".join(refusal.peers)
        reason, retry_s = Reason.CLOCK_AHEAD_OF_PEERS, PEER_CLOCK_RETRY_S
    else:
        reason, retry_s = Reason.CLOCK_AHEAD, max(0.001, refusal.wait_ms / 1000)
    return Unavailable(
        f"node {node}: {refusal}", reason=reason, metadata=metadata, retry_after_s=retry_s
    )


def replication_behind(node: str, held: Held) -> Unavailable:
    """An agent write refused while a peer's delta stream falls behind (sync.admission)."""
    return Unavailable(
        f"node {node}: writes are held back while the delta stream to peer {held.peer} is "
        f"{held.lag_s:.1f} s behind and not catching up (max_replication_lag_s = "
        f"{held.max_lag_s:g}); ask again in {held.retry_after_s:g} s",
        reason=Reason.REPLICATION_BEHIND,
        metadata={
            "node": node,
            "peer": held.peer,
            "lag_s": round(held.lag_s, 3),
            "max_lag_s": held.max_lag_s,
            "setting": "max_replication_lag_s",
        },
        retry_after_s=held.retry_after_s,
    )


__all__ = [
    "BY_STATUS",
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
    "ResourceExhausted",
    "SelfModelError",
    "Unauthenticated",
    "Unavailable",
    "abort",
    "aborted",
    "clock_ahead",
    "internal",
    "map_errors",
    "replication_behind",
    "too_large",
]
