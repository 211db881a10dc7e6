"""Subject states and handoff tokens survive their protobuf form unchanged."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2
from sync.causal import CausalContext, Dot
from sync.codec import (
    InvalidToken,
    decode_state,
    decode_token,
    encode_delta,
    encode_state,
    encode_state_reusing,
    encode_token,
    encode_token_entry,
    merge_tokens,
    token_of_entries,
)
from sync.crdt import NO_ERASE, EraseBound, SubjectState
from sync.delivery import Delta
from sync.observation import Evidence, Subject, SubjectKind
from tests.unit.strategies import (
    SUBJECT,
    VALUES,
    Run,
    contexts,
    dots,
    observation,
    random_states,
    runs,
    subjects,
)

OTHER = Subject("acme", SubjectKind.TEAM, "t-7")


@VALUES
@given(state=random_states())
def test_a_state_round_trips_through_its_encoding(state: SubjectState) -> None:
    raw = encode_state(state)
    back = decode_state(raw)
    assert back == state
    assert encode_state(back) == raw  # deterministic bytes: equal states store equal values
    assert back.digest() == state.digest()


@VALUES
@given(run=runs)
def test_every_state_of_a_replicated_run_round_trips(run: Run) -> None:
    for state in [*run.deltas, *run.replicas]:
        assert decode_state(encode_state(state)) == state


# The encoders as first written: the stored states, outbox deltas and tokens already out there
# hold these bytes, so a faster encoder must produce exactly the same ones.
def _reference_subject(subject: Subject) -> model_pb2.Subject:
    return model_pb2.Subject(tenant=subject.tenant, kind=int(subject.kind), id=subject.id)  # type: ignore[arg-type]


def _reference_context(context: CausalContext, msg: sync_pb2.CausalContext) -> None:
    for actor, counter in sorted(context.vector.items()):
        msg.vector.add(actor=actor, counter=counter)
    for dot in sorted(context.cloud):
        msg.cloud.add(actor=dot.actor, counter=dot.counter)


def _reference_state(state: SubjectState) -> sync_pb2.SubjectState:
    msg = sync_pb2.SubjectState()
    msg.subject.CopyFrom(_reference_subject(state.subject))
    if state.erased.hlc or not state.erased.seen.is_empty():
        msg.erased.hlc = state.erased.hlc
        _reference_context(state.erased.seen, msg.erased.seen)
    _reference_context(state.context, msg.context)
    for dot in sorted(state.observations):
        obs = state.observations[dot]
        o = msg.observations.add(
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
            e = o.evidence.add()
            e.kind = model_pb2.EvidenceKind.Value(
                f"EVIDENCE_KIND_{ev.kind.upper() or 'UNSPECIFIED'}"
            )
            e.ref = ev.ref
            e.quote = ev.quote
            if ev.time_ms:
                e.time.FromMilliseconds(ev.time_ms)
        if obs.request_key:
            o.request_key = obs.request_key
            o.request_index = obs.request_index
        if obs.based_on is not None:
            o.based_on.SetInParent()
            _reference_context(obs.based_on, o.based_on)
    for (context, key, source), hlc in sorted(state.withdrawals.items()):
        msg.withdrawals.add(context=context, key=key, source=source, hlc=hlc)
    for (agent, key), call in sorted(state.keyed_calls.items()):
        msg.keyed_calls.add(
            agent=agent,
            key=key,
            kind=sync_pb2.KeyedCallKind.Value(f"KEYED_CALL_KIND_{call.op.upper()}"),
            fingerprint=call.fingerprint,
            hlc=call.hlc,
            retracted=call.retracted,
        )
    return msg


def _reference_delta(delta: Delta) -> bytes:
    msg = _reference_state(delta.state)
    for dot in sorted(delta.events or ()):
        msg.events.add(actor=dot.actor, counter=dot.counter)
    return msg.SerializeToString(deterministic=True)


def _reference_token(positions: dict[Subject, CausalContext]) -> str:
    msg = sync_pb2.HandoffToken()
    for subject in sorted(positions):
        p = msg.positions.add()
        p.subject.CopyFrom(_reference_subject(subject))
        _reference_context(positions[subject], p.context)
    return base64.urlsafe_b64encode(msg.SerializeToString(deterministic=True)).decode().rstrip("=")


@VALUES
@given(state=random_states(), events=st.one_of(st.none(), st.frozensets(dots, max_size=4)))
def test_states_and_deltas_encode_to_the_bytes_of_the_reference_encoder(
    state: SubjectState, events: frozenset[Dot] | None
) -> None:
    assert encode_state(state) == _reference_state(state).SerializeToString(deterministic=True)
    assert encode_delta(Delta(state, events)) == _reference_delta(Delta(state, events))


@VALUES
@given(positions=st.dictionaries(subjects, contexts, max_size=4))
def test_tokens_encode_to_the_characters_of_the_reference_encoder(
    positions: dict[Subject, CausalContext],
) -> None:
    assert encode_token(positions) == _reference_token(positions)


@VALUES
@given(states=st.lists(random_states(), max_size=4, unique_by=lambda s: s.subject))
def test_a_token_made_from_the_entries_of_encoded_states_is_their_token(
    states: list[SubjectState],
) -> None:
    """A write's token comes from the entry its state's encoding starts with (node.store)."""
    states.sort(key=lambda s: s.subject)
    token = token_of_entries([encode_state_reusing(s).token_entry for s in states])
    assert token == encode_token({s.subject: s.context for s in states})


@VALUES
@given(state=random_states(), before=random_states())
def test_a_state_encoded_reusing_earlier_bytes_has_exactly_the_bytes_of_encode_state(
    state: SubjectState, before: SubjectState
) -> None:
    stale = encode_state_reusing(before).observations  # others, perhaps under the same dots
    raw, token_entry, encoded = encode_state_reusing(state, stale)
    assert raw == encode_state(state)
    assert token_entry == encode_token_entry(state.subject, state.context)
    assert raw.startswith(token_entry)
    assert set(encoded) == set(state.observations)
    assert encode_state_reusing(state, encoded).raw == raw


@VALUES
@given(state=random_states())
def test_encoded_bytes_are_reused_for_the_very_observation_object_only(
    state: SubjectState,
) -> None:
    encoded = encode_state_reusing(state).observations
    copies = {dot: (obs._replace(), b"not these") for dot, (obs, _) in encoded.items()}
    assert encode_state_reusing(state, copies).raw == encode_state(state)  # equal, not the same
    marks = {dot: (obs, b"<%d>" % i) for i, (dot, (obs, _)) in enumerate(sorted(encoded.items()))}
    head = encode_state(
        state._replace(observations={}, erased=NO_ERASE, withdrawals={}, keyed_calls={})
    )
    bound = encode_state(state._replace(observations={}))[len(head) :]  # fields 6-8, after them
    reused = encode_state_reusing(state, marks).raw
    assert reused == head + b"".join(mark for _, mark in marks.values()) + bound


@VALUES
@given(state=random_states(), before=random_states())
def test_a_state_encoded_reusing_parses_to_the_message_of_the_state(
    state: SubjectState, before: SubjectState
) -> None:
    raw = encode_state_reusing(state, encode_state_reusing(before).observations).raw
    assert sync_pb2.SubjectState.FromString(raw) == _reference_state(state)


@pytest.mark.parametrize("actors", [0, 1, 9, 1_200])  # each length a varint of 1, 2 or 3 bytes
def test_a_token_of_entries_parses_to_the_handoff_token_of_those_positions(actors: int) -> None:
    contexts = [CausalContext({f"n{i}.1.{j:04x}": j + 1 for j in range(actors)}) for i in range(3)]
    subjects = sorted([SUBJECT, OTHER, Subject("acme", SubjectKind.USER, "u" * 200)])
    entries = [encode_token_entry(s, c) for s, c in zip(subjects, contexts, strict=True)]
    token = token_of_entries(entries)
    parsed = sync_pb2.HandoffToken.FromString(
        base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    )
    assert list(parsed.positions) == [sync_pb2.SubjectPosition.FromString(e) for e in entries]
    assert decode_token(token) == dict(zip(subjects, contexts, strict=True))


@pytest.mark.parametrize("length", [0, 100, 127, 128, 2_000, 16_383, 16_384, 300_000])
def test_observations_of_every_length_encode_reusing_to_the_bytes_of_encode_state(length: int):
    obs = observation("a.1", 1, statement="x" * length)
    state = SubjectState(SUBJECT, NO_ERASE, CausalContext.of([obs.dot]), {obs.dot: obs})
    assert encode_state_reusing(state).raw == encode_state(state)


def test_evidence_time_and_every_observation_field_survive() -> None:
    obs = observation(
        "a.1",
        3,
        evidence=(Evidence("ticket", "zendesk://1", "we have ten seats", 1_700_000_000_123),),
        confidence=0.8125,
        origin="sales",
        request_key="call-7",
        request_index=2,
    )
    state = SubjectState(SUBJECT, EraseBound(4), CausalContext.of([obs.dot]), {obs.dot: obs})
    (back,) = decode_state(encode_state(state)).observations.values()
    assert back == obs and (back.request_key, back.request_index) == ("call-7", 2)
    assert encode_state(state) == _reference_state(state).SerializeToString(deterministic=True)
    assert back.evidence[0].time_ms == 1_700_000_000_123


@VALUES
@given(positions=st.dictionaries(subjects, contexts, max_size=4))
def test_a_token_round_trips(positions: dict[Subject, CausalContext]) -> None:
    token = encode_token(positions)
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")  # safe in a header
    assert decode_token(token) == positions


def _ctx(*dots: tuple[str, int]) -> CausalContext:
    return CausalContext.of(Dot(a, c) for a, c in dots)


def test_merge_tokens_keeps_the_later_position_of_each_subject() -> None:
    early = encode_token({SUBJECT: _ctx(("a.1", 1)), OTHER: _ctx(("a.1", 1))})
    later = encode_token({SUBJECT: _ctx(("a.1", 1), ("a.1", 2))})
    erased = encode_token({OTHER: _ctx(("a.1", 1), ("b.1", 1))})
    merged = decode_token(merge_tokens([early, later, erased]))
    assert merged == {SUBJECT: _ctx(("a.1", 1), ("a.1", 2)), OTHER: _ctx(("a.1", 1), ("b.1", 1))}
    assert decode_token(merge_tokens([erased, later, early])) == merged  # in any order


def test_merge_tokens_joins_concurrent_positions() -> None:
    a = encode_token({SUBJECT: _ctx(("a.1", 1), ("a.1", 2))})
    b = encode_token({SUBJECT: _ctx(("b.1", 1))})
    merged = decode_token(merge_tokens([a, b]))
    assert merged == {SUBJECT: _ctx(("a.1", 1), ("a.1", 2), ("b.1", 1))}


def test_merge_of_no_tokens_is_the_empty_token() -> None:
    assert decode_token(merge_tokens([])) == {}


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "not a token",
        "x",
        "AAAA",
        "hello-world",
        "😀",
        "!!!",  # no base64 character at all
        "$$$$",
        "Cg.A",
        "EAE=",  # padding is never part of a token
        "EA+E",  # standard, not URL-safe, base64
    ],
)
def test_a_garbage_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidToken, match="not a handoff token"):
        decode_token(token)
    with pytest.raises(InvalidToken):
        merge_tokens([encode_token({SUBJECT: _ctx(("a.1", 1))}), token])


@VALUES
@given(
    token=st.text(min_size=1, max_size=20).filter(
        lambda t: not set(t) <= set(string.ascii_letters + string.digits + "-_")
    )
)
def test_a_token_with_any_character_outside_its_alphabet_is_refused(token: str) -> None:
    """A mangled token must fail loudly, never read as "no position" (a silently stale read)."""
    with pytest.raises(InvalidToken):
        decode_token(token)


def test_a_token_naming_no_subject_kind_is_refused() -> None:
    # The bytes of a position whose subject has kind 0 (unspecified).
    with pytest.raises(InvalidToken):
        decode_token("CgIQBQ")
