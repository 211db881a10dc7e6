"""The sender serializes ReplicateRequest by hand (sync.codec.encode_batch); protobuf must read
exactly what it meant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfmodel.sync.v1 import sync_pb2
from sync.codec import encode_batch, encode_batch_origin
from sync.ports import Batch

seqs = st.one_of(
    st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 2**64 - 1]), st.integers(0, 2**64 - 1)
)


@st.composite
def deltas(draw: st.DrawFn) -> bytes:
    msg = sync_pb2.SubjectState()
    msg.erased.hlc = draw(seqs)
    msg.subject.tenant = draw(st.sampled_from(["acme", "", "t" * 200]))
    msg.subject.id = draw(st.text(max_size=40))
    for _ in range(draw(st.integers(0, 3))):
        o = msg.observations.add(statement=draw(st.text(max_size=300)), confidence=0.5)
        o.dot.actor, o.dot.counter = "sales.1", draw(seqs)
    return msg.SerializeToString(deterministic=True)


@given(
    origin=st.sampled_from(["", "sales", "a-node-with-a-long-name" * 8, "ünï"]),
    first=seqs,
    last=seqs,
    raws=st.lists(deltas(), max_size=4),
    resent=st.booleans(),
)
def test_a_hand_serialized_batch_is_the_bytes_protobuf_would_write(
    origin: str, first: int, last: int, raws: list[bytes], resent: bool
) -> None:
    ours = encode_batch(encode_batch_origin(origin), Batch(first, last, raws, 0, resent))
    expected = sync_pb2.ReplicateRequest(
        origin=origin, first_seq=first, last_seq=last, resent=resent
    )
    for raw in raws:
        expected.deltas.add().MergeFromString(raw)
    assert ours == expected.SerializeToString(deterministic=True)
    parsed = sync_pb2.ReplicateRequest.FromString(ours)
    assert (parsed.origin, parsed.first_seq, parsed.last_seq, parsed.resent) == (
        origin,
        first,
        last,
        resent,
    )
    assert [d.SerializeToString(deterministic=True) for d in parsed.deltas] == raws


@pytest.mark.parametrize("length", [0, 127, 128, 16_383, 16_384, 3_000_000])
def test_a_delta_of_any_length_is_framed_as_protobuf_frames_it(length: int) -> None:
    msg = sync_pb2.SubjectState()
    msg.subject.id = "x" * length
    raw = msg.SerializeToString(deterministic=True)
    ours = encode_batch(encode_batch_origin("sales"), Batch(7, 7, [raw], 0))
    parsed = sync_pb2.ReplicateRequest.FromString(ours)
    assert list(parsed.deltas) == [msg]
    assert ours == sync_pb2.ReplicateRequest(
        origin="sales", first_seq=7, last_seq=7, deltas=[msg]
    ).SerializeToString(deterministic=True)
