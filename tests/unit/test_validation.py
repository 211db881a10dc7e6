"""node.validation on its own: what a valid request becomes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node import validation
from selfmodel.v1 import model_pb2, selfmodel_pb2


@given(st.integers(0, 253402300799), st.integers(0, 10**9 - 1))
def test_an_evidence_time_becomes_what_protobuf_reads_as_its_milliseconds(seconds, nanos):
    request = selfmodel_pb2.ObserveRequest(
        subject=model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u1"),
        context="budget",
        statement="has a budget",
        confidence=0.5,
        evidence=[model_pb2.Evidence(kind="message", ref="m1")],
    )
    request.evidence[0].time.seconds, request.evidence[0].time.nanos = seconds, nanos
    item = validation.observation(request, "", validation.Limits())
    assert item.evidence[0].time_ms == request.evidence[0].time.ToMilliseconds()
