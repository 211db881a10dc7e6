"""Validation of every client-controlled field; errors name the field and the rule.

Everything here runs before any state is touched, so a refused request changes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from node.errors import InvalidArgument, Reason
from node.resolution import normalize_statement
from node.writes import ObservationInput
from selfmodel.errors import plain
from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.causal import CausalContext, counter_in_range
from sync.codec import EVIDENCE_KINDS, KEYED_CALL_KINDS, InvalidToken, decode_token
from sync.crdt import FINGERPRINT_BYTES, MAX_KEYED_CALLS
from sync.members import MEMBERS
from sync.observation import Evidence, Subject, SubjectKind

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]*")
_CONTEXT = re.compile(r"[a-z][a-z0-9_]*")
_KEY = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_REQUEST_KEY = re.compile(r"[A-Za-z0-9._:\-]+")
MAX_REQUEST_KEY = 128
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+={0,2}")  # urlsafe base64, as encode_token writes it
_KINDS = {kind.value: kind for kind in SubjectKind}  # a lookup, cheaper than SubjectKind(n)


@dataclass(frozen=True, slots=True)
class Limits:
    max_id: int = 128
    max_context: int = 64
    max_key: int = 128
    max_statement: int = 2000
    max_evidence: int = 16
    max_evidence_ref: int = 1024
    max_evidence_quote: int = 2000
    max_batch: int = 500
    max_filter_contexts: int = 64
    max_token: int = 65536
    max_handoff_lead: int = 100_000  # how far a token's counter may lead the node's (handoff)
    max_batch_subjects: int = 100
    max_watches_per_connection: int = 16
    max_page_size: int = 1000  # subjects or beliefs per page (ListSubjects, GetSelfModel)
    max_batch_read: int = 100  # subjects per BatchGetSelfModels
    max_rollup_bytes: int = 1024 * 1024  # roll-up rows per group in one read's reply
    max_groups_per_member: int = 100  # teams a user joins, organizations a team joins
    idempotency_window_s: float = 3600.0  # how long a write's idempotency key is recognised


def too_long(field: str, limit: int, got: int, setting: str, unit: str = "characters") -> None:
    """Refuses a value longer than ``limit`` (the Limits field ``setting``; "" for a fixed
    limit)."""
    if got > limit:
        named = f" (setting {setting})" if setting else ""
        raise InvalidArgument(
            field,
            f"must be at most {limit} {unit}, got {got}{named}",
            metadata={"limit": limit, **({"setting": setting} if setting else {})},
        )


def _matching(
    value: str, field: str, limit: int, pattern: re.Pattern[str], rule: str, setting: str = ""
) -> str:
    """One rule for every bounded name: required, at most ``limit`` long, of ``pattern``."""
    if not value:
        raise InvalidArgument(field, "is required")
    too_long(field, limit, len(value), setting)
    if not pattern.fullmatch(value):
        raise InvalidArgument(field, rule)
    return value


def identifier(value: str, field: str, limit: int) -> str:
    return _matching(
        value,
        field,
        limit,
        _ID,
        "may hold only letters, digits and _ . : @ + - and must start with a letter or digit",
        "max_id",
    )


def context_name(value: str, field: str, limits: Limits) -> str:
    return _matching(
        value,
        field,
        limits.max_context,
        _CONTEXT,
        "must be lowercase snake_case (a-z, 0-9, _), starting with a letter",
        "max_context",
    )


def key(value: str, field: str, limits: Limits) -> str:
    """Optional: empty means the slot's key is the normalized statement."""
    if not value:
        return ""
    return _matching(
        value,
        field,
        limits.max_key,
        _KEY,
        "may hold only a-z, 0-9, _ . - and must start with a letter or digit",
        "max_key",
    )


def slot_key(value: str, field: str, limits: Limits) -> str:
    """A slot's key as Explain and Retract name it: the agent's key, or, for a slot written
    without one, its statement as written or as Observe normalized it (the key it returned),
    normalized here the same way. A value that is a valid key is that key."""
    if not value or (_KEY.fullmatch(value) and len(value) <= limits.max_key):
        return value
    text(value, field, limits.max_statement, required=True, setting="max_statement")
    normalized = normalize_statement(value)
    if not normalized:
        raise InvalidArgument(field, "must be a key, or a statement with more than final stops")
    return normalized


def text(value: str, field: str, limit: int, *, required: bool, setting: str = "") -> str:
    if required and not value.strip():
        raise InvalidArgument(field, "is required and must not be blank")
    if setting:
        too_long(field, limit, len(value), setting)
    elif len(value) > limit:
        raise InvalidArgument(field, f"must be at most {limit} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def unit_interval(value: float, field: str) -> float:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(field, f"must be a finite number within [0, 1], got {plain(value)}")
    return value


def subject(msg: model_pb2.Subject, field: str, limits: Limits, present: bool = True) -> Subject:
    if not present:
        raise InvalidArgument(field, "is required")
    tenant = identifier(msg.tenant, f"{field}.tenant", limits.max_id)
    kind = subject_kind(msg.kind, f"{field}.kind")
    assert kind is not None
    return Subject(tenant, kind, identifier(msg.id, f"{field}.id", limits.max_id))


def subject_kind(value: int, field: str, *, required: bool = True) -> SubjectKind | None:
    """A subject's kind; SUBJECT_KIND_UNSPECIFIED is None where the kind is optional."""
    kind = _KINDS.get(value)
    if kind is None and (required or value != 0):
        rule = "must be SUBJECT_KIND_USER, SUBJECT_KIND_TEAM or SUBJECT_KIND_ORG"
        raise InvalidArgument(field, rule + ("" if required else " (or unspecified: every kind)"))
    return kind


def observation(msg: selfmodel_pb2.ObserveRequest, field: str, limits: Limits) -> ObservationInput:
    prefix = f"{field}." if field else ""
    subj = subject(msg.subject, f"{prefix}subject", limits, msg.HasField("subject"))
    context = context_name(msg.context, f"{prefix}context", limits)
    slot_key = key(msg.key, f"{prefix}key", limits)
    statement = text(
        msg.statement,
        f"{prefix}statement",
        limits.max_statement,
        required=True,
        setting="max_statement",
    )
    if not slot_key and not normalize_statement(statement):
        raise InvalidArgument(
            f"{prefix}statement",
            "must hold more than spaces, periods and exclamation marks: without a key, the "
            "slot's key is the normalized statement",
        )
    if not msg.HasField("confidence"):  # proto3 would read an absent one as 0
        raise InvalidArgument(
            f"{prefix}confidence",
            "is required: how sure the agent is, within [0, 1]",
            reason=Reason.CONFIDENCE_REQUIRED,
        )
    confidence = unit_interval(msg.confidence, f"{prefix}confidence")
    items = msg.evidence
    too_long(f"{prefix}evidence", limits.max_evidence, len(items), "max_evidence", "items")
    evidence = []
    for i, ev in enumerate(items):
        at = f"{prefix}evidence[{i}]"
        kind = EVIDENCE_KINDS.of(ev.kind)
        if not kind:
            raise InvalidArgument(f"{at}.kind", f"must be one of {EVIDENCE_KINDS.names}")
        text(
            ev.ref, f"{at}.ref", limits.max_evidence_ref, required=False, setting="max_evidence_ref"
        )
        text(
            ev.quote,
            f"{at}.quote",
            limits.max_evidence_quote,
            required=False,
            setting="max_evidence_quote",
        )
        time_ms = 0
        if ev.HasField("time"):
            if (
                ev.time.seconds < 0
                or ev.time.seconds > 253402300799
                or not 0 <= ev.time.nanos < 10**9
            ):
                raise InvalidArgument(f"{at}.time", "must be a valid timestamp after 1970")
            time_ms = ev.time.seconds * 1000 + ev.time.nanos // 1_000_000  # ToMilliseconds
        evidence.append(Evidence(kind, ev.ref, ev.quote, time_ms))
    read = handoff_token(msg.based_on, f"{prefix}based_on", limits)  # None when empty
    based_on = None if read is None else read.get(subj, CausalContext())
    return ObservationInput(
        subj, context, slot_key, statement, confidence, tuple(evidence), based_on
    )


def contexts(values: Sequence[str], field: str, limits: Limits) -> frozenset[str]:
    too_long(field, limits.max_filter_contexts, len(values), "max_filter_contexts", "contexts")
    return frozenset(context_name(v, f"{field}[{i}]", limits) for i, v in enumerate(values))


def handoff_token(value: str, field: str, limits: Limits) -> dict[Subject, CausalContext] | None:
    if not value:
        return None
    if len(value) > limits.max_token:
        raise InvalidArgument(
            field,
            f"must be at most {limits.max_token} characters, got {len(value)} (setting max_token)",
            reason=Reason.HANDOFF_TOKEN_INVALID,
            metadata={"limit": limits.max_token, "setting": "max_token"},
        )

    def not_a_token(why: str) -> InvalidArgument:
        return InvalidArgument(
            field,
            f"is not a handoff token returned by a write or read ({why})",
            reason=Reason.HANDOFF_TOKEN_INVALID,
        )

    # base64 decoding skips characters outside its alphabet, so '!!!' would decode to an empty
    # token and a mangled token would silently ask for no position at all: a stale read.
    if not _TOKEN.fullmatch(value):
        raise not_a_token("only URL-safe base64 characters are allowed")
    try:
        positions = decode_token(value)
    except InvalidToken:  # its text is the protobuf parser's, which names Python types
        raise not_a_token("it does not decode to a position") from None
    if not positions:
        raise not_a_token("it names no position")
    try:
        for held, context in positions.items():
            _position(context, f"{field} ({held})")
    except InvalidArgument as exc:
        raise InvalidArgument(
            exc.field, exc.description, reason=Reason.HANDOFF_TOKEN_INVALID
        ) from None
    return positions


def source(value: str, field: str, limits: Limits) -> str:
    return identifier(value, field, limits.max_id)


def request_key(value: str, field: str) -> str:
    """An idempotency key (optional: empty means none)."""
    if not value:
        return ""
    return _matching(
        value, field, MAX_REQUEST_KEY, _REQUEST_KEY, "may hold only letters, digits and . _ : -"
    )


def page_token(value: str, field: str, limits: Limits) -> str:
    """A page token (optional: empty means the first page), checked for its length and
    alphabet before node.listing decodes it."""
    if len(value) > limits.max_token:
        raise InvalidArgument(
            field, f"must be at most {limits.max_token} characters (the node's max_token)"
        )
    if value and not _TOKEN.fullmatch(value):
        raise InvalidArgument(field, "is not a page token: pass the next_page_token of a page")
    return value


def audit_cursor(value: str, field: str) -> bytes:
    """A cursor of the audit log: empty (from the start) or one returned by ListAudit."""
    if not value:
        return b""
    if len(value) != 32 or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise InvalidArgument(field, "must be empty or a cursor returned by ListAudit")
    return bytes.fromhex(value)


MAX_REMOTE_OBSERVATIONS = 100_000


def counter(value: int, field: str) -> int:
    """A dot's counter, from an agent's token, a peer's delta or an anti-entropy reply alike:
    within [1, MAX_COUNTER], the same bound the engine mints within (sync.causal)."""
    if not counter_in_range(value):
        raise InvalidArgument(field, f"must be within [1, 2^62], got {value}")
    return value


def hlc(value: int, field: str) -> int:
    """A hybrid timestamp of an erase bound or a withdrawal: within [1, 2^63)."""
    if not 0 < value < 2**63:
        raise InvalidArgument(field, f"must be within [1, 2^63), got {value}")
    return value


def _dot(actor: str, value: int, field: str, limits: Limits) -> None:
    identifier(actor, f"{field}.actor", limits.max_id)
    counter(value, f"{field}.counter")


def _position(context: CausalContext, field: str) -> None:
    for actor, top in context.vector.items():
        counter(top, f"{field}.context.vector[{actor}]")
    for dot in context.cloud:
        counter(dot.counter, f"{field}.context.cloud[{dot.actor}]")


def _keyed_calls(msg: sync_pb2.SubjectState, field: str, limits: Limits) -> None:
    if len(msg.keyed_calls) > MAX_KEYED_CALLS:
        raise InvalidArgument(f"{field}.keyed_calls", f"must hold at most {MAX_KEYED_CALLS}")
    for i, c in enumerate(msg.keyed_calls):
        at = f"{field}.keyed_calls[{i}]"
        identifier(c.agent, f"{at}.agent", limits.max_id)
        if not request_key(c.key, f"{at}.key"):
            raise InvalidArgument(f"{at}.key", "must be an idempotency key")
        if not KEYED_CALL_KINDS.of(c.kind):
            raise InvalidArgument(f"{at}.kind", f"must be one of {KEYED_CALL_KINDS.names}")
        if len(c.fingerprint) != FINGERPRINT_BYTES:
            raise InvalidArgument(f"{at}.fingerprint", f"must be {FINGERPRINT_BYTES} bytes")
        hlc(c.hlc, f"{at}.hlc")


RESERVED = "_"


def reserved(name: str) -> bool:
    """Names beginning with ``_`` (a context, a tenant, a subject id) are the node's own: the
    state it keeps in subjects (a group's members, the cluster's governance). No agent can write
    one (every agent-facing rule refuses a leading ``_``); peers replicate them."""
    return name.startswith(RESERVED)


def _unreserved(name: str) -> str:
    """``name`` without one leading ``_``, to check a node's own name by the agents' rule."""
    return name[1:] if reserved(name) else name


def remote_state(msg: sync_pb2.SubjectState, field: str, limits: Limits) -> None:
    """A state or delta from a peer holds to the same bounds as agents' input, or is refused.

    Peers are authenticated, but a buggy or compromised one must not plant an observation no
    agent could have written (a NaN confidence, a 10 MB statement, an unknown subject kind),
    except that the node's own names (``reserved``) are allowed.
    """
    if not msg.HasField("subject"):
        raise InvalidArgument(f"{field}.subject", "is required")
    remote = model_pb2.Subject(
        tenant=_unreserved(msg.subject.tenant),
        kind=msg.subject.kind,
        id=_unreserved(msg.subject.id),
    )
    subject(remote, f"{field}.subject", limits)
    if msg.HasField("erased"):
        hlc(msg.erased.hlc, f"{field}.erased.hlc")
    seen = msg.erased.seen
    entries = len(msg.context.vector) + len(msg.context.cloud) + len(msg.events)
    entries += len(seen.vector) + len(seen.cloud) + len(msg.withdrawals)
    if entries > MAX_REMOTE_OBSERVATIONS or len(msg.observations) > MAX_REMOTE_OBSERVATIONS:
        raise InvalidArgument(field, "holds more dots or observations than any subject may")
    for i, e in enumerate(msg.context.vector):
        _dot(e.actor, e.counter, f"{field}.context.vector[{i}]", limits)
    for i, d in enumerate(msg.context.cloud):
        _dot(d.actor, d.counter, f"{field}.context.cloud[{i}]", limits)
    for i, e in enumerate(seen.vector):
        _dot(e.actor, e.counter, f"{field}.erased.seen.vector[{i}]", limits)
    for i, d in enumerate(seen.cloud):
        _dot(d.actor, d.counter, f"{field}.erased.seen.cloud[{i}]", limits)
    for i, w in enumerate(msg.withdrawals):
        at = f"{field}.withdrawals[{i}]"
        context_name(_unreserved(w.context), f"{at}.context", limits)
        if not w.key or len(w.key) > limits.max_statement or _CONTROL.search(w.key):
            raise InvalidArgument(f"{at}.key", "must be a slot key or a normalized statement")
        identifier(w.source, f"{at}.source", limits.max_id)
        hlc(w.hlc, f"{at}.hlc")
    _keyed_calls(msg, field, limits)
    for i, d in enumerate(msg.events):
        _dot(d.actor, d.counter, f"{field}.events[{i}]", limits)
    known = {e.actor: e.counter for e in msg.context.vector}
    cloud = {(d.actor, d.counter) for d in msg.context.cloud}
    for i, o in enumerate(msg.observations):
        at = f"{field}.observations[{i}]"
        _dot(o.dot.actor, o.dot.counter, f"{at}.dot", limits)
        if o.dot.counter > known.get(o.dot.actor, 0) and (o.dot.actor, o.dot.counter) not in cloud:
            raise InvalidArgument(f"{at}.dot", "is not in the state's causal context")
        context_name(_unreserved(o.context), f"{at}.context", limits)
        if o.context == MEMBERS:  # a member's id, by the rule AddMember applies
            identifier(o.key, f"{at}.key", limits.max_id)
        elif not o.key or len(o.key) > limits.max_statement or _CONTROL.search(o.key):
            raise InvalidArgument(f"{at}.key", "must be a slot key or a normalized statement")
        identifier(o.source, f"{at}.source", limits.max_id)
        text(o.statement, f"{at}.statement", limits.max_statement, required=True)
        unit_interval(o.confidence, f"{at}.confidence")
        if len(o.evidence) > limits.max_evidence:
            raise InvalidArgument(
                f"{at}.evidence", f"must hold at most {limits.max_evidence} items"
            )
        for j, ev in enumerate(o.evidence):
            if ev.kind and not EVIDENCE_KINDS.of(ev.kind):  # unspecified: stored before kinds
                raise InvalidArgument(f"{at}.evidence[{j}].kind", "is no known evidence kind")
            text(ev.ref, f"{at}.evidence[{j}].ref", limits.max_evidence_ref, required=False)
            text(ev.quote, f"{at}.evidence[{j}].quote", limits.max_evidence_quote, required=False)
            if not 0 <= ev.time.seconds <= 253402300799 or not 0 <= ev.time.nanos < 10**9:
                raise InvalidArgument(f"{at}.evidence[{j}].time", "must be a valid timestamp")
        if o.hlc >= 2**63:
            raise InvalidArgument(f"{at}.hlc", "is out of range")
        read = o.based_on
        if len(read.vector) + len(read.cloud) > MAX_REMOTE_OBSERVATIONS:
            raise InvalidArgument(f"{at}.based_on", "holds more dots than any subject may")
        for j, e in enumerate(read.vector):
            _dot(e.actor, e.counter, f"{at}.based_on.vector[{j}]", limits)
        for j, d in enumerate(read.cloud):
            _dot(d.actor, d.counter, f"{at}.based_on.cloud[{j}]", limits)
        identifier(o.origin, f"{at}.origin", limits.max_id)
        if o.request_key:
            request_key(o.request_key, f"{at}.request_key")
