"""Admission of agent writes by replication lag (sync.admission): refused only while a peer's
stream is connected, acknowledging and falling behind; held until it is back to half the bound."""

from __future__ import annotations

import pytest

from sync.admission import Admission, Stream

BOUND = 2.0
WINDOW = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """A peer's stream over time: writes arrive at ``written`` deltas a second, the peer
    acknowledges ``acked`` a second (its last acknowledgement 0.2 s before the sample), and the
    lag is the oldest unacknowledged delta's age."""

    def __init__(self, name: str = "support") -> None:
        self.name = name
        self.head = 0
        self.acked = 0
        self.lag_s = 0.0
        self.connected = True
        self.dropped = False
        self.since_ack_s = float("inf")

    def step(self, written: int, acked: int, lag_s: float) -> Stream:
        self.head += written
        moved = min(self.head, self.acked + acked) > self.acked
        self.acked = min(self.head, self.acked + acked)
        self.since_ack_s = 0.2 if moved else self.since_ack_s + 1.0
        self.lag_s = lag_s
        return self.stream()

    def stream(self) -> Stream:
        return Stream(
            self.name,
            self.connected,
            self.dropped,
            self.acked,
            self.head,
            self.lag_s,
            self.since_ack_s,
        )


def admission(bound: float = BOUND) -> tuple[Admission, Clock]:
    clock = Clock()
    adm = Admission(bound, window_s=WINDOW, retry_after_s=1.0, max_retry_after_s=3.0, clock=clock)
    return adm, clock


def run(
    adm: Admission, clock: Clock, peer: Peer, seconds: int, written: int, acked: int, lag: float
) -> list[bool]:
    """One sample a second; whether writes were admitted after each."""
    admitted = []
    for _ in range(seconds):
        clock.now += 1.0
        adm.observe([peer.step(written, acked, lag)])
        admitted.append(adm.admitted)
    return admitted


# -- falling behind --------------------------------------------------------------------------


def test_writes_are_refused_while_a_connected_acknowledging_peer_falls_behind() -> None:
    adm, clock = admission()
    peer = Peer()
    assert run(adm, clock, peer, 4, written=60, acked=50, lag=1.0) == [True] * 4
    run(adm, clock, peer, 1, written=60, acked=50, lag=2.5)
    assert adm.held is not None
    assert (adm.held.peer, adm.held.lag_s, adm.held.max_lag_s) == ("support", 2.5, BOUND)


def test_a_backlog_longer_than_the_bound_to_take_refuses_before_its_oldest_delta_is_that_old() -> (
    None
):
    adm, clock = admission()
    peer = Peer()
    # Twice as many writes as acknowledgements: 200 deltas behind after 4 s, 4 s at 50/s.
    assert run(adm, clock, peer, 4, written=100, acked=50, lag=1.0) == [True] * 3 + [False]
    assert adm.held is not None and adm.held.lag_s == pytest.approx(4.0)


def test_the_retry_delay_is_about_how_long_the_backlog_takes_within_its_bounds() -> None:
    for written, delay in ((60, 1.0), (80, 2.4), (150, 3.0)):  # backlog 40, 120, 400 at 50/s
        adm, clock = admission()
        peer = Peer()
        run(adm, clock, peer, 4, written=written, acked=50, lag=2.5)
        assert adm.held is not None
        assert adm.held.retry_after_s == pytest.approx(delay), written


def test_a_lag_over_the_bound_with_a_shrinking_backlog_refuses_nothing() -> None:
    adm, clock = admission()
    peer = Peer()
    peer.head = 5000  # the backlog a heal left: long, and the peer takes it faster than writes
    assert run(adm, clock, peer, 20, written=100, acked=300, lag=30.0) == [True] * 20


def test_the_tail_of_a_burst_refuses_nothing_though_its_oldest_delta_passes_the_bound() -> None:
    adm, clock = admission()
    peer = Peer()
    assert run(adm, clock, peer, 3, written=50, acked=50, lag=0.1) == [True] * 3
    # 1,000 deltas at once, 400 left after a second: 1.7 s at the 233 a second acknowledged
    # over the window, within the bound.
    assert run(adm, clock, peer, 1, written=1000, acked=600, lag=0.9) == [True]
    # Its tail: the oldest delta left passes the bound, the backlog (longer than at the
    # window's start) shrinks.
    assert run(adm, clock, peer, 2, written=0, acked=200, lag=2.5) == [True] * 2


def test_a_backlog_growing_within_the_bound_refuses_nothing() -> None:
    adm, clock = admission()
    peer = Peer()
    # 5 deltas a second more than the peer takes: 100 behind after 20 s, about 1 s of them.
    assert run(adm, clock, peer, 20, written=100, acked=95, lag=BOUND) == [True] * 20


def test_no_trend_is_read_from_a_history_shorter_than_the_window() -> None:
    adm, clock = admission()
    peer = Peer()
    # Samples a second apart: the fourth is the first a window after the first.
    assert run(adm, clock, peer, 3, written=100, acked=50, lag=10.0) == [True] * 3
    assert run(adm, clock, peer, 1, written=100, acked=50, lag=10.0) == [False]


def test_the_peer_most_behind_is_named() -> None:
    adm, clock = admission()
    a, b = Peer("support"), Peer("billing")
    for lag in (1.0, 1.0, 1.0, 3.0):
        clock.now += 1.0
        adm.observe([a.step(100, 50, lag), b.step(100, 50, lag * 2)])
    assert adm.held is not None and adm.held.peer == "billing"


# -- hysteresis --------------------------------------------------------------------------------


def test_held_writes_stay_refused_until_the_lag_is_down_to_half_the_bound() -> None:
    adm, clock = admission()
    peer = Peer()
    run(adm, clock, peer, 4, written=100, acked=50, lag=2.5)
    assert not adm.admitted
    # Writes are refused: the backlog shrinks, and the lag under the bound is not enough.
    assert run(adm, clock, peer, 3, written=0, acked=50, lag=1.5) == [False] * 3
    assert run(adm, clock, peer, 1, written=0, acked=50, lag=BOUND / 2) == [True]
    # Admitted again, the lag climbing back under the bound refuses nothing.
    assert run(adm, clock, peer, 3, written=60, acked=50, lag=1.9) == [True] * 3


def test_a_lag_hovering_at_the_bound_flips_admission_at_most_once_per_crossing() -> None:
    adm, clock = admission()
    peer = Peer()
    lags = [1.0, 1.0, 1.0, 2.1, 1.9, 2.1, 1.9, 2.1, 1.9]
    admitted = [run(adm, clock, peer, 1, 51, 50, lag)[0] for lag in lags]
    assert admitted == [True, True, True, False, False, False, False, False, False]


# -- never for a partition ---------------------------------------------------------------------


def test_a_peer_out_of_reach_never_refuses_a_write() -> None:
    adm, clock = admission()
    peer = Peer()
    peer.connected = False
    assert run(adm, clock, peer, 30, written=100, acked=0, lag=60.0) == [True] * 30


def test_a_connected_peer_that_acknowledges_nothing_is_stalled_and_refuses_nothing() -> None:
    adm, clock = admission()
    peer = Peer()
    assert run(adm, clock, peer, 30, written=100, acked=0, lag=60.0) == [True] * 30


def test_a_peer_that_stalls_after_keeping_up_refuses_nothing_while_its_lag_passes_the_bound() -> (
    None
):
    adm, clock = admission()
    peer = Peer()
    assert run(adm, clock, peer, 5, written=100, acked=100, lag=0.1) == [True] * 5
    # Stalled (a blackhole): it last acknowledged about when its oldest pending delta was
    # written, so the time since then is its lag, which passes the bound a window before the
    # history shows no acknowledgement.
    admitted = []
    for second in range(1, 10):
        clock.now += 1.0
        peer.head += 100
        peer.since_ack_s = second + 0.2
        peer.lag_s = second + 0.1
        adm.observe([peer.stream()])
        admitted.append(adm.admitted)
    assert admitted == [True] * 9


def test_a_peer_that_connects_and_acknowledges_nothing_refuses_nothing() -> None:
    adm, clock = admission()
    peer = Peer()
    peer.head = 1000  # a backlog from before it connected
    assert run(adm, clock, peer, 10, written=100, acked=0, lag=30.0) == [True] * 10


def test_a_peer_behind_the_outbox_retention_refuses_nothing() -> None:
    adm, clock = admission()
    peer = Peer()
    peer.dropped = True
    assert run(adm, clock, peer, 10, written=100, acked=50, lag=60.0) == [True] * 10


def test_a_held_peer_that_disconnects_releases_writes_at_once() -> None:
    adm, clock = admission()
    peer = Peer()
    run(adm, clock, peer, 4, written=100, acked=50, lag=2.5)
    assert not adm.admitted
    peer.connected = False
    assert run(adm, clock, peer, 1, written=100, acked=0, lag=3.5) == [True]
    # Back, still behind: a new history must show it falling behind again first.
    peer.connected = True
    assert run(adm, clock, peer, 3, written=100, acked=50, lag=4.0) == [True, True, True]
    assert run(adm, clock, peer, 1, written=100, acked=50, lag=4.0) == [False]


def test_a_held_peer_that_stops_acknowledging_releases_writes() -> None:
    adm, clock = admission()
    peer = Peer()
    run(adm, clock, peer, 4, written=100, acked=50, lag=2.5)
    assert not adm.admitted
    admitted = run(adm, clock, peer, 4, written=0, acked=0, lag=6.0)
    assert admitted[-1] and not admitted[0], admitted  # within a window of its last ack


def test_a_peer_no_longer_replicated_to_releases_writes() -> None:
    adm, clock = admission()
    peer = Peer()
    run(adm, clock, peer, 4, written=100, acked=50, lag=2.5)
    assert not adm.admitted
    clock.now += 1.0
    assert adm.observe([]) is None and adm.admitted


def test_a_bound_of_zero_admits_every_write() -> None:
    adm, clock = admission(bound=0.0)
    peer = Peer()
    assert run(adm, clock, peer, 20, written=100, acked=50, lag=100.0) == [True] * 20
