"""Subject states and handoff tokens to and from their protobuf form (storage and wire alike).

Three messages are also written by hand, as the bytes protobuf's own deterministic serializer
writes them (fields in number order, zeros left out): a state reusing the bytes of observations
it encoded before (encode_state_reusing), a handoff token of its encoded entries
(token_of_entries) and a ReplicateRequest of stored deltas (encode_batch). Each has a test
that protobuf parses its bytes to the message it meant.
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import compress
from operator import is_not, itemgetter
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2
from sync.causal import CausalContext, Dot
from sync.crdt import (
    NO_ERASE,
    NO_KEYED_CALLS,
    NO_WITHDRAWALS,
    EraseBound,
    KeyedCall,
    KeyedCalls,
    SubjectState,
    Withdrawals,
    dot_part,
)
from sync.delivery import Delta
from sync.observation import Evidence, Observation, Subject, SubjectKind
from sync.ports import Batch


class EnumWords:
    """A protobuf enum's values as the domain's lowercase words, and back.

    EVIDENCE_KIND_MESSAGE is "message"; the zero value (``*_UNSPECIFIED``), and a number this
    build does not know, is "".
    """

    __slots__ = ("names", "value", "word")

    def __init__(self, enum: Any) -> None:
        values = enum.DESCRIPTOR.values
        prefix = values[0].name.removesuffix("UNSPECIFIED")
        self.word: dict[int, str] = {
            v.number: v.name.removeprefix(prefix).lower() if v.number else "" for v in values
        }
        self.value: dict[str, int] = {w: n for n, w in self.word.items()}
        self.names = ", ".join(v.name for v in values[1:])  # for messages naming the choices

    def of(self, number: int) -> str:
        return self.word.get(number, "")

    def number(self, word: str) -> int:
        """The value of ``word``; ValueError naming the words there are for any other."""
        found = self.value.get(word)
        if found is None:
            words = ", ".join(repr(w) for w in self.value if w)
            raise ValueError(f"{word!r} is none of {words}")
        return found


EVIDENCE_KINDS = EnumWords(model_pb2.EvidenceKind)
POLICIES = EnumWords(model_pb2.Policy)
KEYED_CALL_KINDS = EnumWords(sync_pb2.KeyedCallKind)


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
    msg.kind = EVIDENCE_KINDS.number(evidence.kind)  # type: ignore[assignment]
    msg.ref = evidence.ref
    msg.quote = evidence.quote
    if evidence.time_ms:
        msg.time.FromMilliseconds(evidence.time_ms)


def evidence_from_proto(msg: model_pb2.Evidence) -> Evidence:
    time_ms = msg.time.ToMilliseconds() if msg.HasField("time") else 0
    return Evidence(EVIDENCE_KINDS.of(msg.kind), msg.ref, msg.quote, time_ms)


def observation_to_proto(obs: Observation, o: sync_pb2.StoredObservation) -> None:
    """Sets ``o`` (a new, empty message) to ``obs``."""
    o.context = obs.context
    o.key = obs.key
    o.source = obs.source
    o.statement = obs.statement
    o.confidence = obs.confidence
    o.hlc = obs.hlc
    o.origin = obs.origin
    o.dot.actor = obs.dot.actor
    o.dot.counter = obs.dot.counter
    for ev in obs.evidence:
        evidence_to_proto(ev, o.evidence.add())
    if obs.based_on is not None:
        o.based_on.SetInParent()
        context_to_proto(obs.based_on, o.based_on)
    if obs.request_key:
        o.request_key = obs.request_key
        o.request_index = obs.request_index


def _state_head(subject: Subject, context: CausalContext) -> sync_pb2.SubjectState:
    """A state's message without its observations and bound: its subject and context."""
    msg = sync_pb2.SubjectState()
    subject_to_proto(subject, msg.subject)
    context_to_proto(context, msg.context)
    return msg


def encode_token_entry(subject: Subject, context: CausalContext) -> bytes:
    """A handoff token's entry for one subject: a SubjectPosition's bytes, as tokens hold them.

    They are also the first bytes of the state's encoding (SubjectState's fields 1 and 3 are the
    position's), which is how a write's token costs no encoding of its own (encode_state_reusing).
    """
    return _state_head(subject, context).SerializeToString(deterministic=True)


def _erased_to_proto(erased: EraseBound, msg: sync_pb2.SubjectState) -> None:
    if erased != NO_ERASE:
        msg.erased.hlc = erased.hlc
        context_to_proto(erased.seen, msg.erased.seen)


def _erased_from_proto(msg: sync_pb2.SubjectState) -> EraseBound:
    if not msg.HasField("erased"):
        return NO_ERASE
    return EraseBound(msg.erased.hlc, context_from_proto(msg.erased.seen))


def _withdrawals_to_proto(withdrawals: Withdrawals, msg: sync_pb2.SubjectState) -> None:
    for (context, key, source), hlc in sorted(withdrawals.items()):
        msg.withdrawals.add(context=context, key=key, source=source, hlc=hlc)


def _withdrawals_from_proto(msg: sync_pb2.SubjectState) -> Withdrawals:
    if not msg.withdrawals:
        return NO_WITHDRAWALS
    return {(w.context, w.key, w.source): w.hlc for w in msg.withdrawals}


def _keyed_calls_to_proto(calls: KeyedCalls, msg: sync_pb2.SubjectState) -> None:
    for (agent, key), call in sorted(calls.items()):
        kind = KEYED_CALL_KINDS.number(call.op)
        msg.keyed_calls.add(
            agent=agent,
            key=key,
            kind=kind,  # type: ignore[arg-type]
            fingerprint=call.fingerprint,
            hlc=call.hlc,
            retracted=call.retracted,
        )


def _keyed_calls_from_proto(msg: sync_pb2.SubjectState) -> KeyedCalls:
    if not msg.keyed_calls:
        return NO_KEYED_CALLS
    return {
        (c.agent, c.key): KeyedCall(c.hlc, KEYED_CALL_KINDS.of(c.kind), c.fingerprint, c.retracted)
        for c in msg.keyed_calls
    }


def state_to_proto(state: SubjectState) -> sync_pb2.SubjectState:
    msg = _state_head(state.subject, state.context)
    observations = state.observations
    add = msg.observations.add
    for dot in sorted(observations):
        observation_to_proto(observations[dot], add())
    _erased_to_proto(state.erased, msg)
    _withdrawals_to_proto(state.withdrawals, msg)
    _keyed_calls_to_proto(state.keyed_calls, msg)
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
            context_from_proto(o.based_on) if o.HasField("based_on") else None,
            o.request_key,
            o.request_index,
        )
    return SubjectState(
        subject,
        _erased_from_proto(msg),
        context_from_proto(msg.context),
        observations,
        _withdrawals_from_proto(msg),
        _keyed_calls_from_proto(msg),
    )


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


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def _delimited(tag: bytes, raw: bytes) -> bytes:
    """A length-delimited field: its tag, the length of ``raw``, then ``raw``."""
    return tag + _varint(len(raw)) + raw


class EncodedObservations(dict[Dot, tuple[Observation, bytes]]):
    """Each observation of an encoded state, as the state's bytes hold it: (the observation
    encoded, its field's bytes). See encode_state_reusing.

    Made by encode_state_reusing, it also holds the dots in order (``order``), their fields in
    that order (``fields``) and their parts of the state's digest (``dot_parts``, see
    sync.crdt.digest_with), so the subject's next encoding splices in only what changed.
    """

    __slots__ = ("dot_parts", "fields", "order")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.order: list[Dot] | None = None
        self.fields: list[bytes] = []
        self.dot_parts: list[bytes] = []

    def digest_part(self) -> bytes | None:
        """The observations' part of the state's digest (None unless it keeps the order)."""
        return None if self.order is None else b"".join(self.dot_parts)


class EncodedState(NamedTuple):
    raw: bytes  # encode_state's bytes
    token_entry: bytes  # encode_token_entry's bytes of the state: the first bytes of ``raw``
    observations: EncodedObservations  # for the subject's next encoding


_OBSERVATIONS_TAG = b"\x22"  # SubjectState.observations: field 4, length-delimited


def encode_state_reusing(
    state: SubjectState,
    known: Mapping[Dot, tuple[Observation, bytes]] | None = None,
    changed: tuple[Iterable[Dot], Iterable[Dot]] | None = None,
) -> EncodedState:
    """``encode_state(state)``, reusing the bytes of observations encoded before; with the
    state's token entry and each observation's bytes, for the next encoding of the subject.

    A write changes one or two observations of a subject and keeps the rest, so encoding the
    whole state again made a write's cost grow with the subject's size. A field of ``known`` is
    reused only for the very observation object it encoded (never by dot alone). The bytes are
    exactly encode_state's: a message's fields in field-number order (subject, context, the
    observations by dot, the erase bound, the withdrawals, the keyed calls), a repeated field
    its elements one after another. When ``known`` is what the previous encoding returned, only
    the changed observations are encoded and spliced in at their place (set operations and a
    join in C).
    ``changed``: the dots gone and added since the state ``known`` encoded, every other
    observation the very object it encoded (sync.crdt.observed_change), which spares the
    comparison of the two states' dot sets.
    """
    token_entry = encode_token_entry(state.subject, state.context)
    if isinstance(known, EncodedObservations) and known.order is not None:
        fields = _spliced(state.observations, known, changed)
    else:
        fields = _encoded(state.observations, known or {})
    parts = [token_entry, *fields.fields]
    if state.erased != NO_ERASE or state.withdrawals or state.keyed_calls:
        tail = sync_pb2.SubjectState()  # fields 6 to 8, after the observations
        _erased_to_proto(state.erased, tail)
        _withdrawals_to_proto(state.withdrawals, tail)
        _keyed_calls_to_proto(state.keyed_calls, tail)
        parts.append(tail.SerializeToString(deterministic=True))
    return EncodedState(b"".join(parts), token_entry, fields)


def _field(obs: Observation) -> bytes:
    o = sync_pb2.StoredObservation()
    observation_to_proto(obs, o)
    raw = o.SerializeToString(deterministic=True)
    return _delimited(_OBSERVATIONS_TAG, raw)


def _encoded(
    observations: Mapping[Dot, Observation], known: Mapping[Dot, tuple[Observation, bytes]]
) -> EncodedObservations:
    out = EncodedObservations()
    out.order = sorted(observations)
    reusable = known.get
    for dot in out.order:
        obs = observations[dot]
        entry = reusable(dot)
        if entry is None or entry[0] is not obs:
            entry = (obs, _field(obs))
        out[dot] = entry
        out.fields.append(entry[1])
    out.dot_parts = list(map(dot_part, out.order))
    return out


def _spliced(
    observations: Mapping[Dot, Observation],
    known: EncodedObservations,
    changed: tuple[Iterable[Dot], Iterable[Dot]] | None,
) -> EncodedObservations:
    """``_encoded(observations, known)``, from ``known``'s order: only the dots gone, added or
    holding another object than the one encoded are touched."""
    assert known.order is not None
    if changed is not None:
        gone, added = list(changed[0]), list(changed[1])
        replaced: list[Dot] = []
    else:
        common = list(known.keys() & observations.keys())
        encoded = map(itemgetter(0), map(known.__getitem__, common))
        replaced = list(
            compress(common, map(is_not, encoded, map(observations.__getitem__, common)))
        )
        gone, added = (
            list(known.keys() - observations.keys()),
            list(observations.keys() - known.keys()),
        )
    out = EncodedObservations(known)
    order, fields, dot_parts = list(known.order), list(known.fields), list(known.dot_parts)
    for dot in [*gone, *replaced]:
        i = bisect_left(order, dot)
        del order[i], fields[i], dot_parts[i], out[dot]
    for dot in [*added, *replaced]:
        obs = observations[dot]
        i = bisect_left(order, dot)
        entry = out[dot] = (obs, _field(obs))
        order.insert(i, dot)
        fields.insert(i, entry[1])
        dot_parts.insert(i, dot_part(dot))
    out.order, out.fields, out.dot_parts = order, fields, dot_parts
    return out


class InvalidToken(ValueError):
    pass


# What encode_token emits: URL-safe base64 without padding. The decoder would silently drop any
# other character, so a mangled token could read as "no position" instead of failing.
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def encode_token(positions: Mapping[Subject, CausalContext]) -> str:
    return token_of_entries(
        encode_token_entry(subject, positions[subject]) for subject in sorted(positions)
    )


_POSITIONS_TAG = b"\x0a"  # HandoffToken.positions: field 1, length-delimited


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def token_of_entries(encoded: Iterable[bytes]) -> str:
    """The token of entries already encoded (encode_token_entry), given in subject order."""
    raw = b"".join(_delimited(_POSITIONS_TAG, e) for e in encoded)
    # base64.urlsafe_b64encode, without its two interpreted wrappers around binascii
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def decode_token(token: str) -> dict[Subject, CausalContext]:
    if not _TOKEN_ALPHABET.fullmatch(token):
        raise InvalidToken("not a handoff token: only URL-safe base64 characters are allowed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        msg = sync_pb2.HandoffToken.FromString(raw)
        return {subject_from_proto(p.subject): context_from_proto(p.context) for p in msg.positions}
    except (binascii.Error, DecodeError, ValueError) as exc:
        raise InvalidToken(f"not a handoff token: {exc}") from exc


def merge_tokens(tokens: Iterable[str]) -> str:
    """One token covering every position of the given tokens (their contexts joined per subject)."""
    merged: dict[Subject, CausalContext] = {}
    for token in tokens:
        for subject, context in decode_token(token).items():
            have = merged.get(subject)
            merged[subject] = context if have is None else have.join(context)
    return encode_token(merged)


_ORIGIN_TAG = b"\x0a"  # ReplicateRequest.origin: field 1, length-delimited
_FIRST_SEQ_TAG = b"\x10"  # field 2, varint
_LAST_SEQ_TAG = b"\x18"  # field 3, varint
_DELTAS_TAG = b"\x22"  # field 4, length-delimited
_RESENT_TRUE = b"\x30\x01"  # field 6, varint 1


def encode_batch_origin(origin: str) -> bytes:
    """ReplicateRequest's ``origin`` field: the first bytes of every batch ``origin`` sends."""
    raw = origin.encode()
    return _delimited(_ORIGIN_TAG, raw) if raw else b""


def encode_batch(origin: bytes, batch: Batch) -> bytes:
    """The ReplicateRequest of a run of outbox entries, serialized without parsing its deltas.

    The stored deltas are already serialized SubjectStates, so decoding them only to encode
    them again would cost the sender a parse and a serialization per delta. ``origin`` is
    encode_batch_origin's bytes.
    """
    parts = [origin]
    if batch.first_seq:
        parts += (_FIRST_SEQ_TAG, _varint(batch.first_seq))
    if batch.last_seq:
        parts += (_LAST_SEQ_TAG, _varint(batch.last_seq))
    for raw in batch.deltas:
        parts += (_DELTAS_TAG, _varint(len(raw)), raw)
    if batch.resent:
        parts.append(_RESENT_TRUE)
    return b"".join(parts)
