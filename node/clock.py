"""The node's hybrid clock at start: seeded with the saved high-water mark, and said loudly when
that mark is beyond the wall clock plus max_clock_offset_ms (see sync.hlc and docs/operating.md).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

from node import metrics
from sync.hlc import HybridClock, wall_ms

log = logging.getLogger("selfmodel.node")

# For tests only: milliseconds added to the wall clock the node reads, to run a node whose clock
# is off (as a machine whose clock jumped). Logged as TEST ONLY at start.
CLOCK_OFFSET_ENV = "SELFMODEL_TEST_CLOCK_OFFSET_MS"


class ClockConfig(Protocol):
    """The settings start_clock reads (node.config.NodeConfig has them)."""

    name: str
    max_clock_offset_ms: int
    accept_saved_clock: bool
    clock_offset_ms: int


def start_clock(config: ClockConfig, high_water: int) -> HybridClock:
    """The node's hybrid clock, seeded with its saved high-water mark; says loudly when that
    mark is beyond the wall clock plus max_clock_offset_ms, and what the node does about it."""
    wall = wall_ms
    offset = config.clock_offset_ms or int(os.environ.get(CLOCK_OFFSET_ENV, "0") or 0)
    if offset:
        log.warning("TEST ONLY: node %s reads its wall clock %+d ms off", config.name, offset)

        def wall() -> int:
            return wall_ms() + offset

    clock = HybridClock(
        wall,
        max_offset_ms=config.max_clock_offset_ms,
        high_water=high_water,
        accept_ahead=config.accept_saved_clock,
    )
    metrics.CLOCK_AHEAD.set_function(lambda: clock.ahead_ms() / 1000)
    ahead = clock.ahead_ms()
    if ahead <= config.max_clock_offset_ms:
        clock.accept_ahead = False  # the override is for this start's jump only
        return clock
    if config.accept_saved_clock:
        log.warning(
            "CLOCK AHEAD: node %s's saved clock is %d ms ahead of its wall clock (beyond "
            "max_clock_offset_ms = %d); taking writes anyway (--accept-saved-clock): peers hold "
            "its new deltas back, unacknowledged, for up to %d ms until their clocks allow them",
            config.name,
            ahead,
            config.max_clock_offset_ms,
            ahead - config.max_clock_offset_ms,
        )
        return clock
    wait_ms = clock.refusing_ms()
    log.error(
        "CLOCK AHEAD: node %s's saved clock is %d ms ahead of its wall clock (a run whose clock "
        "was ahead saved it), beyond max_clock_offset_ms = %d: refusing writes (UNAVAILABLE) "
        "for %d ms, until the wall clock catches up; reads and replication go on. To write "
        "now with the saved clock, restart with --accept-saved-clock",
        config.name,
        ahead,
        config.max_clock_offset_ms,
        wait_ms,
    )
    timer = threading.Timer(wait_ms / 1000 + 0.01, _clock_caught_up, (config.name, clock))
    timer.daemon = True
    timer.start()
    return clock


def _clock_caught_up(name: str, clock: HybridClock) -> None:
    if clock.refusing_ms():
        timer = threading.Timer(clock.refusing_ms() / 1000 + 0.01, _clock_caught_up, (name, clock))
        timer.daemon = True
        timer.start()
        return
    log.warning("node %s: the wall clock caught up with the saved clock; taking writes", name)


def clock_refusal(clock: HybridClock) -> str:
    """Why the clock refuses writes now, or "" when it does not."""
    refusal = clock.refusal()
    return "" if refusal is None else f"clock ahead: {refusal}"


__all__ = ["CLOCK_OFFSET_ENV", "clock_refusal", "start_clock"]
