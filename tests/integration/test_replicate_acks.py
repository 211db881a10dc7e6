"""The delta stream's acknowledgements, against a real node: in order, and asked for.

The test calls `sales` as its peer `support` (peers are named by header on loopback) and
drives the stream by hand, so it sees exactly which batches `sales` acknowledges.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator

import grpc

from federation.client import user
from node.replication import NODE_HEADER
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from sync.causal import CausalContext, Dot
from sync.codec import delta_to_proto
from sync.crdt import NO_ERASE, SubjectState
from sync.delivery import Delta
from sync.hlc import HybridClock
from sync.observation import Observation, Subject, SubjectKind

PEER_MD = ((NODE_HEADER, "support"),)
SUBJECT = Subject("acme", SubjectKind.USER, "acked")
ACTOR = "support.99.5eed0001"  # an actor of `support` (<node>.<run>.<random>)


def batch(seq: int, clock: HybridClock) -> sync_pb2.ReplicateRequest:
    """Outbox entry ``seq`` of `support`: the slot's newest fact, replacing the previous one."""
    dot = Dot(ACTOR, seq)
    obs = Observation(
        dot, "facts", "k", "peer_agent", f"fact {seq}", 0.9, (), clock.now(), "support"
    )
    dots = [dot] + ([Dot(ACTOR, seq - 1)] if seq > 1 else [])
    delta = Delta(
        SubjectState(SUBJECT, NO_ERASE, CausalContext.of(dots), {dot: obs}), frozenset(dots)
    )
    msg = sync_pb2.ReplicateRequest(origin="support", first_seq=seq, last_seq=seq)
    msg.deltas.append(delta_to_proto(delta))
    return msg


def test_the_receiver_coalesces_acks_and_answers_an_ask_at_once(make_cluster):
    cluster = make_cluster(("sales", "support"))
    stub = sync_pb2_grpc.SyncServiceStub(grpc.insecure_channel(cluster.address("sales")))
    clock = HybridClock()
    outgoing: queue.Queue[sync_pb2.ReplicateRequest | None] = queue.Queue()
    acks: queue.Queue[int] = queue.Queue()

    def requests() -> Iterator[sync_pb2.ReplicateRequest]:
        while (msg := outgoing.get()) is not None:
            yield msg

    call = stub.Replicate(requests(), metadata=PEER_MD, timeout=30)

    def read_acks() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for ack in call:
                acks.put(ack.acked_seq)

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    try:
        outgoing.put(batch(1, clock))
        assert acks.get(timeout=10) == 1  # the first batch of a stream is acknowledged at once

        for seq in range(2, 42):
            outgoing.put(batch(seq, clock))
        # Every batch is merged (and visible) whether or not it was acknowledged on its own.
        with cluster.client("sales", "reader") as reader_client:
            deadline = time.monotonic() + 10
            while [
                b.statement for b in reader_client.self_model(user("acked")).beliefs("facts")
            ] != ["fact 41"]:
                assert time.monotonic() < deadline, "the stream's last delta never showed"
                time.sleep(0.005)
        seen = []
        while not acks.empty():
            seen.append(acks.get())
        # Acknowledgements only move forward. How many there are depends on the interval
        # (tests/unit/test_ack_coalescing.py counts them on a clock it moves).
        assert seen == sorted(seen) and all(1 < s <= 41 for s in seen), seen

        # A batch without deltas asks: it is answered at once with everything merged so far.
        outgoing.put(sync_pb2.ReplicateRequest(origin="support", first_seq=42, last_seq=41))
        while (final := acks.get(timeout=10)) != 41:
            assert final < 41
    finally:
        outgoing.put(None)
        call.cancel()
        reader.join(5)
