"""Hybrid logical clock: wall-clock milliseconds with a logical counter, packed in one integer.

A timestamp is ``physical_ms << 16 | logical``, so timestamps compare as plain integers and fit a
uint64. A remote timestamp further ahead of the local wall clock than ``max_offset_ms`` is
refused and never moves the local clock: one bad clock cannot poison the cluster.

The same bound holds where timestamps are minted: ``now`` never returns a timestamp further
than ``max_offset_ms`` ahead of the local wall clock (peers would refuse it). A clock seeded with
a high-water mark beyond that (a run whose wall clock was ahead) raises ``ClockAheadError`` until
the wall clock catches up, unless the operator accepted the saved clock (``accept_ahead``).
"""

from __future__ import annotations

import threading
import time
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
        """How much longer ``now`` refuses to mint (0: it mints)."""
        if self.accept_ahead:
            return 0
        return max(0, physical_ms(self._last + 1) - self._wall() - self.max_offset_ms)

    def now(self) -> int:
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
