"""The delta stream's receiving end against in-memory fakes of its ports (sync.receiver).

The replica fake keeps what was merged apart from what was made durable, so a test sees at
each acknowledgement exactly what it covers; deltas are told apart by their statements.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import pytest

from selfmodel.sync.v1 import sync_pb2
from sync.causal import CausalContext, Dot
from sync.codec import delta_to_proto
from sync.crdt import NO_ERASE, SubjectState
from sync.delivery import Delta
from sync.observation import Observation, Subject, SubjectKind
from sync.ports import DeltasMerged
from sync.receiver import ACK_INTERVAL_S, DeltaReceiver, StreamRefused

PEER = "support"
ACTOR = "support.7.5eed0001"  # one of `support`'s actors (<node>.<run>.<random>)
SUBJECT = Subject("acme", SubjectKind.USER, "u-1")
WALL_MS = 1_700_000_000_000


def delta(seq: int, statement: str = "", actor: str = ACTOR) -> sync_pb2.SubjectState:
    dot = Dot(actor, seq)
    obs = Observation(
        dot, "facts", f"k{seq}", "agent", statement or f"fact {seq}", 0.9, (), seq, PEER
    )
    state = SubjectState(SUBJECT, NO_ERASE, CausalContext.of([dot]), {dot: obs})
    return delta_to_proto(Delta(state, frozenset({dot})))


def batch(
    first: int, *deltas: sync_pb2.SubjectState, resent: bool = False
) -> sync_pb2.ReplicateRequest:
    """Outbox entries ``first``.. of the peer; without deltas, the sender asking for its ack."""
    last = first + len(deltas) - 1
    msg = sync_pb2.ReplicateRequest(origin=PEER, first_seq=first, last_seq=last, resent=resent)
    msg.deltas.extend(deltas)
    return msg


def entries(first: int, last: int) -> sync_pb2.ReplicateRequest:
    return batch(first, *(delta(seq) for seq in range(first, last + 1)))


def ask(position: int) -> sync_pb2.ReplicateRequest:
    return sync_pb2.ReplicateRequest(origin=PEER, first_seq=position + 1, last_seq=position)


class Replica:
    """The Replica port's receiving half: defers the deltas whose statement says "too new"
    (until ``allow_new``) and rejects those that say "too large", as the clock bound and the
    subject limits would; the rest merge, visible at once and durable at ``make_durable``."""

    def __init__(self) -> None:
        self.merged: list[str] = []  # statements, in the order merged
        self.durable = 0  # how many of ``merged`` are durable
        self.applied: int | None = None  # the stream's position, as written with the merges
        self.durable_applied = 0  # ... and as made durable
        self.allow_new = False
        self.syncs = 0

    def merge_deltas(
        self, deltas: Sequence[Delta], source: str, applied: int | None
    ) -> DeltasMerged:
        assert source == PEER
        deferred, rejected, reason = [], [], ""
        for i, d in enumerate(deltas):
            (obs,) = d.state.observations.values()
            if "too new" in obs.statement and not self.allow_new:
                deferred.append(i)
                reason = reason or "observations[0].hlc: 600000 ms ahead of this node's clock"
            elif "too large" in obs.statement:
                rejected.append(i)
                reason = reason or "subject acme/u-1 would hold more than 2 observations"
            else:
                self.merged.append(obs.statement)
        if applied is not None:
            self.applied = applied
        return DeltasMerged(deferred, rejected, reason)

    def make_durable(self) -> None:
        self.syncs += 1
        self.durable = len(self.merged)
        if self.applied is not None:
            self.durable_applied = self.applied


class Screen:
    """Refuses the deltas whose statement says "broken", as a rule of the node would."""

    def __init__(self) -> None:
        self.deferrals: list[str] = []
        self.undeferred_peers: list[str] = []

    def refused(self, msg: sync_pb2.SubjectState, field: str, peer: str) -> str:
        broken = any("broken" in o.statement for o in msg.observations)
        return "counter: must be within [1, 2^62]" if broken else ""

    def deferred(self, peer: str, reason: str) -> None:
        self.deferrals.append(reason)

    def undeferred(self, peer: str) -> None:
        self.undeferred_peers.append(peer)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Stream:
    """Feeds batches to a receiver one by one, each at a time the test sets."""

    def __init__(self) -> None:
        self.replica, self.screen, self.clock = Replica(), Screen(), Clock()
        receiver = DeltaReceiver(
            self.replica, self.screen, lambda: WALL_MS, monotonic=self.clock.monotonic
        )
        self.pending: list[tuple[float, sync_pb2.ReplicateRequest]] = []
        self.acks = receiver.receive(PEER, self._requests())

    def _requests(self) -> Iterator[sync_pb2.ReplicateRequest]:
        while self.pending:
            self.clock.now, msg = self.pending.pop(0)
            yield msg

    def send(self, *msgs: sync_pb2.ReplicateRequest, at: float | None = None) -> None:
        self.pending.extend((self.clock.now if at is None else at, m) for m in msgs)

    def ack(self) -> sync_pb2.ReplicateResponse:
        """The next acknowledgement; every batch sent must have been taken in by then."""
        ack = next(self.acks)
        assert not self.pending, "acknowledged before taking in every batch sent"
        return ack

    def no_ack(self) -> None:
        """Every batch sent is taken in and none is acknowledged."""
        assert next(self.acks, None) is None


# -- acknowledgement interval -------------------------------------------------------------------


def test_a_stream_s_first_batch_is_acknowledged_at_once() -> None:
    stream = Stream()
    stream.send(entries(1, 3))
    ack = stream.ack()
    assert (ack.acked_seq, ack.refused, ack.wall_ms) == (3, 0, WALL_MS)


def test_batches_within_an_interval_of_the_last_ack_are_merged_but_not_acknowledged() -> None:
    stream = Stream()
    t = stream.clock.now
    stream.send(entries(1, 1))
    assert stream.ack().acked_seq == 1
    stream.send(entries(2, 5), entries(6, 9), at=t + ACK_INTERVAL_S * 0.9)
    stream.no_ack()
    assert stream.replica.merged == [f"fact {seq}" for seq in range(1, 10)]


def test_a_batch_an_interval_after_the_last_ack_is_acknowledged_on_its_own() -> None:
    stream = Stream()
    t = stream.clock.now
    stream.send(entries(1, 1))
    stream.ack()
    stream.send(entries(2, 3), at=t + ACK_INTERVAL_S / 2)
    stream.send(entries(4, 4), at=t + ACK_INTERVAL_S * 1.5)
    assert stream.ack().acked_seq == 4


def test_the_sender_s_ask_is_answered_at_once_with_everything_merged() -> None:
    stream = Stream()
    stream.send(entries(1, 1))
    stream.ack()
    stream.send(entries(2, 4), ask(4))  # within the interval: only the ask is answered
    assert stream.ack().acked_seq == 4
    assert stream.replica.syncs == 2


# -- merge before fsync -------------------------------------------------------------------------


def test_an_acknowledgement_never_covers_a_delta_not_yet_durable() -> None:
    stream = Stream()
    t = stream.clock.now

    def covered(ack: sync_pb2.ReplicateResponse) -> int:
        # When the ack leaves, what it covers is on disk: every delta, and the position.
        replica = stream.replica
        assert replica.durable == len(replica.merged) == ack.acked_seq
        assert replica.durable_applied == ack.acked_seq
        return ack.acked_seq

    stream.send(entries(1, 2))
    assert covered(stream.ack()) == 2  # the first batch
    stream.send(entries(3, 3), entries(4, 8), ask(8))
    assert covered(stream.ack()) == 8  # asked for, after batches merged without an ack
    stream.send(entries(9, 9), at=t + ACK_INTERVAL_S / 2)
    stream.send(entries(10, 12), at=t + ACK_INTERVAL_S * 2)
    assert covered(stream.ack()) == 12  # on its own, an interval on


def test_the_stream_position_is_written_with_its_merge_and_a_resent_delta_does_not_move_it() -> (
    None
):
    stream = Stream()
    stream.send(entries(1, 5))
    stream.ack()
    assert stream.replica.applied == 5
    resent = batch(3, delta(3, "fact 3 again"), resent=True)
    stream.send(resent, at=stream.clock.now + ACK_INTERVAL_S * 2)
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.merged_seqs)) == (5, [3])
    assert stream.replica.applied == stream.replica.durable_applied == 5


def test_a_stream_that_opens_with_a_resent_delta_records_no_position() -> None:
    stream = Stream()
    stream.send(batch(2, delta(2), resent=True))  # a new session resends before it streams
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.merged_seqs)) == (0, [2])
    assert stream.replica.applied is None


# -- refused deltas -----------------------------------------------------------------------------


def test_a_rejected_delta_is_named_once_and_the_stream_goes_on() -> None:
    stream = Stream()
    stream.send(batch(1, delta(1), delta(2, "broken"), delta(3)))
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.rejected_seqs), ack.refused) == (3, [2], 1)
    assert ack.reason == "counter: must be within [1, 2^62]"
    assert list(ack.deferred_seqs) == [] and list(ack.merged_seqs) == []
    assert stream.replica.merged == ["fact 1", "fact 3"]
    # The stream is not wedged: later deltas merge, and the refusal is not named again.
    stream.send(entries(4, 6), ask(6))
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.rejected_seqs), ack.refused, ack.reason) == (6, [], 0, "")
    assert stream.replica.merged == ["fact 1", "fact 3", "fact 4", "fact 5", "fact 6"]


def test_a_delta_past_the_subject_limits_is_rejected_with_the_replica_s_reason() -> None:
    stream = Stream()
    stream.send(batch(1, delta(1, "too large"), delta(2)))
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.rejected_seqs), ack.refused) == (2, [1], 1)
    assert "more than 2 observations" in ack.reason
    assert stream.replica.merged == ["fact 2"]


def test_a_deferred_delta_is_named_not_merged_and_not_acknowledged_as_merged() -> None:
    stream = Stream()
    stream.send(batch(1, delta(1), delta(2, "too new"), delta(3)))
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.deferred_seqs), ack.refused) == (3, [2], 1)
    assert list(ack.merged_seqs) == [] and list(ack.rejected_seqs) == []
    assert "ahead of this node's clock" in ack.reason
    assert stream.replica.merged == ["fact 1", "fact 3"]
    assert len(stream.screen.deferrals) == 1
    # Sent again while still too new: deferred again, never named as merged.
    stream.send(batch(2, delta(2, "too new"), resent=True), ask(3))
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.deferred_seqs), list(ack.merged_seqs)) == (3, [2], [])
    assert stream.screen.undeferred_peers == []
    # Once the clock allows it: merged, named as merged, and a later deferral is news again.
    stream.replica.allow_new = True
    stream.send(batch(2, delta(2, "too new"), resent=True), ask(3))
    ack = stream.ack()
    assert (ack.acked_seq, list(ack.deferred_seqs), list(ack.merged_seqs)) == (3, [], [2])
    assert stream.replica.merged == ["fact 1", "fact 3", "too new"]
    assert stream.screen.undeferred_peers == [PEER]


# -- what a stream may carry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "status", "says"),
    [
        (
            sync_pb2.ReplicateRequest(origin="billing", first_seq=1, last_seq=0),
            "PERMISSION_DENIED",
            "may not send deltas of 'billing'",
        ),
        (
            batch(1, delta(1), delta(2, actor="billing.3.5eed0002")),
            "PERMISSION_DENIED",
            "deltas[1]: peer support may send dots of its own actors only",
        ),
        (
            sync_pb2.ReplicateRequest(origin=PEER, first_seq=1, last_seq=3, deltas=[delta(1)]),
            "INVALID_ARGUMENT",
            "the batch holds 1 deltas for sequences 1..3",
        ),
    ],
    ids=["another node's batch", "another node's dot", "a miscounted batch"],
)
def test_a_stream_breaking_the_protocol_ends_with_a_status_and_merges_nothing(
    msg: sync_pb2.ReplicateRequest, status: str, says: str
) -> None:
    stream = Stream()
    stream.send(msg)
    with pytest.raises(StreamRefused, match=re.escape(says)) as refused:
        next(stream.acks)
    assert refused.value.status == status
    assert stream.replica.merged == []
