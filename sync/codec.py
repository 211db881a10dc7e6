"""Subject states and handoff tokens to and from their protobuf form (storage and wire alike)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping

from google.protobuf.message import DecodeError

from selfmodel.v1 import model_pb2, sync_pb2
from sync.causal import CausalContext, Dot
from sync.crdt import SubjectState
from sync.delivery import Delta
from sync.observation import Evidence, Observation, Subject, SubjectKind


def subject_to_proto(subject: Subject, msg: model_pb2.Subject) -> None:
    """Sets ``msg`` (a field of a message being built: no temporary to copy in) to ``subject``."""
    msg.tenant = subject.tenant
    msg.kind = subject.kind  # type: ignore[assignment]
    msg.id = subject.id


def subject_from_proto(msg: model_pb2.Subject) -> Subject:
    return Subject(msg.tenant, SubjectKind(msg.kind), msg.id)


def context_to_proto(context: CausalContext, msg: sync_pb2.CausalContext) -> None:
    add_entry = msg.vector.add
    for actor, counter in sorted(context.vector.items()):
        add_entry(actor=actor, counter=counter)
    if context.cloud:
        add_dot = msg.cloud.add
        for dot in sorted(context.cloud):
            add_dot(actor=dot.actor, counter=dot.counter)


def context_from_proto(msg: sync_pb2.CausalContext) -> CausalContext:
    return CausalContext(
        {e.actor: e.counter for e in msg.vector},
        frozenset(Dot(d.actor, d.counter) for d in msg.cloud),
    )


def evidence_to_proto(evidence: Evidence, msg: model_pb2.Evidence) -> None:
    msg.kind = evidence.kind
    msg.ref = evidence.ref
    msg.quote = evidence.quote
    if evidence.time_ms:
        msg.time.FromMilliseconds(evidence.time_ms)


def evidence_from_proto(msg: model_pb2.Evidence) -> Evidence:
    time_ms = msg.time.ToMilliseconds() if msg.HasField("time") else 0
    return Evidence(msg.kind, msg.ref, msg.quote, time_ms)


def state_to_proto(state: SubjectState) -> sync_pb2.SubjectState:
    msg = sync_pb2.SubjectState(generation=state.generation)
    subject_to_proto(state.subject, msg.subject)
    context_to_proto(state.context, msg.context)
    observations = state.observations
    add = msg.observations.add
    for dot in sorted(observations):
        obs = observations[dot]
        o = add(
            context=obs.context,
            key=obs.key,
            source=obs.source,
            statement=obs.statement,
            confidence=obs.confidence,
            hlc=obs.hlc,
            origin=obs.origin,
        )
        o.dot.actor = dot.actor
        o.dot.counter = dot.counter
        for ev in obs.evidence:
            evidence_to_proto(ev, o.evidence.add())
    return msg


def state_from_proto(msg: sync_pb2.SubjectState) -> SubjectState:
    subject = subject_from_proto(msg.subject)
    observations = {}
    for o in msg.observations:
        dot = Dot(o.dot.actor, o.dot.counter)
        observations[dot] = Observation(
            dot,
            o.context,
            o.key,
            o.source,
            o.statement,
            o.confidence,
            tuple(evidence_from_proto(e) for e in o.evidence),
            o.hlc,
            o.origin,
        )
    return SubjectState(subject, msg.generation, context_from_proto(msg.context), observations)


def delta_to_proto(delta: Delta) -> sync_pb2.SubjectState:
    msg = state_to_proto(delta.state)
    for dot in sorted(delta.events or ()):
        msg.events.add(actor=dot.actor, counter=dot.counter)
    return msg


def delta_from_proto(msg: sync_pb2.SubjectState) -> Delta:
    events = frozenset(Dot(d.actor, d.counter) for d in msg.events) or None
    return Delta(state_from_proto(msg), events)


def encode_delta(delta: Delta) -> bytes:
    return delta_to_proto(delta).SerializeToString(deterministic=True)


def decode_delta(raw: bytes) -> Delta:
    return delta_from_proto(sync_pb2.SubjectState.FromString(raw))


def encode_state(state: SubjectState) -> bytes:
    return state_to_proto(state).SerializeToString(deterministic=True)


def decode_state(raw: bytes) -> SubjectState:
    return state_from_proto(sync_pb2.SubjectState.FromString(raw))


class InvalidToken(ValueError):
    pass


Position = tuple[int, CausalContext]

# What encode_token emits: URL-safe base64 without padding. The decoder would silently drop any
# other character, so a mangled token could read as "no position" instead of failing.
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def encode_token(positions: Mapping[Subject, Position]) -> str:
    msg = sync_pb2.HandoffToken()
    for subject in sorted(positions):
        generation, context = positions[subject]
        p = msg.positions.add(generation=generation)
        subject_to_proto(subject, p.subject)
        context_to_proto(context, p.context)
    return base64.urlsafe_b64encode(msg.SerializeToString(deterministic=True)).decode().rstrip("=")


def decode_token(token: str) -> dict[Subject, Position]:
    if not _TOKEN_ALPHABET.fullmatch(token):
        raise InvalidToken("not a handoff token: only URL-safe base64 characters are allowed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        msg = sync_pb2.HandoffToken.FromString(raw)
        return {
            subject_from_proto(p.subject): (p.generation, context_from_proto(p.context))
            for p in msg.positions
        }
    except (binascii.Error, DecodeError, ValueError) as exc:
        raise InvalidToken(f"not a handoff token: {exc}") from exc


def merge_tokens(tokens: Iterable[str]) -> str:
    """One token covering every position of the given tokens (the later position per subject)."""
    merged: dict[Subject, Position] = {}
    for token in tokens:
        for subject, (generation, context) in decode_token(token).items():
            have = merged.get(subject)
            if have is None or generation > have[0]:
                merged[subject] = (generation, context)
            elif generation == have[0]:
                merged[subject] = (generation, have[1].join(context))
    return encode_token(merged)
