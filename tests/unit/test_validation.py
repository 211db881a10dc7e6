"""node.validation on its own: what a valid request becomes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node import validation
from node.errors import InvalidArgument
from node.validation import Limits
from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.causal import MAX_COUNTER, CausalContext, Dot, counter_in_range
from sync.codec import encode_token
from sync.observation import Subject, SubjectKind


@given(st.integers(0, 253402300799), st.integers(0, 10**9 - 1))
def test_an_evidence_time_becomes_what_protobuf_reads_as_its_milliseconds(seconds, nanos):
    request = selfmodel_pb2.ObserveRequest(
        subject=model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u1"),
        context="budget",
        statement="has a budget",
        confidence=0.5,
        evidence=[model_pb2.Evidence(kind=model_pb2.EVIDENCE_KIND_MESSAGE, ref="m1")],
    )
    request.evidence[0].time.seconds, request.evidence[0].time.nanos = seconds, nanos
    item = validation.observation(request, "", validation.Limits())
    assert item.evidence[0].time_ms == request.evidence[0].time.ToMilliseconds()


# -- counters and erase bounds: one bound, from agents, peers and anti-entropy alike ----------

U1 = Subject("acme", SubjectKind.USER, "u-1")


def remote(counter: int, erased_hlc: int | None = None, seen: int = 1) -> sync_pb2.SubjectState:
    msg = sync_pb2.SubjectState()
    if erased_hlc is not None:
        msg.erased.hlc = erased_hlc
        msg.erased.seen.vector.add(actor="sales.1.abcd", counter=seen)
    msg.subject.tenant, msg.subject.kind, msg.subject.id = "acme", 1, "u-1"
    msg.context.vector.add(actor="sales.1.abcd", counter=counter)
    return msg


@given(st.integers(-(2**64), 2**64))
def test_a_counter_is_in_range_exactly_when_every_replica_accepts_it(counter: int) -> None:
    assert counter_in_range(counter) == (1 <= counter <= MAX_COUNTER)


def test_a_peer_state_at_the_counter_bound_passes_and_one_past_it_is_refused() -> None:
    validation.remote_state(remote(MAX_COUNTER), "deltas[0]", Limits())
    try:
        validation.remote_state(remote(MAX_COUNTER + 1), "deltas[0]", Limits())
    except InvalidArgument as exc:
        assert exc.field == "deltas[0].context.vector[0].counter"
        assert "2^62" in exc.description and str(MAX_COUNTER + 1) in exc.description
    else:
        raise AssertionError("a counter past the bound passed")


def test_a_peer_state_with_an_erase_bound_out_of_range_is_refused() -> None:
    validation.remote_state(remote(1, 2**63 - 1, MAX_COUNTER), "states[0]", Limits())
    for bad, field in (
        (remote(1, 2**63), "states[0].erased.hlc"),
        (remote(1, 0), "states[0].erased.hlc"),
        (remote(1, 1, MAX_COUNTER + 1), "states[0].erased.seen.vector[0].counter"),
    ):
        try:
            validation.remote_state(bad, "states[0]", Limits())
        except InvalidArgument as exc:
            assert exc.field == field, (exc.field, field)
        else:
            raise AssertionError(f"an erase bound out of range passed: {field}")


def test_an_agents_handoff_token_holds_to_the_same_counter_bound() -> None:
    ok = encode_token({U1: CausalContext({"sales.1.abcd": MAX_COUNTER})})
    assert validation.handoff_token(ok, "at_least", Limits())
    for context in (
        CausalContext({"sales.1.abcd": MAX_COUNTER + 1}),
        CausalContext({}, frozenset([Dot("sales.1.abcd", MAX_COUNTER + 1)])),
    ):
        token = encode_token({U1: context})
        try:
            validation.handoff_token(token, "at_least", Limits())
        except InvalidArgument as exc:
            assert exc.field.startswith("at_least")
            assert "2^62" in exc.description
        else:
            raise AssertionError("a token naming a counter past the bound passed")
