"""The subject state cache: the latest states, least recently cached dropped first.

A written state is cached once its group is durable, before its writers are answered. A state
read from RocksDB is cached only if no write group was cached while it was read, so the cache
never holds a state older than one it held before (the subject's next write builds on it).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import NamedTuple

from sync.codec import EncodedObservations
from sync.crdt import SubjectState
from sync.observation import Subject


def cache_cost(observations: int, stored_bytes: int, encoded: bool) -> int:
    """About the memory a cached state takes: 1.25 KiB for the entry, 0.75 KiB per observation
    (its objects), and 1.5 times its stored encoding's size for the text those objects hold, once
    more when the encoding is kept for the next write. Fitted with tracemalloc on subjects of 1
    to 200 observations with short and long text; the tests check that it errs on the high side.
    """
    per_byte = 5 if encoded else 3  # halves
    # The kept encoding's order, fields and digest parts (sync.codec.EncodedObservations).
    order = 256 + 128 * observations if encoded else 0
    return 1280 + 768 * observations + stored_bytes * per_byte // 2 + order


class Cached(NamedTuple):
    """A subject's latest state, as the cache keeps it."""

    state: SubjectState
    # Computed when the state was written, so the subject's next write needs no digest of it.
    digest: bytes | None
    # Its observations' bytes when written here, reused by the next write (encode_state_reusing).
    encoded: EncodedObservations | None
    cost: int  # its estimated memory (cache_cost)

    @classmethod
    def of(
        cls,
        state: SubjectState,
        stored_bytes: int,
        digest: bytes | None = None,
        encoded: EncodedObservations | None = None,
    ) -> Cached:
        """The entry of ``state``, whose encoding is ``stored_bytes`` long."""
        cost = cache_cost(len(state.observations), stored_bytes, encoded is not None)
        return cls(state, digest, encoded, cost)


class StateCache:
    """Part of node.store.Store: at most ``_cache_size`` states of about ``_cache_budget``
    bytes in all (cache_cost), but always the state cached last.

    Store's constructor sets every attribute declared here.
    """

    _cache: collections.OrderedDict[Subject, Cached]
    _cache_size: int
    _cache_budget: int
    _cache_cost: int  # the sum of the cached entries' costs
    # Guards filling the cache: write groups cached (counted), and a read's state cached only
    # if none was since it read RocksDB (_cache_read).
    _cache_lock: threading.Lock
    _cache_writes: int
    # The largest causal context written since the start (metrics: a start that takes a new
    # actor adds one to the contexts written from then on, and handoff tokens carry them).
    context_entries_max: int
    # Told of each subject whose state leaves the cache, with _cache_lock held (node.snapshots
    # drops what it kept for that state alone); None: nobody is told.
    on_dropped: Callable[[Subject], None] | None

    def cache_bytes(self) -> int:
        """The estimated memory of the cached states (see cache_cost)."""
        return self._cache_cost

    def _cache_read(self, state: SubjectState, stored_bytes: int, writes: int) -> None:
        """Caches a state read from RocksDB when ``_cache_writes`` was ``writes``."""
        with self._cache_lock:
            # Cached only if no write group was cached since the read: else these bytes may be
            # older than what the cache holds by now, and the subject's next write would build
            # on them, dropping a write and handing out its dot again.
            if self._cache_writes == writes and state.subject not in self._cache:
                self._remember(Cached.of(state, stored_bytes))

    def _note_written(self, written: list[Cached]) -> None:
        """Caches a written group's states (the group's writers are answered after)."""
        with self._cache_lock:
            for cached in written:
                self._remember(cached)
            self._cache_writes += 1
        for cached in written:
            state = cached.state
            entries = len(state.context.vector) + len(state.context.cloud)
            if entries > self.context_entries_max:
                self.context_entries_max = entries

    def _empty_cache(self) -> None:
        """Drops every cached state, for when RocksDB may hold newer ones: later reads load
        what RocksDB has (and a read racing this caches nothing: see _cache_read)."""
        with self._cache_lock:
            dropped = list(self._cache)
            self._cache.clear()
            self._cache_cost = 0
            self._cache_writes += 1
            for subject in dropped:
                self._dropped(subject)

    def _remember(self, cached: Cached) -> None:
        """Caches a state (with _cache_lock held), dropping the least recently cached beyond
        the cache's bounds (but never the state just cached)."""
        cache = self._cache
        subject = cached.state.subject
        replaced = cache.get(subject)
        if replaced is not None:
            self._cache_cost -= replaced.cost
        cache[subject] = cached
        cache.move_to_end(subject)
        self._cache_cost += cached.cost
        while len(cache) > 1 and (
            len(cache) > self._cache_size or self._cache_cost > self._cache_budget
        ):
            gone, dropped = cache.popitem(last=False)
            self._cache_cost -= dropped.cost
            self._dropped(gone)

    def _dropped(self, subject: Subject) -> None:
        if self.on_dropped is not None:
            self.on_dropped(subject)
