"""Anti-entropy in chunks: under the size, a large state in parts, a refused subject skipped."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from sync.antientropy import reconcile
from sync.bounds import state_bytes
from sync.causal import CausalContext, Dot
from sync.crdt import NO_ERASE, SubjectState, merge
from sync.observation import Subject, SubjectKind
from sync.ports import Exchanged, Merged, StatesRefused
from sync.replicator import PeerReplicator, SyncSettings
from tests.unit.strategies import observation
from tests.unit.test_replicator import Outbox

SUBJECTS = [Subject("acme", SubjectKind.USER, f"u-{i}") for i in range(6)]


def _state(subject: Subject, n: int, text: str = "x" * 500) -> SubjectState:
    held = {
        Dot("a.1", i): observation("a.1", i, key=f"k{i}", statement=text) for i in range(1, n + 1)
    }
    return SubjectState(subject, NO_ERASE, CausalContext.of(held), held)


class Replica:
    def __init__(self, states: Iterable[SubjectState]) -> None:
        self.held = {s.subject: s for s in states}
        self.merged: list[SubjectState] = []

    def merge(self, states: Iterable[SubjectState], source: str = "") -> Merged:
        states = list(states)
        self.merged += states
        return Merged(len(states), 0)

    def states(self, subjects: Iterable[Subject]) -> list[SubjectState]:
        return [self.held[s] for s in subjects if s in self.held]

    def bucket_hashes(self) -> list[bytes]:
        return [b"\x01" * 16]

    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]:
        return [(s, b"mine") for s in self.held]

    def acked(self, peer: str) -> int:
        return 0

    def set_acked(self, peer: str, seq: int) -> None:
        pass


class Peer:
    """Holds nothing; refuses any call carrying ``bad`` whole, and names ``limited`` refused."""

    def __init__(self, bad: Subject | None = None, limited: Subject | None = None) -> None:
        self.bad, self.limited = bad, limited
        self.calls: list[list[SubjectState]] = []
        self.held: dict[Subject, SubjectState] = {}

    def buckets(self) -> list[bytes]:
        return [bytes(16)]

    def digests(self, buckets: Sequence[int]) -> list[tuple[Subject, bytes]]:
        return []

    def exchange(self, states: Sequence[SubjectState]) -> Exchanged:
        self.calls.append(list(states))
        if any(s.subject == self.bad for s in states):
            raise StatesRefused("INVALID_ARGUMENT: states[0].subject.id: malformed")
        refused = []
        for s in states:
            if s.subject == self.limited:
                refused.append((s.subject, "past the limit"))
                continue
            self.held[s.subject] = merge(self.held.get(s.subject, SubjectState(s.subject)), s)
        return Exchanged([], refused)

    def replicate(self, batches: object) -> object:
        raise ConnectionError("not used")

    def close(self) -> None:
        pass


def test_chunks_stay_under_the_size_and_a_larger_state_travels_in_parts_that_merge_whole():
    small = [_state(s, 3) for s in SUBJECTS[:5]]
    large = _state(SUBJECTS[5], 40)
    peer = Peer()
    result = reconcile(Replica([*small, large]), peer, max_bytes=4000)
    assert result.subjects_differing == 6 and not result.skipped
    for call in peer.calls:
        assert len(call) == 1 or sum(map(state_bytes, call)) <= 4000
    assert sum(1 for call in peer.calls if call[0].subject == large.subject) > 3
    assert all(state_bytes(c[0]) <= 4000 for c in peer.calls if c[0].subject == large.subject)
    assert peer.held == {s.subject: s for s in [*small, large]}


def test_a_subject_the_peer_refuses_is_skipped_and_the_others_go_through():
    states = [_state(s, 2) for s in SUBJECTS]
    peer = Peer(bad=SUBJECTS[2], limited=SUBJECTS[4])
    result = reconcile(Replica(states), peer)
    assert [s for s, _ in result.skipped] == [SUBJECTS[2], SUBJECTS[4]]
    assert "malformed" in dict(result.skipped)[SUBJECTS[2]]
    assert set(peer.held) == set(SUBJECTS) - {SUBJECTS[2], SUBJECTS[4]}


def test_a_peer_that_refuses_a_subject_is_behind_until_a_round_gets_everything_through():
    states = [_state(s, 2) for s in SUBJECTS]
    peer = Peer(limited=SUBJECTS[1])
    replicator = PeerReplicator("support", Outbox(), Replica(states), lambda: peer, SyncSettings())
    replicator.run_anti_entropy(peer)
    first = replicator.state()
    assert first.skipped_subjects == 1 and first.lag_s >= 0
    replicator._behind_since -= 5.0  # type: ignore[operator]  # five seconds later
    replicator.run_anti_entropy(peer)
    assert replicator.state().lag_s >= 5.0  # still refused: the lag keeps growing
    peer.limited = None
    replicator.run_anti_entropy(peer)
    caught_up = replicator.state()
    assert caught_up.skipped_subjects == 0 and caught_up.lag_s == 0.0


def test_failed_sessions_are_counted_and_a_refusal_makes_the_peer_behind():
    class Refused(Exception):
        def code(self) -> object:
            return type("Code", (), {"name": "RESOURCE_EXHAUSTED"})()

    class Unreachable(Refused):
        def code(self) -> object:
            return type("Code", (), {"name": "UNAVAILABLE"})()

    replicator = PeerReplicator("support", Outbox(), Replica([]), Peer, SyncSettings())
    replicator._failed(Unreachable())
    assert replicator.state().failing_sessions == 1 and replicator.state().lag_s == 0.0
    replicator._failed(Refused())
    assert replicator.state().failing_sessions == 2 and replicator.state().lag_s > 0.0
    replicator.run_anti_entropy(Peer())
    assert replicator.state().failing_sessions == 0


class Backlog(Outbox):
    """An outbox whose oldest delta not yet acknowledged by the peer was written ``age_s`` ago."""

    def __init__(self, age_s: float) -> None:
        self.age_s = age_s

    def last_seq(self) -> int:
        return 10

    def oldest_unacked_ms(self, acked: int) -> int | None:
        return round((time.time() - self.age_s) * 1000) if self.age_s else None


def test_a_round_yields_to_a_connected_stream_behind_on_its_own_deltas_at_most_three_in_a_row():
    outbox = Backlog(age_s=5.0)
    replicator = PeerReplicator("support", outbox, Replica([]), Peer, SyncSettings())
    assert not replicator.yields_round()  # not connected: the stream is not at work on it
    replicator._set_connected(True)
    assert [replicator.yields_round() for _ in range(9)] == [True, True, True, False] * 2 + [True]
    outbox.age_s = 0.5  # within anti_entropy_yield_lag_s: the stream keeps up
    assert not replicator.yields_round()
    outbox.age_s = 5.0
    assert replicator.yields_round()
    replicator._fell_behind()  # behind for a reason the outbox does not show: no yielding
    assert not replicator.yields_round()
