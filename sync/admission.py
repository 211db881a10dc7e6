"""Admission of agent writes by replication lag: overload slows writes down instead of letting
a delta stream fall behind without bound.

A node takes agent writes as fast as they come; its peers merge its deltas at their own pace.
When they merge them more slowly than the writes come, the stream's backlog grows, and so does
the wait of every read elsewhere with a handoff token of a write here. Admission refuses agent
writes (node.admission: UNAVAILABLE, REPLICATION_BEHIND, with a retry delay of about the
backlog's time, within [retry_after_s, max_retry_after_s]) while the delta stream to some peer
is

- connected (the stream is up: a peer out of reach is a partition, and writes go on: AP),
- acknowledging: its acknowledged position moved within the last half of its lag, and within
  ``window_s``. A link that takes deltas and answers nothing is stalled, a partition too: it
  has acknowledged nothing since about when its oldest unacknowledged delta was written, so the
  time since its last acknowledgement is about its lag, where a slow peer's acknowledgements
  keep coming while its lag grows,
- within the outbox retention (a dropped peer is caught up by anti-entropy, not the stream),
- behind by more than ``max_lag_s``: the age of its oldest unacknowledged delta
  (``Stream.lag_s``) or, when longer, how long its backlog takes at the rate the peer
  acknowledged over the last ``window_s`` (what a write taken now would wait: under a steady
  overload the newest delta waits longer than the oldest has, by the ratio of the write rate to
  the peer's; holding writes on the oldest's age alone would let the lag overshoot the bound by
  that ratio),
- and falling further: its backlog did not shrink over the last ``window_s``, nor since the
  previous sample. A long backlog that shrinks (a stream catching up after a heal, the tail of
  a burst) never refuses a write.

Hysteresis: once refusing for a peer, admission goes on refusing for it until it is within half
the bound (``max_lag_s / 2``) by both measures, or it disconnects, stalls or is dropped. While
writes are refused the backlog shrinks by itself, so "not shrinking" cannot be the condition to
hold on; and without the lower mark writes would resume the moment the lag dips under the bound
and be refused again a sample later.

The decision is made on samples (``observe``, from the sync housekeeping once a second), and
read on the write path as one attribute, ``held`` (None: writes are admitted): no lock, no I/O.
Time is the injected ``clock`` (monotonic seconds); a stream's lag is measured on this node
alone, so the peers' clocks never enter it. ``max_lag_s`` at 0 admits every write.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sync.settings import ADMISSION_MAX_RETRY_S, ADMISSION_RETRY_S, ADMISSION_WINDOW_S


@dataclass(frozen=True, slots=True)
class Stream:
    """What admission sees of the delta stream to one peer at one instant."""

    peer: str
    connected: bool
    dropped: bool  # behind the outbox retention (sync.replicator)
    acked: int  # the position the peer acknowledged
    head: int  # the outbox's last position: the backlog is head - acked
    lag_s: float  # the age of the oldest delta after ``acked`` (0 when there is none)
    # Since the acknowledged position last moved in this session (inf: not yet).
    since_ack_s: float = float("inf")

    @property
    def backlog(self) -> int:
        return max(0, self.head - self.acked)


@dataclass(frozen=True, slots=True)
class Held:
    """Why writes are refused: the peer most behind of those falling behind, and its lag."""

    peer: str
    lag_s: float
    max_lag_s: float
    retry_after_s: float


class Admission:
    """Whether agent writes are admitted (``held`` is None), from the peers' streams sampled
    by ``observe``. Keeps per peer the samples of the last ``window_s`` (one more, the
    reference at or before its start): a few per peer at one sample a second."""

    def __init__(
        self,
        max_lag_s: float,
        *,
        window_s: float = ADMISSION_WINDOW_S,
        retry_after_s: float = ADMISSION_RETRY_S,
        max_retry_after_s: float = ADMISSION_MAX_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag_s = max_lag_s
        self.window_s = window_s
        self.retry_after_s = retry_after_s
        self.max_retry_after_s = max_retry_after_s
        self._clock = clock
        self.held: Held | None = None
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}  # (time, acked, backlog)
        self._holding: set[str] = set()  # peers writes are refused for

    @property
    def admitted(self) -> bool:
        return self.held is None

    def observe(self, streams: Iterable[Stream]) -> Held | None:
        """Takes in one sample of every peer's stream; returns (and sets) ``held``."""
        now = self._clock()
        worst: tuple[float, Stream] | None = None
        seen: set[str] = set()
        for stream in streams:
            seen.add(stream.peer)
            behind = self._behind(stream, now)
            if behind is not None and (worst is None or behind > worst[0]):
                worst = (behind, stream)
        for gone in set(self._samples) - seen:  # a peer no longer replicated to
            del self._samples[gone]
            self._holding.discard(gone)
        if worst is None:
            self.held = None
        else:
            behind, stream = worst
            retry = min(self.max_retry_after_s, max(self.retry_after_s, self._drain_s(stream)))
            self.held = Held(stream.peer, behind, self.max_lag_s, retry)
        return self.held

    def _drain_s(self, stream: Stream) -> float:
        """How long the stream's backlog takes at the rate the peer acknowledged over the
        window: what a write taken now would wait (inf while it acknowledges nothing)."""
        samples = self._samples[stream.peer]
        start, acked_then, _ = samples[0]
        now, acked, backlog = samples[-1]
        if backlog == 0:
            return 0.0
        rate = (acked - acked_then) / max(now - start, 1e-9)
        return backlog / rate if rate > 0 else float("inf")

    def _behind(self, stream: Stream, now: float) -> float | None:
        """How far behind ``stream`` holds writes back (seconds), or None when it does not
        (see the module docstring)."""
        if self.max_lag_s <= 0 or not stream.connected or stream.dropped:
            self._samples.pop(stream.peer, None)  # a new connection starts a new history
            self._holding.discard(stream.peer)
            return None
        samples = self._samples.setdefault(stream.peer, deque())
        while len(samples) >= 2 and samples[1][0] <= now - self.window_s:
            samples.popleft()  # samples[0] stays the newest at or before the window's start
        last = samples[-1][2] if samples else stream.backlog
        samples.append((now, stream.acked, stream.backlog))
        start, _, backlog_then = samples[0]
        held = stream.peer in self._holding
        if now - start < self.window_s:
            # Too short a history to tell a trend: a peer already held stays held (its history
            # is never cut short while connected), a new one is not.
            return stream.lag_s if held else None
        acknowledging = stream.since_ack_s < min(self.window_s, stream.lag_s / 2)
        behind = max(stream.lag_s, self._drain_s(stream))
        if held:
            stalled = not acknowledging and stream.backlog > 0
            if stalled or behind <= self.max_lag_s / 2:
                self._holding.discard(stream.peer)
                return None
            return behind
        # Falling further: more behind than at the window's start and than a sample ago (the
        # tail of a burst, longer than at the start but shrinking now, is not).
        growing = stream.backlog >= max(backlog_then, last)
        if acknowledging and growing and behind > self.max_lag_s:
            self._holding.add(stream.peer)
            return behind
        return None


__all__ = ["Admission", "Held", "Stream"]
