"""The outbox: this node's deltas by sequence, kept until every peer acknowledged them.

Sequences are assigned by the group commit's leader, so they follow commit order: the outbox
never has a hole below an entry RocksDB has. A group's entries show here as soon as RocksDB has
them, while the WAL syncs (see node.store.commit); the newest ``OUTBOX_TAIL`` are kept in memory
too, so a peer that keeps up never reads RocksDB. Implements sync.ports.DeltaLog.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import TYPE_CHECKING, NamedTuple

import rocksdict

from node.store.tables import Tables
from sync.codec import decode_delta, encode_delta
from sync.crdt import EraseBound, without_erased
from sync.delivery import Delta
from sync.observation import Subject
from sync.ports import Batch, DeltaLog

OUTBOX_TAIL = 1024


class OutboxEntry(NamedTuple):
    seq: int
    written_ms: int
    delta: bytes  # an encoded Delta (a SubjectState with its event dots)


def outbox_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class Outbox:
    """The outbox column family of ``tables``, whose last sequence is ``seq``; thread-safe."""

    def __init__(self, tables: Tables, seq: int) -> None:
        self._tables = tables
        self.seq = seq  # the last entry written (set by the group commit's leader)
        # Notified when entries are written or the store closes.
        self.grew = threading.Condition()
        self.closed = False
        # Consecutive written entries ending at seq; guarded by _tail_lock.
        self._tail: collections.deque[OutboxEntry] = collections.deque(maxlen=OUTBOX_TAIL)
        self._tail_lock = threading.Lock()
        # Trimming deletes entries one by one from here (see trim); found once at open.
        self._lock = threading.Lock()
        self._trimmed = self._first_key(0) - 1

    # -- sync.ports.DeltaLog ---------------------------------------------------------------

    def read(self, after: int, limit: int, max_bytes: int) -> Batch | None:
        entries = self.entries(after, limit)
        if not entries:
            return None
        size = len(entries[0].delta)
        for n, entry in enumerate(entries[1:], 1):
            size += len(entry.delta)
            if size > max_bytes:
                entries = entries[:n]
                break
        return Batch(
            entries[0].seq, entries[-1].seq, [e.delta for e in entries], entries[0].written_ms
        )

    def first_seq(self) -> int:
        """The lowest sequence still in the outbox (``seq + 1`` when it is empty)."""
        return self._first_key(self._trimmed + 1)

    def last_seq(self) -> int:
        return self.seq

    def wait(self, after: int, timeout_s: float) -> bool:
        """Waits until the outbox holds a sequence above ``after``; False on timeout."""
        with self.grew:
            return self.grew.wait_for(lambda: self.seq > after or self.closed, timeout_s)

    def trim(self, upto: int) -> None:
        """Drops entries up to and including ``upto`` (acknowledged by every peer).

        One point delete per entry, from the previous trim on, never a range delete: every new
        iterator pays for each range tombstone left in the memtable (docs/performance.md).
        """
        tables = self._tables
        with self._lock:
            start = self._trimmed + 1
            # Skipped while writes are suspended: a later acknowledgement trims them.
            if upto < start or tables.suspended is not None:
                return
            batch = rocksdict.WriteBatch(raw_mode=True)
            outbox = tables._handle["outbox"]
            for seq in range(start, upto + 1):
                batch.delete(outbox_key(seq), outbox)
            tables._db.write(batch, tables._unsynced)
            self._trimmed = upto
            with self._tail_lock:
                while self._tail and self._tail[0].seq <= upto:
                    self._tail.popleft()

    def oldest_unacked_ms(self, acked: int) -> int | None:
        if acked >= self.seq:
            return None
        entries = self.entries(acked, 1)
        return entries[0].written_ms if entries else None

    # -- the store's side ------------------------------------------------------------------

    def entries(self, after: int, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` entries with a sequence above ``after``, in order: from memory when
        they are among the newest, else from RocksDB."""
        with self._tail_lock:
            tail = self._tail
            if tail and tail[0].seq <= after + 1:
                start = after + 1 - tail[0].seq
                return list(itertools.islice(tail, start, start + limit))
        entries = []
        last = self.seq
        for key, value in self._tables._cf["outbox"].items(from_key=outbox_key(after + 1)):
            seq = int.from_bytes(key, "big")
            if seq > last:
                break
            entries.append(OutboxEntry(seq, int.from_bytes(value[:8], "big"), value[8:]))
            if len(entries) >= limit:
                break
        return entries

    def written(self, seq: int, entries: list[OutboxEntry]) -> None:
        """A group's entries, ``entries`` (perhaps none), ending at ``seq``, are in RocksDB."""
        self.seq = seq
        if entries:
            with self._tail_lock:
                self._tail.extend(entries)
            with self.grew:
                self.grew.notify_all()

    def reopened(self, seq: int) -> None:
        """RocksDB was reopened holding entries up to ``seq``: read from it until new entries
        refill the tail."""
        self.seq = seq
        with self._tail_lock:
            self._tail.clear()

    def close(self) -> None:
        self.closed = True
        with self.grew:
            self.grew.notify_all()

    def purge(self, subject: Subject, erased: EraseBound) -> None:
        """Drops the observations ``erased`` reaches from ``subject``'s deltas (the erase itself
        stays, to reach the peers); written unsynced (node.store.Store.purge flushes).

        A delta keeps its context and events (merging it equals merging the original and then
        the erase), and is never deleted: a peer that has not acknowledged it yet must find the
        sequence unbroken, since a hole in the outbox reads as entries trimmed past the peer.
        """
        tables = self._tables
        with self._lock:
            batch = rocksdict.WriteBatch(raw_mode=True)
            outbox = tables._handle["outbox"]
            for k, v in tables._cf["outbox"].items(from_key=outbox_key(self._trimmed + 1)):
                delta = decode_delta(v[8:])
                if delta.state.subject != subject:
                    continue
                kept = without_erased(delta.state, erased)
                if len(kept.observations) != len(delta.state.observations):
                    batch.put(k, v[:8] + encode_delta(Delta(kept, delta.events)), outbox)
            tables._db.write(batch, tables._unsynced)
            with self._tail_lock:
                self._tail.clear()  # read from RocksDB, purged, until new entries refill it

    def _first_key(self, start: int) -> int:
        # Seeking past the trimmed entries skips their tombstones instead of stepping over them.
        for key in self._tables._cf["outbox"].keys(from_key=outbox_key(start)):
            return int.from_bytes(key, "big")
        return self.seq + 1


if TYPE_CHECKING:  # mypy checks here that an Outbox is a sync.ports.DeltaLog

    def _is_a_delta_log(outbox: Outbox) -> DeltaLog:
        return outbox
