"""What the store does when its disk fails it: writes are suspended until RocksDB reopens.

A write that fails on an I/O error (a full disk, most often) suspends writes: every later one is
refused at once with UNAVAILABLE naming the data directory, until ``resume_writes`` (called by
node.store.diskwatch once the disk has room) reopens RocksDB, whose WAL writer a failed write
leaves broken, and takes a new actor.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from node import metrics
from node.errors import Reason, Unavailable
from node.store.cache import StateCache
from node.store.digests import load_bucket_hashes
from node.store.identity import RunIdentity
from node.store.outbox import Outbox
from node.store.tables import COLUMN_FAMILIES

log = logging.getLogger("node.store")


def disk_failure(exc: BaseException) -> str | None:
    """What a failed write says about the disk (``no space`` or ``I/O error``), or None when
    the failure is no I/O error (RocksDB raises plain Exceptions whose text says which)."""
    if isinstance(exc, OSError):
        return "no space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "I/O error"
    text = str(exc)
    if not text.startswith("IO error"):
        return None
    return "no space" if "No space left" in text or "quota" in text.lower() else "I/O error"


class Suspension(RunIdentity, StateCache):
    """Part of node.store.Store: suspending and resuming writes.

    Store's constructor sets every attribute declared here.
    """

    # Called with the reason (None: resumed) when writes are suspended or resume.
    on_suspension: Callable[[str | None], None] | None
    # Set after a failed write: RocksDB's WAL writer is broken until the store reopens it.
    _reopen_needed: bool
    delta_log: Outbox
    _buckets: list[bytes]
    hlc: int
    suspended_kind: str = ""  # no space, low space or I/O error, while suspended
    retry_after_s: float = 5.0  # a refused write's RetryInfo: how often the disk is probed

    def suspend(self, kind: str, detail: str, *, reopen: bool = False) -> None:
        """Refuses writes from now on (UNAVAILABLE) until resume_writes; ``kind``: ``no space``,
        ``low space`` or ``I/O error``. Logs and tells ``on_suspension`` once per suspension."""
        if reopen:
            self._reopen_needed = True
        self.suspended_kind = kind
        what = {
            "no space": "the disk holding its data directory is full",
            "low space": "the disk holding its data directory is nearly full",
        }.get(kind, "writing to its data directory failed")
        reason = f"{what} ({self.path}: {detail})"
        with self._lock:
            if self.suspended is not None:
                return
            self.suspended = reason
        metrics.STORE_SUSPENSIONS.labels(kind).inc()
        metrics.STORE_WRITABLE.set(0)
        log.error("node %s: writes suspended: %s", self.node, reason)
        if self.on_suspension is not None:
            self.on_suspension(reason)

    def _reload_buckets(self) -> None:
        self._buckets = load_bucket_hashes(self._cf["digest"])

    def _refusal(self) -> Unavailable:
        full = self.suspended_kind in ("no space", "low space")
        return Unavailable(
            f"node {self.node} refuses writes: {self.suspended or 'its last write failed'}; they "
            "resume by themselves once the disk has room again (retry, or write on another node)",
            reason=Reason.DISK_FULL if full else Reason.STORE_UNWRITABLE,
            metadata={"node": self.node, **({"setting": "min_free_mb"} if full else {})},
            retry_after_s=self.retry_after_s,
        )

    def resume_writes(self) -> bool:
        """Takes writes again after a suspension; False while it cannot yet.

        After a failed write RocksDB's WAL writer stays broken (it answers every later write
        with the first error), so RocksDB is closed and opened again: it recovers what its WAL
        holds, as at a start, and this run takes a new actor, as after a crash (a write that
        failed may have reached the WAL or a peer with dots it would otherwise hand out again).
        The actor's synced write is the probe: it fails while the disk is still full.
        """
        with self._lock:
            if self.suspended is None:
                return True
            if self._closed or self._leading or self._queue:
                return False
            self._leading = True  # no group commit while RocksDB is reopened (none is queued)
        try:
            if self._reopen_needed:
                self._reopen()
                self._reopen_needed = False
        except Exception as exc:
            log.debug("node %s: writes stay suspended: %s", self.node, exc)
            return False
        finally:
            with self._lock:
                self._leading = False
        with self._lock:
            self.suspended = None
        metrics.STORE_WRITABLE.set(1)
        log.warning("node %s: writes resumed (actor %s)", self.node, self.actor)
        if self.on_suspension is not None:
            self.on_suspension(None)
        return True

    def room_needed(self) -> int:
        """Free bytes that reopening RocksDB needs: recovery writes its memtables to SST files
        (twice their size, with a MiB to spare)."""
        with self._lock:
            if self._db is None:
                return 2**20
            tables = sum(
                self._cf[name].property_int_value("rocksdb.cur-size-all-mem-tables") or 0
                for name in COLUMN_FAMILIES
            )
        return 2 * tables + 2**20

    def _reopen(self) -> None:
        """Closes RocksDB and opens it again; reloads what this run keeps in memory of it.

        Meanwhile a reader that looks up a column family waits for the new one (tables).
        """
        self._reopened.clear()
        try:
            self.wal.failed = None  # its traceback's frames hold column-family handles
            self._close_db()
            self._open_db()
        finally:
            self._reopened.set()
        meta = self._cf["meta"]
        self.hlc = max(self.hlc, int(meta.get(b"hlc", b"0")))
        self._reload_buckets()
        self._empty_cache()
        self.delta_log.reopened(int(meta.get(b"outbox_seq", b"0")))
        self.wal.reopened()
        self._reopen_needed = True  # until the probe below succeeds
        self.renew_actor()
