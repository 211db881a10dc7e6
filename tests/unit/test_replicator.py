"""The delta stream's reconnects: backoff grows with consecutive failures only."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence

from sync.crdt import SubjectState
from sync.observation import Subject
from sync.ports import Batch, Exchanged, Merged
from sync.replicator import PeerReplicator, SyncSettings

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

    def replicate(self, batches: Iterator[Batch]) -> Iterator[int]:
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


def test_a_session_that_got_going_resets_the_backoff_of_the_next_reconnect() -> None:
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
    # Every failure after a session that got going is a first failure: a short wait.
    assert max(waits.seen[8:]) <= 0.2, waits.seen


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
