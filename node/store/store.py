"""The node's store: opening it, its outbox, purging a forgotten subject, closing it."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import rocksdict

from node.store import digests
from node.store.digests import digest_row, load_bucket_hashes
from node.store.outbox import Outbox, OutboxEntry
from node.store.reads import Reads
from node.store.rows import OBSERVATIONS, rows_end, rows_prefix
from node.store.sources import SOURCES, Contribution, scan, scan_every_tenant, subject_prefix
from node.store.tables import COLUMN_FAMILIES, Memory, StoreError
from node.store.wal import WalSync, unsynced_writes
from sync.crdt import EraseBound
from sync.observation import Subject

log = logging.getLogger("node.store")

# Meta rows holding each followed user's held record (node.heldrecords), by its storage key.
HELD = b"held/"


def held_key(subject: Subject) -> bytes:
    return HELD + subject.storage_key()


class Store(Reads):
    """Thread-safe. Callers serialize read-modify-write of one subject (see node.committing)."""

    def __init__(
        self,
        path: Path,
        node: str,
        *,
        fsync: bool = True,
        outbox: bool = False,
        cache_size: int = 20_000,
        cache_mb: float = 256.0,
        rocksdb_cache_mb: float = 128.0,
    ) -> None:
        """``cache_size`` and ``cache_mb``: at most that many subject states kept in memory, of
        about that much memory in all (see cache_cost); ``rocksdb_cache_mb``: RocksDB's blocks
        cached and memtables (node.store.tables.Memory)."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {path}: {exc.strerror}") from exc
        self.path = path
        self._dir = str(path)
        self.problems = []
        self.suspended = None
        self._reopened = threading.Event()
        self._reopened.set()
        self.wal = WalSync(self._dir, self._refusal)
        self.memory = Memory.of(int(rocksdb_cache_mb * 2**20))
        self._unsynced = unsynced_writes()
        self._open_db()
        self.fsync = fsync
        self.outbox_enabled = outbox
        self._synced = rocksdict.WriteOptions()
        self._synced.sync = True
        self._lock = threading.Lock()
        self._queue = []
        self._leading = False
        self._closed = False
        self._take_identity(node)

        meta = self._cf["meta"]
        self.hlc_high_water = int(meta.get(b"hlc", b"0"))
        self.hlc = self.hlc_high_water
        self._buckets = self._bucket_hashes()
        self._cache = collections.OrderedDict()
        self._cache_size = cache_size
        self._cache_budget = int(cache_mb * 2**20)
        self._cache_cost = 0
        self._cache_lock = threading.Lock()
        self._cache_writes = 0
        self.context_entries_max = 0
        self.on_dropped = None
        self.delta_log = Outbox(self, int(meta.get(b"outbox_seq", b"0")))
        self._quarantine_lock = threading.Lock()
        self._epochs = {}
        self._reopen_needed = False
        self.on_suspension = None

    # -- the outbox (sync.ports.DeltaLog: delta_log) --------------------------------------

    @property
    def outbox_seq(self) -> int:
        return self.delta_log.seq

    @property
    def _outbox_grew(self) -> threading.Condition:
        """The outbox's condition: notified when entries are written or the store closes."""
        return self.delta_log.grew

    @_outbox_grew.setter
    def _outbox_grew(self, grew: threading.Condition) -> None:
        self.delta_log.grew = grew

    def outbox(self, after: int, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` outbox entries with a sequence above ``after``, in order."""
        return self.delta_log.entries(after, limit)

    def outbox_first(self) -> int:
        return self.delta_log.first_seq()

    def trim_outbox(self, upto: int) -> None:
        self.delta_log.trim(upto)

    def wait_outbox(self, after: int, timeout_s: float) -> bool:
        return self.delta_log.wait(after, timeout_s)

    # -- the rest ------------------------------------------------------------------------

    def _bucket_hashes(self) -> list[bytes]:
        """The bucket hashes, rebuilt from the digest rows (in one batch with the format row)
        if they were written in another format (node.store.digests)."""
        if self._cf["meta"].get(digests.FORMAT_ROW) == digests.FORMAT:
            return load_bucket_hashes(self._cf["digest"])
        buckets = digests.rebuilt_bucket_hashes(self._cf["digest"])
        batch = rocksdict.WriteBatch(raw_mode=True)
        for bucket, value in enumerate(buckets):
            batch.put(digests.bucket_row(bucket), value, self._handle["digest"])
        batch.put(digests.FORMAT_ROW, digests.FORMAT, self._handle["meta"])
        self._db.write(batch, self._synced)
        return buckets

    def purge(self, subject: Subject, erased: EraseBound, sources: Iterable[str] = ()) -> None:
        """Removes a forgotten subject's erased data from RocksDB's files, not only from view.

        Drops the observations ``erased`` reaches from its deltas in the outbox (Outbox.purge),
        flushes the memtables (so the WAL holding the old rows becomes obsolete) and compacts
        the subject's key range, so no SST file or log keeps a superseded version of its
        observations; and the subject's attribution index rows of ``sources`` (the sources of
        its observations erased: their keys hold slot keys, which may be statements).
        """
        key = subject.storage_key()
        self.delta_log.purge(subject, erased)
        # Every column family: a WAL file is deleted only once no family has unflushed rows in
        # it, and each commit also writes meta (the HLC high-water mark).
        for name in COLUMN_FAMILIES:
            self._cf[name].flush(True)
        # Forced at the bottommost level: otherwise RocksDB may merely move the old files down
        # a level ("trivial move"), keeping the erased observations in them.
        rewrite = rocksdict.CompactOptions()
        rewrite.set_exclusive_manual_compaction(True)
        rewrite.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
        self._cf["state"].compact_range(key, key + b"\xff", rewrite)
        epoch = self._epochs.get(key, 0)
        self._cf[OBSERVATIONS].compact_range(rows_prefix(key, epoch), rows_end(key, epoch), rewrite)
        # Its held record (node.heldrecords) may hold the erased beliefs' statements.
        held = held_key(subject)
        self._cf["meta"].delete(held)
        self._cf["meta"].flush(True)
        self._cf["meta"].compact_range(held, held + b"\xff", rewrite)
        for source in sorted(set(sources)):
            start = subject_prefix(subject.tenant, source, subject)
            self._cf[SOURCES].compact_range(start, start + b"\xff", rewrite)
        self._cf["outbox"].compact_range(None, None, rewrite)
        self._db.flush_wal(True)
        self.wal.release()

    def stored_digests(self, subjects: Sequence[Subject]) -> list[bytes | None]:
        """Each subject's digest as stored with its state (None: never written): one get."""
        rows = [digest_row(s.storage_key()) for s in subjects]
        return list(self._cf["digest"].get(rows)) if rows else []

    def held_records(self, subjects: Sequence[Subject]) -> list[bytes | None]:
        """Each subject's held record as stored (node.heldrecords; None: none)."""
        rows = [held_key(s) for s in subjects]
        return list(self._cf["meta"].get(rows)) if rows else []

    def write_held_records(self, rows: Sequence[tuple[Subject, bytes | None]]) -> None:
        """Puts (or, for None, deletes) held records in one batch, unsynced: a record lost to
        a crash is resolved again. Skipped while writes are suspended."""
        if not rows or self.suspended is not None:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        meta = self._handle["meta"]
        for subject, value in rows:
            if value is None:
                batch.delete(held_key(subject), meta)
            else:
                batch.put(held_key(subject), value, meta)
        self._db.write(batch, self._unsynced)

    def contributions(
        self, tenant: str | None, source: str, after: bytes = b"", limit: int = 100
    ) -> list[tuple[bytes, Contribution]]:
        """Up to ``limit`` observations ``source`` holds in ``tenant``'s subjects (None: every
        agents' tenant's) after the row key ``after``, with their row keys
        (node.store.sources), in key order."""
        if tenant is None:
            return scan_every_tenant(self._cf[SOURCES], source, after, limit)
        return scan(self._cf[SOURCES], tenant, source, after, limit)

    def size_bytes(self) -> int:
        """Bytes in SST files and memtables (0 once closed: metrics may scrape after a stop)."""
        with self._lock:
            if self._closed or self._db is None:
                return 0
            total = 0
            for name in COLUMN_FAMILIES:
                for prop in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
                    total += self._cf[name].property_int_value(prop) or 0
            return total

    def estimate_subjects(self) -> int:
        with self._lock:
            if self._closed or self._db is None:
                return 0
            return int(self._cf["state"].property_int_value("rocksdb.estimate-num-keys") or 0)

    def close(self) -> None:
        """Flushes and closes RocksDB; marks the run closed cleanly when no write was under way.

        The mark lets the next run resume this run's actor (node.store.identity): written after
        the flush, synced, and only when no group commit was in flight and no write ever failed,
        so every dot this run handed out is on disk. A store whose writes are suspended (a full
        disk) closes all the same, unmarked.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = not self._leading and not self._queue
        self.delta_log.close()
        if self._db is not None and self.suspended is None:
            try:
                for name in COLUMN_FAMILIES:
                    self._cf[name].flush(True)
                if idle and self.wal.failed is None:
                    self._cf["meta"].put(b"closed_cleanly", str(self.run).encode(), self._synced)
            except Exception as exc:
                log.error("node %s: closing without a clean mark: %s", self.node, exc)
        self._close_db()
