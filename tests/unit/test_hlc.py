"""The hybrid logical clock: monotonic, seeded across restarts, and immune to one bad clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.hlc import (
    LOGICAL_MASK,
    ClockAheadError,
    ClockAheadOfPeersError,
    ClockSkewError,
    HybridClock,
    PeerOffsets,
    pack,
    physical_ms,
)
from tests.unit.strategies import VALUES

T0 = 1_700_000_000_000


class FakeWall:
    """A wall clock the test sets, forwards and backwards."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_pack_orders_by_physical_time_then_logical_counter() -> None:
    assert physical_ms(pack(T0, 5)) == T0
    assert pack(T0, 0) < pack(T0, 1) < pack(T0, LOGICAL_MASK) < pack(T0 + 1, 0)


def test_now_follows_the_wall_clock_when_it_moves_forward() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    assert clock.now() == pack(T0)
    wall.ms += 250
    assert clock.now() == pack(T0 + 250)
    assert clock.last == pack(T0 + 250)


def test_now_stays_monotonic_when_the_wall_clock_goes_backward() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    first = clock.now()
    wall.ms -= 5_000
    second = clock.now()
    third = clock.now()
    assert first < second < third
    assert physical_ms(third) == T0  # the logical counter advances, not a fake physical time


@VALUES
@given(steps=st.lists(st.integers(-10_000, 10_000), max_size=50))
def test_now_is_strictly_increasing_whatever_the_wall_clock_does(steps: list[int]) -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    stamps = [clock.now()]
    for step in steps:
        wall.ms += step
        stamps.append(clock.now())
        assert physical_ms(stamps[-1]) >= wall.ms  # never behind the wall clock
    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_logical_overflow_still_increases() -> None:
    clock = HybridClock(FakeWall(), high_water=pack(T0, LOGICAL_MASK))
    assert clock.now() == pack(T0 + 1, 0)


def test_a_seeded_high_water_mark_is_respected_after_a_restart() -> None:
    """A node that restarts with its wall clock behind its persisted high water never goes back."""
    high_water = pack(T0 + 60_000, 7)
    clock = HybridClock(FakeWall(T0), high_water=high_water)
    assert clock.last == high_water
    assert clock.now() == high_water + 1
    assert clock.now() == high_water + 2


def test_a_remote_timestamp_beyond_the_maximum_offset_is_refused_and_moves_nothing() -> None:
    wall = FakeWall()
    clock = HybridClock(wall, max_offset_ms=1_000)
    before = clock.now()
    remote = pack(T0 + 1_001)
    with pytest.raises(ClockSkewError) as refused:
        clock.check(remote)
    assert refused.value.ahead_ms == 1_001
    assert "1001 ms ahead" in str(refused.value)
    with pytest.raises(ClockSkewError):
        clock.observe(remote)
    assert clock.last == before
    assert clock.now() == before + 1  # the wall did not move: only the logical counter did


def test_a_remote_timestamp_at_the_maximum_offset_is_accepted() -> None:
    clock = HybridClock(FakeWall(), max_offset_ms=1_000)
    clock.check(pack(T0 + 1_000, LOGICAL_MASK))
    clock.observe(pack(T0 + 1_000, 3))
    assert clock.last == pack(T0 + 1_000, 3)


def test_an_accepted_remote_timestamp_ahead_moves_the_clock_past_it() -> None:
    clock = HybridClock(FakeWall(), max_offset_ms=60_000)
    clock.now()
    remote = pack(T0 + 30_000, 9)
    clock.observe(remote)
    assert clock.last == remote
    assert clock.now() > remote


def test_a_remote_timestamp_behind_does_not_move_the_clock_back() -> None:
    clock = HybridClock(FakeWall())
    ours = clock.now()
    clock.observe(pack(T0 - 10_000))
    assert clock.last == ours
    assert clock.now() > ours


def test_a_saved_clock_beyond_the_offset_mints_nothing_until_the_wall_clock_catches_up() -> None:
    """The bound holds where timestamps are minted: peers would refuse anything beyond it."""
    wall = FakeWall()
    saved = pack(T0 + 150_000)
    clock = HybridClock(wall, max_offset_ms=60_000, high_water=saved)
    assert clock.ahead_ms() == 150_000
    assert clock.refusing_ms() == 90_000
    with pytest.raises(ClockAheadError) as refused:
        clock.now()
    assert (refused.value.ahead_ms, refused.value.wait_ms) == (150_000, 90_000)
    assert "150000 ms ahead" in str(refused.value)
    assert "max_clock_offset_ms = 60000" in str(refused.value)
    assert "--accept-saved-clock" in str(refused.value)
    assert clock.last == saved  # a refusal moves nothing
    wall.ms += 89_999
    assert clock.refusing_ms() == 1
    with pytest.raises(ClockAheadError):
        clock.now()
    wall.ms += 1
    assert clock.refusing_ms() == 0
    assert clock.now() == saved + 1


def test_the_operator_may_accept_a_saved_clock_ahead() -> None:
    clock = HybridClock(
        FakeWall(), max_offset_ms=60_000, high_water=pack(T0 + 150_000), accept_ahead=True
    )
    assert clock.refusing_ms() == 0
    assert clock.now() == pack(T0 + 150_000) + 1


@VALUES
@given(
    saved_ahead=st.integers(-100_000, 300_000),
    steps=st.lists(st.integers(-5_000, 50_000), max_size=30),
)
def test_no_timestamp_is_ever_minted_beyond_the_wall_clock_plus_the_offset(
    saved_ahead: int, steps: list[int]
) -> None:
    wall = FakeWall()
    clock = HybridClock(wall, max_offset_ms=60_000, high_water=pack(T0 + saved_ahead))
    minted = []
    for step in steps:
        wall.ms += step
        try:
            minted.append(clock.now())
        except ClockAheadError:
            assert clock.refusing_ms() > 0
            continue
        assert physical_ms(minted[-1]) <= wall.ms + 60_000
    assert all(a < b for a, b in itertools.pairwise(minted))


# -- a node ahead of most of its cluster takes itself out of writing --------------------------


def test_a_node_ahead_of_a_majority_of_its_cluster_mints_nothing() -> None:
    wall = FakeWall()
    clock = HybridClock(wall, max_offset_ms=60_000)
    clock.peer_offsets = offsets = PeerOffsets(peers=2)
    offsets.sample("a", T0 - 600_000, T0)  # this node's clock is 10 minutes ahead of a's
    assert clock.refusal() is None  # one peer of three nodes is no majority
    clock.now()
    offsets.sample("b", T0 - 600_000, T0)
    refusal = clock.refusal()
    assert isinstance(refusal, ClockAheadOfPeersError)
    assert refusal.peers == ["a", "b"] and refusal.ahead_ms == 600_000
    assert "ahead of its peers a, b" in str(refusal)
    before = clock.last
    with pytest.raises(ClockAheadOfPeersError):
        clock.now()
    assert clock.last == before
    wall.ms += 10_001  # the samples age out: no recent evidence, no refusal
    assert clock.refusal() is None


def test_the_smallest_recent_sample_counts_a_late_reply_does_not_refuse() -> None:
    offsets = PeerOffsets(peers=2)
    offsets.sample("a", T0 - 100, T0)
    offsets.sample("a", T0 - 90_000, T0 + 10)  # a reply read 90 s late (a pause): not an offset
    offsets.sample("b", T0 - 200, T0)
    assert offsets.ahead_ms("a", T0 + 10) == 100
    assert offsets.beyond(60_000, T0 + 10) is None


def test_in_a_cluster_of_two_neither_node_refuses_on_its_own() -> None:
    """Which of two clocks is off cannot be told: the peer holds back what is too new."""
    offsets = PeerOffsets(peers=1)
    offsets.sample("a", T0 - 600_000, T0)
    assert offsets.beyond(60_000, T0) is None
