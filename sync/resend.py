"""The deltas a peer deferred (a timestamp ahead of its clock bound), until it merges them.

A deferred delta is not delivered: the peer's position for trimming stays below it. It goes
again alone, marked as resent, with full-jitter backoff that grows with each round the peer
keeps deferring it; the deltas after it flow meanwhile. A delta rejected for good, or merged,
is forgotten; so is one the outbox no longer holds (anti-entropy ships its subject).

Resends belong to a session: the transport may draw once more from a stream after its session
ended (gRPC's request thread finishes the draw it is in), and a delta marked as sent by that
draw would wait for an answer no session gives, never to be sent again. So each stream resends
only while its session is the current one (``begin``, ``unanswered``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tenacity import RetryCallState, wait_random_exponential

from sync.ports import Ack, Batch, DeltaLog

# Deltas sent again per round; the rest wait for the next round.
RESEND_BATCH = 64


@dataclass(frozen=True, slots=True)
class Taken:
    """What one acknowledgement changed: the deltas it deferred that were not deferred yet,
    and how many stay deferred."""

    newly: Sequence[int]
    pending: int


class Resends:
    """One peer's deferred deltas. Thread-safe: the stream's request iterator (the transport's
    thread) resends, the session's thread takes in the acknowledgements."""

    def __init__(self, backoff_max_s: float, monotonic: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self.deferred: set[int] = set()
        self._in_flight: set[int] = set()  # resent by the current session, not yet answered
        self._session = 0  # the current session's number; ended sessions resend nothing
        self._round = 0
        self._at = 0.0
        self.wait = wait_random_exponential(multiplier=0.1, max=backoff_max_s)
        self._monotonic = monotonic

    def below(self, acked: int) -> int:
        """The position the peer holds everything up to: ``acked``, but below the oldest delta
        it deferred (what the outbox may be trimmed to)."""
        with self._lock:
            oldest = min(self.deferred, default=None)
        return acked if oldest is None else min(acked, oldest - 1)

    def pending(self) -> int:
        with self._lock:
            return len(self.deferred)

    def answered(self) -> bool:
        """Every delta resent has been answered."""
        with self._lock:
            return not self._in_flight

    def begin(self) -> int:
        """A session starts streaming: returns its number, for ``due`` and ``current``."""
        with self._lock:
            self._session += 1
            self._in_flight.clear()
            return self._session

    def current(self, session: int) -> bool:
        """``session`` has not ended: its stream may still send."""
        with self._lock:
            return session == self._session

    def unanswered(self) -> None:
        """The session ended: what it resent unanswered goes again with the next one, and its
        stream, should the transport draw from it again, resends nothing."""
        with self._lock:
            self._session += 1
            self._in_flight.clear()

    def take(self, ack: Ack) -> Taken:
        """Takes in what ``ack`` says of the deltas deferred, rejected and merged."""
        with self._lock:
            for seq in ack.merged:
                self.deferred.discard(seq)
                self._in_flight.discard(seq)
            newly = [seq for seq in ack.deferred if seq not in self.deferred]
            for seq in ack.deferred:
                self._in_flight.discard(seq)
                self.deferred.add(seq)
            for seq in ack.rejected:
                self._in_flight.discard(seq)
                self.deferred.discard(seq)
            if newly and self._round == 0:
                self._schedule()
            if not self.deferred:
                self._round = 0
            return Taken(newly, len(self.deferred))

    def _schedule(self) -> None:
        """Sets when deferred deltas go again: full jitter, growing with each round they stay
        deferred. Called with the lock held."""
        self._round += 1
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = self._round
        self._at = self._monotonic() + self.wait(state)

    def due(self, outbox: DeltaLog, max_bytes: int, session: int) -> Iterator[Batch]:
        """The deferred deltas due to go again, each alone (the peer may defer it again), for
        the stream of ``session``: none once it ended."""
        with self._lock:
            if session != self._session:  # marked in flight here, no session would answer them
                return
            if self._in_flight or not self.deferred or self._monotonic() < self._at:
                return
            due = sorted(self.deferred)[:RESEND_BATCH]
            self._in_flight.update(due)
            self._schedule()
        for seq in due:
            batch = outbox.read(seq - 1, 1, max_bytes)
            if batch is None or batch.first_seq != seq:  # trimmed: left to anti-entropy
                with self._lock:
                    self.deferred.discard(seq)
                    self._in_flight.discard(seq)
                continue
            yield Batch(seq, seq, batch.deltas[:1], batch.oldest_ms, resent=True)

    def due_in(self) -> float | None:
        """Seconds until deferred deltas go again; None while none wait or some are unanswered."""
        with self._lock:
            if self._in_flight or not self.deferred:
                return None
            return max(0.0, self._at - self._monotonic())


__all__ = ["RESEND_BATCH", "Resends", "Taken"]
