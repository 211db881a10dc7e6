"""Causal delivery of deltas: a delta is merged only once its dependencies are known here.

A delta names in its context the dots it creates (its events) and the dots it supersedes or
retracts. If a replica merged a delta naming a dot it had never seen, that dot would enter the
context without its own effects (what *it* superseded), and the context would claim a position
the replica does not hold: a handoff read could be stale. So a delta waits here until every dot
it names but does not create is in the replica's context. An erase's delta names only its own
dot (its bound reaches observations wherever they are), so it is always ready. Whole states
(anti-entropy) carry their full causal past and are always ready. A delta held too long is
harmless: the digests differ, so anti-entropy ships the whole state, after which the held delta
is ready or redundant.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

from sync.causal import CausalContext, Dot
from sync.crdt import SubjectState, merge
from sync.observation import Subject


class Delta(NamedTuple):
    """A state to merge and the dots of the events it creates; ``events`` None: a whole state."""

    state: SubjectState
    events: frozenset[Dot] | None = None


def ready(state: SubjectState, delta: Delta) -> bool:
    if delta.events is None:
        return True  # a whole state
    return state.context.join(CausalContext.of(delta.events)).includes(delta.state.context)


class CausalBuffer:
    """Deltas held back per subject; thread-safe, bounded (the oldest are dropped first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._held: dict[Subject, list[Delta]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self.dropped = 0

    @property
    def held(self) -> int:
        return self._count

    def apply(self, state: SubjectState, incoming: Iterable[Delta]) -> SubjectState:
        """Merges every delta that is (or becomes) ready into ``state``; holds back the rest."""
        with self._lock:
            pending = self._held.pop(state.subject, [])
            self._count -= len(pending)
        pending.extend(incoming)
        progress = True
        while progress and pending:
            progress = False
            waiting = []
            for delta in pending:
                if ready(state, delta):
                    state = merge(state, delta.state)
                    progress = True
                else:
                    waiting.append(delta)
            pending = waiting
        if pending:
            self._hold(state.subject, pending)
        return state

    def _hold(self, subject: Subject, deltas: list[Delta]) -> None:
        with self._lock:
            self._held[subject] = deltas
            self._count += len(deltas)
            while self._count > self.limit and self._held:
                oldest = next(iter(self._held))
                self._count -= len(self._held.pop(oldest))
                self.dropped += 1
