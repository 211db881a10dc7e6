"""Hybrid logical clock: wall-clock milliseconds with a logical counter, packed in one integer.

A timestamp is ``physical_ms << 16 | logical``, so timestamps compare as plain integers and fit a
uint64. A remote timestamp further ahead of the local wall clock than ``max_offset_ms`` is
refused and never moves the local clock: one bad clock cannot poison the cluster.

The same bound holds where timestamps are minted: ``now`` never returns a timestamp further
than ``max_offset_ms`` ahead of the local wall clock (peers would refuse it). A clock seeded with
a high-water mark beyond that (a run whose wall clock was ahead) raises ``ClockAheadError`` until
the wall clock catches up, unless the operator accepted the saved clock (``accept_ahead``).
And a node whose wall clock is itself ahead of a majority of the cluster's by more than the
offset (``PeerOffsets``, from its peers' replies) mints nothing until its clock is fixed: it takes
itself out of writing rather than pushing its skew onto the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(physical_ms: int, logical: int = 0) -> int:
    return (physical_ms << LOGICAL_BITS) | (logical & LOGICAL_MASK)


def physical_ms(timestamp: int) -> int:
    return timestamp >> LOGICAL_BITS


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ClockSkewError(Exception):
    """A remote timestamp is too far ahead of the local wall clock."""

    def __init__(self, remote_ms: int, local_ms: int, max_offset_ms: int) -> None:
        super().__init__(
            f"remote timestamp is {remote_ms - local_ms} ms ahead of the local clock "
            f"(maximum offset {max_offset_ms} ms)"
        )
        self.ahead_ms = remote_ms - local_ms


class ClockAheadError(Exception):
    """This node's clock is further ahead of its wall clock than the allowed offset: a timestamp
    minted now would be refused by every peer, so the node takes no writes until it is not."""

    def __init__(self, ahead_ms: int, max_offset_ms: int) -> None:
        self.ahead_ms = ahead_ms
        self.max_offset_ms = max_offset_ms
        self.wait_ms = ahead_ms - max_offset_ms
        super().__init__(
            f"this node's hybrid clock is {ahead_ms} ms ahead of its wall clock (saved by a run "
            f"whose clock was ahead), beyond max_clock_offset_ms = {max_offset_ms}: writes are "
            f"refused for another {self.wait_ms} ms, until the wall clock catches up "
            "(or restart the node with --accept-saved-clock)"
        )


class ClockAheadOfPeersError(ClockAheadError):
    """This node's wall clock is ahead of most of the cluster's by more than the offset."""

    def __init__(self, ahead_ms: int, max_offset_ms: int, peers: list[str]) -> None:
        Exception.__init__(
            self,
            f"this node's wall clock is at least {ahead_ms} ms ahead of its peers "
            f"{', '.join(peers)}, beyond max_clock_offset_ms = {max_offset_ms}: writes are "
            "refused until the clocks agree (fix this machine's clock, e.g. with NTP)",
        )
        self.ahead_ms = ahead_ms
        self.max_offset_ms = max_offset_ms
        self.wait_ms = 0
        self.peers = peers


class PeerOffsets:
    """How far this node's wall clock is ahead of each peer's, from the peers' replies.

    A sample is the local wall clock when a reply arrived minus the peer's wall clock when it
    answered: the true offset plus the reply's delay, never less. So the smallest of a peer's
    samples of the last ``window_ms`` is kept (a reply delayed by a pause or a slow link only
    makes the node look further ahead for as long as no fresher reply has come). Thread-safe.
    """

    def __init__(self, peers: int, window_ms: int = 10_000, samples: int = 16) -> None:
        self.peers = peers
        self.window_ms = window_ms
        self._samples: dict[str, deque[tuple[int, int]]] = {}
        self._max = samples
        self._lock = threading.Lock()
        # beyond()'s answer for a 100 ms step of the wall clock: every write asks.
        self._cached: tuple[int, int, tuple[int, list[str]] | None] = (-1, -1, None)

    def sample(self, peer: str, peer_wall_ms: int, local_ms: int) -> None:
        with self._lock:
            kept = self._samples.setdefault(peer, deque(maxlen=self._max))
            kept.append((local_ms, local_ms - peer_wall_ms))
            self._cached = (-1, -1, None)

    def ahead_ms(self, peer: str, now_ms: int) -> int | None:
        """The estimate for ``peer``, or None without a recent reply."""
        with self._lock:
            recent = [o for at, o in self._samples.get(peer, ()) if now_ms - at <= self.window_ms]
        return min(recent) if recent else None

    def beyond(self, max_offset_ms: int, now_ms: int) -> tuple[int, list[str]] | None:
        """``(ahead_ms, peers)`` when this node's clock is more than ``max_offset_ms`` ahead of a
        majority of the cluster (itself included, so a node of two never refuses on its own:
        which of the two is off cannot be told); else None."""
        step, bound, answer = self._cached
        if step == now_ms // 100 and bound == max_offset_ms:
            return answer
        answer = self._beyond(max_offset_ms, now_ms)
        self._cached = (now_ms // 100, max_offset_ms, answer)
        return answer

    def _beyond(self, max_offset_ms: int, now_ms: int) -> tuple[int, list[str]] | None:
        ahead = {}
        for peer in list(self._samples):
            offset = self.ahead_ms(peer, now_ms)
            if offset is not None and offset > max_offset_ms:
                ahead[peer] = offset
        if 2 * len(ahead) <= self.peers + 1:
            return None
        return min(ahead.values()), sorted(ahead)


class HybridClock:
    """Monotonic across calls and across restarts (seeded with the persisted high-water mark).

    ``now`` refuses (ClockAheadError) to mint a timestamp more than ``max_offset_ms`` ahead of
    the wall clock, unless ``accept_ahead``: then timestamps keep climbing from the saved mark,
    and peers hold them back (without acknowledging them) until their clocks allow them.
    """

    def __init__(
        self,
        wall: Callable[[], int] = wall_ms,
        max_offset_ms: int = 60_000,
        high_water: int = 0,
        *,
        accept_ahead: bool = False,
    ) -> None:
        self._wall = wall
        self.max_offset_ms = max_offset_ms
        self.accept_ahead = accept_ahead
        self._last = high_water
        self._lock = threading.Lock()
        self.peer_offsets: PeerOffsets | None = None  # set where the node has peers

    @property
    def last(self) -> int:
        return self._last

    def wall(self) -> int:
        """The wall clock this clock reads, in milliseconds."""
        return self._wall()

    def ahead_ms(self) -> int:
        """How far the clock is ahead of the wall clock (0 when it is not)."""
        return max(0, physical_ms(self._last) - self._wall())

    def refusing_ms(self) -> int:
        """How much longer ``now`` refuses to mint for the saved clock (0: it does not)."""
        if self.accept_ahead:
            return 0
        return max(0, physical_ms(self._last + 1) - self._wall() - self.max_offset_ms)

    def refusal(self) -> ClockAheadError | None:
        """Why ``now`` would refuse to mint now, or None."""
        if self.peer_offsets is not None:
            beyond = self.peer_offsets.beyond(self.max_offset_ms, self._wall())
            if beyond is not None:
                return ClockAheadOfPeersError(beyond[0], self.max_offset_ms, beyond[1])
        wait_ms = self.refusing_ms()
        if wait_ms:
            return ClockAheadError(wait_ms + self.max_offset_ms, self.max_offset_ms)
        return None

    def now(self) -> int:
        if self.peer_offsets is not None:
            beyond = self.peer_offsets.beyond(self.max_offset_ms, self._wall())
            if beyond is not None:
                raise ClockAheadOfPeersError(beyond[0], self.max_offset_ms, beyond[1])
        with self._lock:
            wall = self._wall()
            candidate = pack(wall)
            minted = candidate if candidate > self._last else self._last + 1
            if not self.accept_ahead and physical_ms(minted) > wall + self.max_offset_ms:
                raise ClockAheadError(physical_ms(minted) - wall, self.max_offset_ms)
            self._last = minted
            return minted

    def check(self, remote: int) -> None:
        """Raises ClockSkewError when ``remote`` is beyond the allowed offset; changes nothing."""
        local = self._wall()
        if physical_ms(remote) > local + self.max_offset_ms:
            raise ClockSkewError(physical_ms(remote), local, self.max_offset_ms)

    def observe(self, remote: int) -> None:
        """Moves the clock past an accepted remote timestamp (after ``check``)."""
        self.check(remote)
        with self._lock:
            if remote > self._last:
                self._last = remote
