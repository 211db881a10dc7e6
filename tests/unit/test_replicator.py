"""The delta stream's reconnects: backoff grows with consecutive failures only."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence

from tenacity import RetryCallState

from sync.crdt import SubjectState
from sync.observation import Subject
from sync.ports import Ack, Batch, Exchanged, Merged
from sync.replicator import PeerReplicator, SyncSettings
from sync.resend import Resends

BUCKETS = [bytes(16)] * 4


class Outbox:
    def read(self, after: int, limit: int, max_bytes: int = 0) -> Batch | None:
        return None

    def first_seq(self) -> int:
        return 1

    def last_seq(self) -> int:
        return 0

    def wait(self, after: int, timeout_s: float) -> bool:
        return False

    def trim(self, upto: int) -> None:
        pass

    def oldest_unacked_ms(self, acked: int) -> int | None:
        return None


class Replica:
    def merge(self, states: object, source: str = "") -> Merged:
        return Merged(0, 0)

    def states(self, subjects: object) -> list[SubjectState]:
        return []

    def bucket_hashes(self) -> list[bytes]:
        return list(BUCKETS)

    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]:
        return []

    def acked(self, peer: str) -> int:
        return 0

    def set_acked(self, peer: str, seq: int) -> None:
        pass


class Link:
    """Answers anti-entropy (nothing differs), then breaks once the stream starts."""

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]:
        raise ConnectionError("the link broke")

    def buckets(self) -> list[bytes]:
        return list(BUCKETS)

    def digests(self, buckets: Sequence[int]) -> list[tuple[Subject, bytes]]:
        return []

    def exchange(self, states: Sequence[SubjectState]) -> Exchanged:
        return Exchanged([])

    def close(self) -> None:
        pass


class Waits(threading.Event):
    """Records each backoff instead of sleeping; stops the loop after ``limit`` of them."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        super().__init__()
        self.limit = limit
        self.stop = stop
        self.seen: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.seen.append(timeout or 0.0)
        if len(self.seen) >= self.limit:
            self.stop.set()
        return False


def test_a_session_that_connects_then_fails_at_once_keeps_the_backoff_growing() -> None:
    """A peer that ends every stream as soon as it starts is not a session that got going:
    without this the stream retried several times a second for good (a jammed delta)."""
    random.seed(7)
    attempts = []

    def connect() -> Link:
        attempts.append(1)
        if len(attempts) <= 8:  # the peer is away for a while
            raise ConnectionError("connection refused")
        return Link()  # back: anti-entropy and the stream start, then the link breaks, again

    settings = SyncSettings(backoff_max_s=5.0)
    peer = PeerReplicator("billing", Outbox(), Replica(), connect, settings)
    waits = Waits(limit=14, stop=peer._stop)
    peer._retry = waits
    peer._stream_forever()
    assert len(waits.seen) == 14
    assert max(waits.seen[:8]) > 1.0  # backed off while the peer was away
    assert max(waits.seen[8:]) > 1.0, waits.seen  # and still does: nothing got through


class Acknowledging(Link):
    """Acknowledges what the stream sent, then breaks."""

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]:
        first = next(batches)
        yield Ack(first.last_seq)
        raise ConnectionError("the link broke")


def test_a_session_the_peer_acknowledged_deltas_in_resets_the_backoff() -> None:
    random.seed(7)
    attempts = []
    outbox = Growing(0)

    def connect() -> Link:
        attempts.append(1)
        if len(attempts) <= 8:
            raise ConnectionError("connection refused")
        outbox.end += 1  # a new write each time, which the next session delivers
        return Acknowledging()

    peer = PeerReplicator("billing", outbox, Replica(), connect, SyncSettings(backoff_max_s=5.0))
    waits = Waits(limit=14, stop=peer._stop)
    peer._retry = waits
    peer._stream_forever()
    assert max(waits.seen[:8]) > 1.0
    assert max(waits.seen[8:]) <= 0.2, waits.seen  # each failure follows progress: a first one
    assert peer.acked == 6


class Filled(Outbox):
    """Entries 1..3, then nothing new: every wait times out; the stream stops after ``waits``."""

    def __init__(self, peer_stop: threading.Event | None = None, waits: int = 3) -> None:
        self.waits: list[float] = []
        self.stop = peer_stop
        self.limit = waits

    def read(self, after: int, limit: int, max_bytes: int = 0) -> Batch | None:
        if after >= 3:
            return None
        return Batch(after + 1, 3, [b"d"] * (3 - after), 0)

    def last_seq(self) -> int:
        return 3

    def wait(self, after: int, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        if self.stop is not None and len(self.waits) >= self.limit:
            self.stop.set()
        return False


def test_an_idle_stream_asks_once_for_the_ack_of_what_it_sent() -> None:
    outbox = Filled()
    peer = PeerReplicator("billing", outbox, Replica(), Link, SyncSettings(ack_request_s=0.02))
    outbox.stop = peer._stop
    sent = list(peer._batches(0))
    assert sent[0] == Batch(1, 3, [b"d"] * 3, 0)
    # Nothing new within ack_request_s: a batch without deltas asks for the acknowledgement,
    # once; from then on the stream waits for new entries with the ordinary timeout.
    assert [(b.first_seq, b.last_seq, list(b.deltas)) for b in sent[1:]] == [(4, 3, [])]
    assert outbox.waits == [0.02, 0.5, 0.5]


def test_a_stream_whose_deltas_are_acknowledged_never_asks() -> None:
    outbox = Filled()
    peer = PeerReplicator("billing", outbox, Replica(), Link, SyncSettings())
    outbox.stop = peer._stop
    stream = peer._batches(0)
    next(stream)
    peer.acked = 3  # the receiver acknowledged on its own
    assert list(stream) == []
    assert outbox.waits == [0.5, 0.5, 0.5]


class Acked(Replica):
    def acked(self, peer: str) -> int:
        return 9  # written down before a machine crash took entries 4..9 of the outbox


class Growing(Outbox):
    """Entries 1..end; ``end`` moves as the node writes."""

    def __init__(self, end: int) -> None:
        self.end = end

    def read(self, after: int, limit: int, max_bytes: int = 0) -> Batch | None:
        if after >= self.end:
            return None
        return Batch(after + 1, self.end, [b"d"] * (self.end - after), 0)

    def last_seq(self) -> int:
        return self.end


def test_a_recorded_acknowledgement_past_the_outbox_s_end_streams_from_the_end() -> None:
    outbox = Growing(3)
    peer = PeerReplicator("billing", outbox, Acked(), Link, SyncSettings())
    assert peer.acked == 3
    outbox.end = 5  # the entries that take numbers 4 and 5 after the crash are new writes
    assert next(peer._batches(peer.acked)) == Batch(4, 5, [b"d", b"d"], 0)


class Recording(Replica):
    def __init__(self) -> None:
        self.written: list[int] = []

    def set_acked(self, peer: str, seq: int) -> None:
        self.written.append(seq)


def attempts_of(peer: PeerReplicator) -> list[int]:
    """Replaces the resend backoff with one that records its attempt numbers (and waits 0)."""
    seen: list[int] = []

    def wait(state: RetryCallState) -> float:
        seen.append(state.attempt_number)
        return 0.0

    peer.resends.wait = wait  # type: ignore[assignment]
    return seen


def test_a_deferred_delta_is_not_delivered_and_goes_again_alone_until_merged() -> None:
    outbox, replica = Growing(3), Recording()
    peer = PeerReplicator("billing", outbox, replica, Link, SyncSettings())
    attempts = attempts_of(peer)

    peer._acknowledged(Ack(3, deferred=[2], reason="observations[0].hlc: 600000 ms ahead"))

    assert peer.acked == 3 and peer.delivered == 1  # the outbox keeps 2 and what follows
    peer.persist()
    assert replica.written == [1]
    state = peer.state()
    assert (state.acked, state.pending, state.refused_clock) == (1, 1, 1)
    assert "ahead" in state.last_refusal
    # The stream goes on from 3; the deferred delta goes again alone, marked as resent.
    outbox.end = 4
    stream = peer._batches(3)
    assert next(stream) == Batch(2, 2, [b"d"], 0, resent=True)
    assert next(stream) == Batch(4, 4, [b"d"], 0)
    # Deferred again: resent again, with a backoff one step longer each round.
    peer._acknowledged(Ack(4, deferred=[2]))
    assert next(peer._resends(peer.resends.begin())) == Batch(2, 2, [b"d"], 0, resent=True)
    peer._acknowledged(Ack(4, deferred=[2]))
    assert attempts == [1, 2, 3]
    assert peer.state().refused_clock == 1  # one refusal, however often it went again
    # Merged at last: delivered, and the next refusal starts the backoff afresh.
    next(peer._resends(peer.resends.begin()))
    peer._acknowledged(Ack(4, merged=[2]))
    assert peer.delivered == 4 and peer.state().pending == 0
    peer.persist()
    assert replica.written == [1, 4]
    peer._acknowledged(Ack(4, deferred=[3]))
    assert attempts[-1] == 1


def test_a_rejected_delta_is_counted_and_not_sent_again() -> None:
    peer = PeerReplicator("billing", Growing(3), Recording(), Link, SyncSettings())
    peer._acknowledged(Ack(3, rejected=[2], reason="counter: must be within [1, 2^62]"))
    state = peer.state()
    assert (state.acked, state.pending, state.refused_invalid) == (3, 0, 1)
    assert list(peer._resends(peer.resends.begin())) == []


def test_a_deferred_delta_trimmed_meanwhile_is_left_to_anti_entropy() -> None:
    outbox = Growing(3)
    peer = PeerReplicator("billing", outbox, Recording(), Link, SyncSettings())
    attempts_of(peer)
    peer._acknowledged(Ack(3, deferred=[2]))
    outbox.read = lambda after, limit, max_bytes: Batch(3, 3, [b"d"], 0)  # type: ignore[method-assign]
    assert list(peer._resends(peer.resends.begin())) == []
    assert peer.delivered == 3


class Writing(Growing):
    """Each read finds one more entry written since the last."""

    def read(self, after: int, limit: int, max_bytes: int = 0) -> Batch | None:
        self.end += 1
        return super().read(after, limit, max_bytes)


def test_a_batch_right_after_another_lingers_and_carries_what_was_written_meanwhile() -> None:
    outbox = Writing(0)
    peer = PeerReplicator("billing", outbox, Replica(), Link, SyncSettings(linger_s=0.05))
    stream = peer._batches(0)
    started = time.monotonic()
    assert next(stream) == Batch(1, 1, [b"d"], 0)  # nothing sent before: goes at once
    first = time.monotonic()
    assert first - started < 0.05
    # Entry 2 is written just after: it waits out the linger, and entry 3, written meanwhile,
    # goes in the same batch.
    assert next(stream) == Batch(2, 3, [b"d", b"d"], 0)
    assert 0.05 <= time.monotonic() - first < 1.0


def test_a_batch_after_a_quiet_spell_does_not_linger() -> None:
    outbox = Writing(0)
    peer = PeerReplicator("billing", outbox, Replica(), Link, SyncSettings(linger_s=0.05))
    stream = peer._batches(0)
    next(stream)
    quiet = time.monotonic() + 0.05
    while time.monotonic() < quiet:  # the spell passes (bounded: 50 ms)
        time.sleep(0.01)
    asked = time.monotonic()
    assert next(stream) == Batch(2, 2, [b"d"], 0)
    assert time.monotonic() - asked < 0.05


def test_without_a_linger_every_batch_goes_at_once() -> None:
    outbox = Writing(0)
    peer = PeerReplicator("billing", outbox, Replica(), Link, SyncSettings())
    stream = peer._batches(0)
    assert [next(stream) for _ in range(3)] == [Batch(i, i, [b"d"], 0) for i in (1, 2, 3)]


class Quiet(Growing):
    """Entries 1..end and nothing new: each wait times out at once; after ``limit`` waits the
    replicator stops (so a stream that would wait for good ends, and the test with it)."""

    def __init__(self, end: int, limit: int) -> None:
        super().__init__(end)
        self.limit = limit
        self.waits = 0
        self.stop: threading.Event | None = None

    def wait(self, after: int, timeout_s: float) -> bool:
        self.waits += 1
        if self.stop is not None and self.waits >= self.limit:
            self.stop.set()
        return False


class Acked3(Replica):
    def acked(self, peer: str) -> int:
        return 3


class Deferring(Link):
    """A peer that defers delta 2 when it comes, then drops the stream. Like gRPC's request
    thread, the transport finishes the draw it was in from a stream after its session ended:
    ``late`` draws once more from the last stream."""

    def __init__(self) -> None:
        self.stream: Iterator[Batch] | None = None

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]:
        assert next(batches) == Batch(2, 2, [b"d"], 0, resent=True)
        self.stream = batches
        yield Ack(3, deferred=[2], reason="observations[0].hlc: 600000 ms ahead")
        raise ConnectionError("the peer restarted")

    def late(self) -> Batch | None:
        assert self.stream is not None
        return next(self.stream, None)


class Merging(Link):
    """The restarted peer, whose clock now allows delta 2: merges every delta resent."""

    def __init__(self) -> None:
        self.sent: list[Batch] = []

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]:
        self.sent = list(batches)  # until the stream ends (the outbox's waits stop it)
        yield Ack(3, merged=[b.first_seq for b in self.sent if b.resent])


def test_a_delta_deferred_before_a_reconnect_is_resent_by_the_next_session() -> None:
    """The stream of a session that ended resends nothing: were the transport's late draw from
    it to mark delta 2 as sent and awaiting an answer, no later session would send it again,
    and the peer would never be told it was merged (pending for good)."""
    outbox = Quiet(3, limit=8)
    before, after = Deferring(), Merging()
    late: list[Batch | None] = []

    def connect() -> Link:
        if before.stream is None:
            return before
        late.append(before.late())  # the session ended and was torn down; then the late draw
        return after

    peer = PeerReplicator("sales", outbox, Acked3(), connect, SyncSettings())
    outbox.stop = peer._stop
    attempts_of(peer)  # resends due at once
    peer._acknowledged(Ack(3, deferred=[2]))
    peer._retry = Waits(limit=5, stop=peer._stop)
    peer._stream_forever()

    assert Batch(2, 2, [b"d"], 0, resent=True) in after.sent
    state = peer.state()
    assert (state.pending, state.acked) == (0, 3)
    assert late == [None]  # the ended session's stream sent nothing more


def test_an_ended_session_resends_nothing_so_the_next_one_sends_every_deferred_delta() -> None:
    """Checked with the marking, under one lock: a stream that passed its session's check just
    before the session ended still leaves nothing in flight for the next one."""
    resends = Resends(1.0)
    resends.wait = lambda state: 0.0  # type: ignore[assignment]
    resends.take(Ack(3, deferred=[2]))
    ended = resends.begin()
    resends.unanswered()
    assert list(resends.due(Growing(3), 1024, ended)) == []
    assert resends.answered() and not resends.current(ended)
    assert list(resends.due(Growing(3), 1024, resends.begin())) == [
        Batch(2, 2, [b"d"], 0, resent=True)
    ]
