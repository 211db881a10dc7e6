"""Group commit: concurrent writers share one WriteBatch and one WAL sync.

Every mutation writes a subject's rows (node.store.rows) + outbox + digest in one WriteBatch:
its head and only the observation rows it adds and removes, and their attribution index rows
(node.store.sources). The first waiting writer leads:
it takes every batch queued behind it, writes them as one, syncs the WAL (node.store.wal) when
one of them is durable, wakes the others and hands the lead to the next queued writer. Outbox
sequences are assigned by the leader, so they follow commit order: no hole below an entry.

Until the sync returns, the group's writers are not answered, the cache and counters do not show
the batch, but the outbox does: the delta streams ship it during the sync. A failed sync, or a
crash before it, costs this run its actor (no dot handed out twice); anti-entropy brings the
write back from the peers that have it (docs/replication.md). A recorded acknowledgement past
the outbox's end after a crash is clamped by the delta streams (sync.replicator).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import rocksdict

from node import metrics
from node.errors import SelfModelError
from node.store.cache import Cached
from node.store.digests import EMPTY_HASH, bucket_of, bucket_row, state_digest, xor
from node.store.digests import part as bucket_part
from node.store.outbox import OutboxEntry, outbox_key
from node.store.rows import (
    OBSERVATIONS,
    head_of,
    new_epoch,
    put_rows,
    rows_end,
    rows_prefix,
)
from node.store.sources import SOURCES, put_index_rows
from node.store.suspension import Suspension, disk_failure
from node.store.tables import StoreError
from sync.causal import Dot
from sync.codec import encode_delta, encode_state_reusing
from sync.crdt import SubjectState, digest_with, observed_change
from sync.delivery import Delta

log = logging.getLogger("node.store")


@dataclass(slots=True, eq=False)
class Change:
    """One subject's transition, and the delta to replicate (None: nothing to send)."""

    old: SubjectState | None
    new: SubjectState
    delta: Delta | None
    # Set by the commit: the new state's handoff token entry (encode_token_entry), from which the
    # writer's handoff token is made (token_of_entries) with no encoding of its own.
    token_entry: bytes = b""
    # The digest stored for the old state, when it is not the old state's (see quarantine).
    old_digest: bytes | None = None
    # The stored rows are not ``old``'s (a quarantined subject's): every one is replaced.
    rewrite: bool = False


def rows_changed(old: SubjectState | None, new: SubjectState) -> tuple[list[Dot], list[Dot]]:
    """The dots whose rows a change deletes and puts, ``old`` being what RocksDB holds: those
    gone, and those added or holding another observation object (a state's unchanged
    observations are the very objects of the state it was made from)."""
    if old is None:
        return [], list(new.observations)
    was, now = old.observations, new.observations
    gone = [dot for dot in was if dot not in now]
    return gone, [dot for dot, obs in now.items() if was.get(dot) is not obs]


@dataclass(slots=True, eq=False)
class _Pending:
    """A writer's batch in the group commit's queue."""

    changes: Sequence[Change]
    extra: Sequence[tuple[str, bytes, bytes | None]]
    durable: bool
    # Held while a writer waits (a first leader has none): released once, when its batch is
    # written, or when it is its turn to lead. A bare lock: waking a writer is one release.
    wake: threading.Lock | None = None
    finished: bool = False
    error: BaseException | None = None
    last_seq: int = 0


class GroupCommit(Suspension):
    """Part of node.store.Store: ``commit``. Store's constructor sets the attributes declared
    here. Callers serialize read-modify-write of one subject (see node.committing)."""

    fsync: bool  # a durable batch is answered once its WAL is synced
    # The row epoch of each subject whose epoch is not 0 (node.store.rows), as read or written:
    # a subject is read (or created) before it is written.
    _epochs: dict[bytes, int]
    outbox_enabled: bool

    def commit(
        self,
        changes: Sequence[Change],
        extra: Sequence[tuple[str, bytes, bytes | None]] = (),
        *,
        durable: bool = True,
    ) -> int:
        """Writes the changes (and extra (cf, key, value|None) rows) as one batch.

        Returns the outbox sequence of the last delta written (0 when none). Blocks until the
        batch is on disk per the fsync setting, or with ``durable=False`` only until RocksDB
        has it (readable, and safe from a crash of this process but not of the machine: see
        sync_written); raises StoreError when the write failed. Batches with outbox entries
        are always durable (their entries are shipped during the sync).
        """
        if not durable and any(c.delta is not None for c in changes):
            raise ValueError("a batch with outbox entries must be durable")
        pending = _Pending(changes, extra, durable)
        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            if self.suspended is not None:
                raise self._refusal()
            self._queue.append(pending)
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                pending.wake = threading.Lock()
                pending.wake.acquire()
        if pending.wake is not None:
            pending.wake.acquire()  # until the leader releases it
            if not pending.finished:
                self._lead(pending)
        else:
            self._lead(pending)
        if pending.error is not None:
            if isinstance(pending.error, SelfModelError):
                raise pending.error
            if disk_failure(pending.error) is not None:
                raise self._refusal() from pending.error
            raise StoreError(f"write failed: {pending.error}") from pending.error
        return pending.last_seq

    def sync_written(self) -> None:
        """Makes every batch written so far durable (those of ``commit(durable=False)``).

        One sync covers every batch written before it started, so concurrent callers share
        syncs as group commit does. Nothing to do without fsync.
        """
        if self.fsync and self.wal.pending():
            self.wal.sync([self._db, *self._cf.values()])

    def _lead(self, mine: _Pending) -> None:
        with self._lock:
            group, self._queue = self._queue, []
        started = time.perf_counter()
        error: BaseException | None = None
        written: list[Cached] = []
        try:
            written = self._write_group(group)
        except Exception as exc:  # surfaced to every writer of the group
            error = exc
            failure = disk_failure(exc)
            if failure is not None:
                self._reopen_needed = True
                self.suspend(failure, str(exc))
            elif not isinstance(exc, SelfModelError):
                log.exception("group commit of %d batches failed", len(group))
            self._reload_buckets()
            if self.wal.failed is None:
                # RocksDB may hold the group all the same, and the store still takes writes:
                # none may build on a cached state older than RocksDB's. (A store whose WAL
                # sync failed takes none, and keeps showing what it acknowledged.)
                self._empty_cache()
        elapsed = time.perf_counter() - started
        try:
            self._note_written(written)
            metrics.record_commit(len(group), elapsed)
        except Exception:  # the group is written: answer its writers and pass the lead on anyway
            log.exception("bookkeeping after a group commit failed; emptying the state cache")
            self._empty_cache()
        for p in group:
            p.error = error
            p.finished = True
            if p.wake is not None and p is not mine:
                p.wake.release()
        with self._lock:
            if self._queue:
                # Not finished: it wakes up as the next leader. Every queued writer waits.
                cast(threading.Lock, self._queue[0].wake).release()
            else:
                self._leading = False

    def _write_group(self, group: list[_Pending]) -> list[Cached]:
        """Writes the group as one batch; returns every new state written, with its digest and
        its observations' bytes."""
        if self.suspended is not None:
            raise self._refusal()
        batch = rocksdict.WriteBatch(raw_mode=True)
        put = batch.put
        handle = self._handle
        state_cf, outbox_cf, digest_cf = handle["state"], handle["outbox"], handle["digest"]
        rows_cf, sources_cf = handle[OBSERVATIONS], handle[SOURCES]
        epochs = self._epochs
        outbox_enabled = self.outbox_enabled
        seq = self.delta_log.seq
        now_ms = time.time_ns() // 1_000_000
        now_row = now_ms.to_bytes(8, "big")
        touched: dict[int, bytes] = {}
        hlc = self.hlc
        entries: list[OutboxEntry] = []
        written: list[Cached] = []
        cache = self._cache
        for p in group:
            for change in p.changes:
                new = change.new
                key = new.subject.storage_key()
                cached = cache.get(new.subject)
                old, delta = change.old, change.delta
                changed = None  # a local write's own change: no diff of the whole subject
                if cached is not None and cached.state is old and delta is not None:
                    changed = observed_change(cached.state, new, delta.state)
                state = encode_state_reusing(
                    new, cached.encoded if cached is not None else None, changed
                )
                raw, change.token_entry, encoded = state
                epoch = epochs.get(key, 0)
                if change.rewrite:  # quarantined: its rows' block may be corrupt
                    batch.delete_range(rows_prefix(key, epoch), rows_end(key, epoch), rows_cf)
                    epoch = epochs[key] = new_epoch()
                put(key, head_of(state, epoch), state_cf)
                prefix = rows_prefix(key, epoch)
                gone: list[Dot]
                added: list[Dot]
                if change.rewrite:
                    gone, added = [], list(new.observations)
                else:
                    gone, added = changed if changed is not None else rows_changed(old, new)
                put_rows(batch, rows_cf, prefix, state, gone, added)
                if gone or added:  # the attribution index follows the rows (node.store.sources)
                    was, now = old.observations if old is not None else {}, new.observations
                    put_index_rows(
                        batch,
                        sources_cf,
                        new.subject,
                        [was[dot] for dot in gone],
                        [now[dot] for dot in added],
                    )
                if change.old_digest is not None:
                    old_digest = change.old_digest
                elif old is None:
                    old_digest = EMPTY_HASH
                else:
                    known = cached.digest if cached is not None and cached.state is old else None
                    old_digest = state_digest(old, known)
                part = encoded.digest_part()  # the observations' part, kept in order
                new_digest = (
                    new.digest()
                    if part is None
                    else digest_with(
                        new.erased, new.context, part, new.withdrawals, new.keyed_calls
                    )
                )
                written.append(Cached.of(new, len(raw), new_digest, encoded))
                if old_digest != new_digest:
                    bucket = bucket_of(key)
                    current = touched.get(bucket, self._buckets[bucket])
                    touched[bucket] = xor(
                        current, bucket_part(key, old_digest), bucket_part(key, new_digest)
                    )
                    put(b"S" + bucket.to_bytes(2, "big") + key, new_digest, digest_cf)
                if delta is not None:
                    for obs in delta.state.observations.values():
                        if obs.hlc > hlc:
                            hlc = obs.hlc
                    # A forget's or retract's timestamp too: writes after a restart follow it.
                    hlc = max(hlc, delta.state.erased.hlc, *delta.state.withdrawals.values())
                    if outbox_enabled:
                        seq += 1
                        raw = encode_delta(delta)
                        entries.append(OutboxEntry(seq, now_ms, raw))
                        put(outbox_key(seq), now_row + raw, outbox_cf)
                p.last_seq = seq
            for cf, key, value in p.extra:
                if value is None:
                    batch.delete(key, self._handle[cf])
                else:
                    batch.put(key, value, self._handle[cf])
        for bucket, value in touched.items():
            batch.put(bucket_row(bucket), value, digest_cf)
        meta = self._handle["meta"]
        if seq != self.delta_log.seq:
            batch.put(b"outbox_seq", str(seq).encode(), meta)
        if hlc != self.hlc:
            batch.put(b"hlc", str(hlc).encode(), meta)
        self._db.write(batch, self._unsynced)
        self.wal.written_groups += 1
        # Shipped to the peers while the WAL syncs, not after: see the module's doc.
        self.delta_log.written(seq, entries)
        if self.fsync and any(p.durable for p in group):
            self.wal.sync([self._db, *self._cf.values()])
        self.hlc = hlc
        for bucket, value in touched.items():
            self._buckets[bucket] = value
        return written
