"""Hostile input from a peer: Sync answers malformed states with a proper status and merges nothing.

The fuzzer calls `sales` as its peer `support` (a development cluster names peers by header on
loopback; under mutual TLS the certificate does), so every request reaches the merge path.
Derandomized: the same examples every run, so a failure replays.
"""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.client import user
from selfmodel.v1 import model_pb2, sync_pb2

pytestmark = pytest.mark.slow

PEER_MD = (("x-selfmodel-node", "support"),)
PROPER = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

ids = st.one_of(
    st.sampled_from(["fuzz", "u-1", "sales.1", "a" * 129, "", "bad id", "x\x00y", "ünï"]),
    st.text(max_size=12),
)
counters = st.one_of(st.sampled_from([0, 1, 2, 2**62, 2**64 - 1]), st.integers(0, 50))
floats = st.one_of(st.sampled_from([0.0, 1.0, -0.1, 1.5, math.nan, math.inf]), st.floats(0, 1))


@st.composite
def states(draw: st.DrawFn) -> sync_pb2.SubjectState:
    msg = sync_pb2.SubjectState()
    msg.erased.hlc = draw(st.sampled_from([0, 0, 1, 2**63]))
    for _ in range(draw(st.integers(0, 2))):
        msg.erased.seen.vector.add(actor=draw(ids), counter=draw(counters))
    if draw(st.integers(0, 9)):  # now and then no subject at all
        msg.subject.CopyFrom(
            model_pb2.Subject(
                tenant=draw(st.sampled_from(["fuzz", "", "bad tenant"])),
                kind=draw(st.sampled_from([0, 1, 2, 3, 99])),
                id=draw(ids),
            )
        )
    for _ in range(draw(st.integers(0, 3))):
        msg.context.vector.add(actor=draw(ids), counter=draw(counters))
    for _ in range(draw(st.integers(0, 2))):
        msg.context.cloud.add(actor=draw(ids), counter=draw(counters))
    for _ in range(draw(st.integers(0, 3))):
        o = msg.observations.add(
            context=draw(st.sampled_from(["facts", "", "Bad-Context", "x" * 70])),
            key=draw(st.sampled_from(["k", "", "a b", "\x01"])),
            source=draw(ids),
            statement=draw(st.sampled_from(["fact", "", " ", "y" * 2001, "ctl\x07"])),
            confidence=draw(floats),
            hlc=draw(st.sampled_from([1, 2**40, 2**63 + 5])),
            origin=draw(ids),
        )
        o.dot.actor = draw(ids)
        o.dot.counter = draw(counters)
        if draw(st.booleans()):  # make the dot part of the context half of the time
            msg.context.cloud.add(actor=o.dot.actor, counter=o.dot.counter)
        for _ in range(draw(st.sampled_from([0, 1, 17]))):
            o.evidence.add(kind="message", ref="r")
    if draw(st.booleans()):
        msg.events.add(actor=draw(ids), counter=draw(counters))
    return msg


def call(channel: grpc.Channel, method: str, payload: bytes | list[bytes]) -> grpc.StatusCode:
    try:
        if method == "Replicate":
            stream = channel.stream_stream(
                "/selfmodel.v1.Sync/Replicate",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for _ in stream(iter(payload), timeout=5, metadata=PEER_MD):  # type: ignore[arg-type]
                pass
        else:
            unary = channel.unary_unary(
                f"/selfmodel.v1.Sync/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            unary(payload, timeout=5, metadata=PEER_MD)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]


def test_sync_answers_malformed_peer_input_with_a_proper_status(make_cluster):
    cluster = make_cluster(("sales", "support"))
    with cluster.client("sales", "seeder", tenant="acme") as seeder:
        seeder.observe(user("seeded"), "Seeded fact", confidence=0.9, context="facts", key="k")
        before = seeder.self_model(user("seeded"), include_uncertain=True)
    channel = grpc.insecure_channel(cluster.address("sales"))
    seen: dict[str, set[grpc.StatusCode]] = {}

    @settings(
        max_examples=600,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        method=st.sampled_from(["Replicate", "ExchangeStates", "GetDigests", "GetBuckets", "raw"]),
        state=states(),
        buckets=st.lists(st.sampled_from([0, 1, 1023, 1024, 2**32 - 1]), max_size=3),
        junk=st.binary(max_size=64),
    )
    def one(method: str, state: sync_pb2.SubjectState, buckets: list[int], junk: bytes) -> None:
        if method == "Replicate":
            batch = sync_pb2.ReplicateBatch(origin="support", first_seq=1, last_seq=1)
            batch.deltas.append(state)
            code = call(channel, method, [batch.SerializeToString()])
        elif method == "ExchangeStates":
            code = call(channel, method, sync_pb2.StateExchange(states=[state]).SerializeToString())
        elif method == "GetDigests":
            code = call(
                channel, method, sync_pb2.GetDigestsRequest(buckets=buckets).SerializeToString()
            )
        elif method == "GetBuckets":
            code = call(channel, method, junk)
        else:
            code = call(channel, "ExchangeStates", junk)
        seen.setdefault(method, set()).add(code)
        assert code in PROPER, (method, code, state)

    try:
        one()
    finally:
        channel.close()
    assert grpc.StatusCode.INVALID_ARGUMENT in seen["ExchangeStates"]
    assert grpc.StatusCode.INVALID_ARGUMENT in seen["Replicate"]
    with grpc.insecure_channel(cluster.address("sales")) as health:
        reply = health_pb2_grpc.HealthStub(health).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with cluster.client("sales", "seeder", tenant="acme") as seeder:
        after = seeder.self_model(user("seeded"), include_uncertain=True)
    # the same causal position and the same stances (confidence itself decays with time)
    assert after.token == before.token
    assert [(b.key, b.statement, b.supporters) for b in after.all_beliefs] == [
        (b.key, b.statement, b.supporters) for b in before.all_beliefs
    ]
    assert "Traceback" not in cluster.nodes["sales"].log()
