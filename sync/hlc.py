"""Hybrid logical clock: wall-clock milliseconds with a logical counter, packed in one integer.

A timestamp is ``physical_ms << 16 | logical``, so timestamps compare as plain integers and fit a
uint64. A remote timestamp further ahead of the local wall clock than ``max_offset_ms`` is
refused and never moves the local clock: one bad clock cannot poison the cluster.
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


class HybridClock:
    """Monotonic across calls and across restarts (seeded with the persisted high-water mark)."""

    def __init__(
        self,
        wall: Callable[[], int] = wall_ms,
        max_offset_ms: int = 60_000,
        high_water: int = 0,
    ) -> None:
        self._wall = wall
        self.max_offset_ms = max_offset_ms
        self._last = high_water
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        with self._lock:
            candidate = pack(self._wall())
            self._last = candidate if candidate > self._last else self._last + 1
            return self._last

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
