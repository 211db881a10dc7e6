"""node.validation.remote_state: what a peer sends holds to the bounds of what an agent sends.

One case per rule: a state that is valid but for one field is refused, naming that field; the
same state with the field at its bound is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from node import validation
from node.errors import InvalidArgument
from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2

LIMITS = validation.Limits()
State = sync_pb2.SubjectState


def valid() -> State:
    """A subject with one observation whose dot is in the state's causal context."""
    msg = State(
        subject=model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-1"),
    )
    msg.erased.hlc = 1 << 16
    msg.erased.seen.vector.add(actor="sales.1", counter=1)
    msg.context.vector.add(actor="sales.1", counter=2)
    msg.context.cloud.add(actor="support.1", counter=5)
    msg.events.add(actor="sales.1", counter=2)
    o = msg.observations.add(
        context="budget",
        key="amount",
        source="sales_agent",
        statement="Budget is 10k",
        confidence=0.8,
        hlc=1_700_000_000_000 << 16,
        origin="sales",
    )
    o.dot.actor, o.dot.counter = "sales.1", 2
    o.evidence.add(kind=model_pb2.EVIDENCE_KIND_MESSAGE, ref="crm://1", quote="we have 10k")
    msg.keyed_calls.add(
        agent="sales_agent",
        key="retract-1",
        kind=sync_pb2.KEYED_CALL_KIND_RETRACT,
        fingerprint=bytes(16),
        hlc=1_700_000_000_000 << 16,
        retracted=1,
    )
    return msg


def check(msg: State) -> None:
    validation.remote_state(msg, "deltas[0]", LIMITS)


def refused(change: Callable[[State], object]) -> InvalidArgument:
    msg = valid()
    change(msg)
    with pytest.raises(InvalidArgument) as caught:
        check(msg)
    return caught.value


def obs(msg: State) -> sync_pb2.StoredObservation:
    return msg.observations[0]


def test_a_valid_state_is_accepted() -> None:
    check(valid())
    check(State(subject=valid().subject))  # an empty state of a subject (after a forget)


def _set(target: Callable[[State], object], name: str, value: object) -> Callable[[State], None]:
    return lambda msg: setattr(target(msg), name, value)


def _obs_field(name: str, value: object) -> Callable[[State], None]:
    return _set(obs, name, value)


def _member_key(value: str) -> Callable[[State], None]:
    """An observation of a group's members (its ``_members`` context) whose key is ``value``."""

    def change(msg: State) -> None:
        obs(msg).context, obs(msg).key = "_members", value

    return change


BROKEN: dict[str, tuple[Callable[[State], object], str, str]] = {
    # case: (change, field named, words of the reason)
    "no subject": (lambda m: m.ClearField("subject"), "deltas[0].subject", "required"),
    "empty tenant": (_set(lambda m: m.subject, "tenant", ""), "deltas[0].subject.tenant", ""),
    "look-alike tenant": (
        _set(lambda m: m.subject, "tenant", "\u0430cme"),  # Cyrillic a
        "deltas[0].subject.tenant",
        "letters",
    ),
    "unknown kind": (_set(lambda m: m.subject, "kind", 99), "deltas[0].subject.kind", "SUBJECT"),
    "long id": (_set(lambda m: m.subject, "id", "u" * 129), "deltas[0].subject.id", "at most 128"),
    "erase bound timestamp": (
        _set(lambda m: m.erased, "hlc", 2**63),
        "deltas[0].erased.hlc",
        "2^63",
    ),
    "erase bound dot": (
        _set(lambda m: m.erased.seen.vector[0], "counter", 2**62 + 1),
        "deltas[0].erased.seen.vector[0].counter",
        "2^62",
    ),
    "vector actor": (
        _set(lambda m: m.context.vector[0], "actor", "bad actor"),
        "deltas[0].context.vector[0].actor",
        "letters",
    ),
    "vector counter 0": (
        _set(lambda m: m.context.vector[0], "counter", 0),
        "deltas[0].context.vector[0].counter",
        "[1, 2^62]",
    ),
    "vector counter too big": (
        _set(lambda m: m.context.vector[0], "counter", 2**62 + 1),
        "deltas[0].context.vector[0].counter",
        "[1, 2^62]",
    ),
    "cloud counter": (
        _set(lambda m: m.context.cloud[0], "counter", 0),
        "deltas[0].context.cloud[0].counter",
        "[1, 2^62]",
    ),
    "cloud actor": (
        _set(lambda m: m.context.cloud[0], "actor", ""),
        "deltas[0].context.cloud[0].actor",
        "required",
    ),
    "event counter": (
        _set(lambda m: m.events[0], "counter", 2**64 - 1),
        "deltas[0].events[0].counter",
        "[1, 2^62]",
    ),
    "event actor": (
        _set(lambda m: m.events[0], "actor", "x\x00y"),
        "deltas[0].events[0].actor",
        "letters",
    ),
    "dot counter": (
        _set(lambda m: obs(m).dot, "counter", 0),
        "deltas[0].observations[0].dot.counter",
        "[1, 2^62]",
    ),
    "dot outside the context": (
        _set(lambda m: obs(m).dot, "counter", 3),
        "deltas[0].observations[0].dot",
        "causal context",
    ),
    "dot of an unknown actor": (
        _set(lambda m: obs(m).dot, "actor", "billing.1"),
        "deltas[0].observations[0].dot",
        "causal context",
    ),
    "context": (
        _obs_field("context", "Bad-Context"),
        "deltas[0].observations[0].context",
        "snake_case",
    ),
    "long context": (
        _obs_field("context", "x" * 65),
        "deltas[0].observations[0].context",
        "at most 64",
    ),
    "empty key": (_obs_field("key", ""), "deltas[0].observations[0].key", "slot key"),
    # a group's member ids, by the rule AddMember applies to a member's id
    "member id with a space": (
        _member_key("budget is 10k"),
        "deltas[0].observations[0].key",
        "letters, digits",
    ),
    "a node's own name as member id": (
        _member_key("_members"),
        "deltas[0].observations[0].key",
        "start with a letter or digit",
    ),
    "long member id": (_member_key("u" * 129), "deltas[0].observations[0].key", "at most 128"),
    "empty member id": (_member_key(""), "deltas[0].observations[0].key", "required"),
    "long key": (_obs_field("key", "k" * 2001), "deltas[0].observations[0].key", "slot key"),
    "control key": (_obs_field("key", "a\x01"), "deltas[0].observations[0].key", "slot key"),
    "source": (_obs_field("source", "bad source"), "deltas[0].observations[0].source", "letters"),
    "blank statement": (
        _obs_field("statement", " "),
        "deltas[0].observations[0].statement",
        "blank",
    ),
    "long statement": (
        _obs_field("statement", "y" * 2001),
        "deltas[0].observations[0].statement",
        "at most 2000",
    ),
    "control statement": (
        _obs_field("statement", "ctl\x07"),
        "deltas[0].observations[0].statement",
        "control",
    ),
    "NaN confidence": (
        _obs_field("confidence", math.nan),
        "deltas[0].observations[0].confidence",
        "[0, 1]",
    ),
    "infinite confidence": (
        _obs_field("confidence", math.inf),
        "deltas[0].observations[0].confidence",
        "[0, 1]",
    ),
    "negative confidence": (
        _obs_field("confidence", -0.1),
        "deltas[0].observations[0].confidence",
        "[0, 1]",
    ),
    "confidence above 1": (
        _obs_field("confidence", 1.5),
        "deltas[0].observations[0].confidence",
        "[0, 1]",
    ),
    "too much evidence": (
        lambda m: [
            obs(m).evidence.add(kind=model_pb2.EVIDENCE_KIND_MESSAGE)
            for _ in range(LIMITS.max_evidence)
        ],
        "deltas[0].observations[0].evidence",
        f"at most {LIMITS.max_evidence}",
    ),
    "evidence kind": (
        _set(lambda m: obs(m).evidence[0], "kind", 8),
        "deltas[0].observations[0].evidence[0].kind",
        "no known evidence kind",
    ),
    "evidence ref": (
        _set(lambda m: obs(m).evidence[0], "ref", "r" * 1025),
        "deltas[0].observations[0].evidence[0].ref",
        "at most 1024",
    ),
    "evidence quote": (
        _set(lambda m: obs(m).evidence[0], "quote", "q\x00"),
        "deltas[0].observations[0].evidence[0].quote",
        "control",
    ),
    "evidence time": (
        _set(lambda m: obs(m).evidence[0].time, "seconds", 253402300800),
        "deltas[0].observations[0].evidence[0].time",
        "valid timestamp",
    ),
    "evidence nanos": (
        _set(lambda m: obs(m).evidence[0].time, "nanos", -1),
        "deltas[0].observations[0].evidence[0].time",
        "valid timestamp",
    ),
    "hlc": (_obs_field("hlc", 2**63), "deltas[0].observations[0].hlc", "range"),
    "keyed call agent": (
        _set(lambda m: m.keyed_calls[0], "agent", "bad agent"),
        "deltas[0].keyed_calls[0].agent",
        "letters",
    ),
    "keyed call key": (
        _set(lambda m: m.keyed_calls[0], "key", ""),
        "deltas[0].keyed_calls[0].key",
        "idempotency key",
    ),
    "keyed call key alphabet": (
        _set(lambda m: m.keyed_calls[0], "key", "bad key!"),
        "deltas[0].keyed_calls[0].key",
        "letters",
    ),
    "keyed call kind": (
        _set(lambda m: m.keyed_calls[0], "kind", 0),
        "deltas[0].keyed_calls[0].kind",
        "KEYED_CALL_KIND_RETRACT",
    ),
    "keyed call fingerprint": (
        _set(lambda m: m.keyed_calls[0], "fingerprint", b"short"),
        "deltas[0].keyed_calls[0].fingerprint",
        "16 bytes",
    ),
    "keyed call hlc": (
        _set(lambda m: m.keyed_calls[0], "hlc", 0),
        "deltas[0].keyed_calls[0].hlc",
        "[1, 2^63)",
    ),
    "keyed calls count": (
        lambda m: [m.keyed_calls.add().CopyFrom(m.keyed_calls[0]) for _ in range(64)],
        "deltas[0].keyed_calls",
        "at most 64",
    ),
    "origin": (_obs_field("origin", ""), "deltas[0].observations[0].origin", "required"),
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set(lambda m: m.subject, "tenant", "__cluster"), "deltas[0].subject.tenant"),
        (_set(lambda m: m.subject, "id", "_"), "deltas[0].subject.id"),
        (_obs_field("context", "_Members"), "deltas[0].observations[0].context"),
    ],
)
def test_a_node_s_own_name_holds_to_the_agents_rule_after_its_underscore(
    change: Callable[[State], object], field: str
) -> None:
    assert refused(change).field == field


@pytest.mark.parametrize("name", ["_members", "_cluster"])
def test_no_agent_can_write_a_node_s_own_name(name: str) -> None:
    assert validation.reserved(name)
    with pytest.raises(InvalidArgument):
        validation.context_name(name, "context", LIMITS)
    with pytest.raises(InvalidArgument):
        validation.identifier(name, "subject.tenant", LIMITS.max_id)


@pytest.mark.parametrize("case", BROKEN)
def test_a_state_breaking_one_rule_is_refused_naming_the_field(case: str) -> None:
    change, field, words = BROKEN[case]
    error = refused(change)
    assert error.field == field, str(error)
    assert words in error.description, str(error)


def test_a_state_with_more_dots_than_any_subject_may_hold_is_refused() -> None:
    def many(msg: State) -> None:
        msg.context.cloud.extend(
            sync_pb2.Dot(actor="support.1", counter=c)
            for c in range(1, validation.MAX_REMOTE_OBSERVATIONS + 1)
        )

    error = refused(many)
    assert error.field == "deltas[0]" and "more dots or observations" in error.description


def test_a_state_with_more_observations_than_any_subject_may_hold_is_refused() -> None:
    def many(msg: State) -> None:
        extra = [sync_pb2.StoredObservation()] * validation.MAX_REMOTE_OBSERVATIONS
        msg.observations.extend(extra)  # counted before any of them is looked at

    error = refused(many)
    assert error.field == "deltas[0]" and "more dots or observations" in error.description


ACCEPTED: dict[str, Callable[[State], object]] = {
    "confidence 0": _obs_field("confidence", 0.0),
    "confidence 1": _obs_field("confidence", 1.0),
    "counter 2^62": lambda m: (
        setattr(m.context.vector[0], "counter", 2**62),
        setattr(obs(m).dot, "counter", 2**62),
    ),
    "dot in the cloud": lambda m: (
        setattr(obs(m).dot, "actor", "support.1"),
        setattr(obs(m).dot, "counter", 5),
    ),
    "erase bound timestamp 2^63 - 1": _set(lambda m: m.erased, "hlc", 2**63 - 1),
    "statement of 2000": _obs_field("statement", "y" * 2000),
    "a normalized statement as key": _obs_field("key", "budget is 10k"),
    "16 evidence items": lambda m: [
        obs(m).evidence.add(kind=model_pb2.EVIDENCE_KIND_MESSAGE)
        for _ in range(LIMITS.max_evidence - 1)
    ],
    "no evidence time": lambda m: obs(m).evidence[0].ClearField("time"),
    "a node's own tenant": lambda m: setattr(m.subject, "tenant", "_cluster"),
    "a node's own subject id": lambda m: setattr(m.subject, "id", "_governance"),
    "a node's own context": _obs_field("context", "_members"),
    "a member id of 128": _member_key("U-1.x@y:z+" + "u" * 118),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_a_state_at_the_bound_of_a_rule_is_accepted(case: str) -> None:
    msg = valid()
    ACCEPTED[case](msg)
    check(msg)
