"""What the store (node.store) does when its disk fails it or holds damage.

A write that fails on an I/O error (a full disk, most often) suspends writes: every later one is
refused at once with UNAVAILABLE naming the data directory, until ``resume_writes`` (called by
node.diskwatch once the disk has room) reopens RocksDB, whose WAL writer a failed write leaves
broken, and takes a new actor. At open, a damaged WAL is reported and the store opened up to it.
"""

from __future__ import annotations

import collections
import errno
import gc
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rocksdict

from node import metrics
from node.errors import Reason, Unavailable

log = logging.getLogger("node.store")

# The column families of a node's RocksDB (node.store).
COLUMN_FAMILIES = ("state", "outbox", "peers", "digest", "meta", "audit")


# How long a read waits for RocksDB to be reopened.
REOPEN_WAIT_S = 10.0


class StoreError(Exception):
    pass


def db_options(strict: bool) -> rocksdict.Options:
    """RocksDB's options: ``strict`` refuses to open over any corrupt WAL record (absolute
    consistency); otherwise recovery stops at the first one (point in time, RocksDB's default)."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_paranoid_checks(True)
    mode = rocksdict.DBRecoveryMode
    opts.set_wal_recovery_mode(mode.absolute_consistency() if strict else mode.point_in_time())
    return opts


def is_corruption(exc: BaseException) -> bool:
    return str(exc).startswith("Corruption")


def disk_failure(exc: BaseException) -> str | None:
    """What a failed write says about the disk (``no space`` or ``I/O error``), or None when
    the failure is no I/O error (RocksDB raises plain Exceptions whose text says which)."""
    if isinstance(exc, OSError):
        return "no space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "I/O error"
    text = str(exc)
    if not text.startswith("IO error"):
        return None
    return "no space" if "No space left" in text or "quota" in text.lower() else "I/O error"


class _Reopening(dict[str, Any]):
    """A store's column families while RocksDB is closed: a lookup waits until it is open
    again and answers from the new ones, or raises UNAVAILABLE (a store closed for good, or
    one that could not be opened yet). Found keys cost nothing: only missing ones come here."""

    def __init__(self, store: StoreFaults, attribute: str) -> None:
        super().__init__()
        self._store = store
        self._attribute = attribute

    def __missing__(self, name: str) -> Any:
        store = self._store
        if store._reopened.wait(REOPEN_WAIT_S):
            current = getattr(store, self._attribute)
            if not isinstance(current, _Reopening):
                return current[name]
        raise Unavailable(
            f"node {store.node} has its store closed (reopening it); retry",
            reason=Reason.STORE_UNWRITABLE,
            metadata={"node": store.node},
            retry_after_s=1.0,
        )


class StoreFaults:
    """Part of node.store.Store: opening RocksDB, suspending and resuming writes, new actors.

    Store's constructor sets every attribute declared here.
    """

    path: Path
    _dir: str
    node: str
    problems: list[str]
    suspended: str | None
    suspended_kind: str = ""  # no space, low space or I/O error, while suspended
    retry_after_s: float = 5.0  # a refused write's RetryInfo: how often the disk is probed
    on_suspension: Callable[[str | None], None] | None
    _db: Any
    _cf: dict[str, Any]
    _handle: dict[str, Any]
    _synced: Any
    _lock: threading.Lock
    _claims_lock: threading.Lock
    _tail_lock: threading.Lock
    _tail: collections.deque[Any]
    _queue: list[Any]
    _closed: bool
    _leading: bool
    _reopen_needed: bool
    _wal_failed: OSError | None
    _written_groups: int
    _synced_groups: int
    incarnation: int
    _incarnation_floor: int
    actor: str
    resumable: str | None
    outbox_seq: int
    hlc: int
    _reopened: threading.Event  # clear while RocksDB is being reopened

    def _reload_buckets(self) -> None:
        raise NotImplementedError

    def _empty_cache(self) -> None:
        raise NotImplementedError

    def _release_wal_files(self) -> None:
        raise NotImplementedError

    def _open_db(self) -> None:
        """Opens RocksDB, refusing at first any corrupt WAL record (absolute consistency).

        When recovery finds one, the store is opened again up to it (point in time) and the
        damage is reported (``problems``, the log, a metric): the writes after it are lost here,
        so this run takes a new actor (never the previous one: __init__) and anti-entropy brings
        them back from the peers that have them.
        """
        cf_opts = {name: rocksdict.Options(raw_mode=True) for name in COLUMN_FAMILIES}
        try:
            db = rocksdict.Rdict(self._dir, db_options(strict=True), column_families=cf_opts)
        except Exception as exc:  # rocksdict raises plain Exception for a locked or corrupt db
            if not is_corruption(exc):
                raise StoreError(f"cannot open RocksDB at {self.path}: {exc}") from exc
            self._report(
                "wal",
                f"RocksDB found its write-ahead log in {self.path} damaged ({exc}); opened with "
                "the writes before the damage, the later ones come back from peers",
            )
            try:
                db = rocksdict.Rdict(self._dir, db_options(strict=False), column_families=cf_opts)
            except Exception as again:
                raise StoreError(f"cannot open RocksDB at {self.path}: {again}") from again
        self._db = db
        # Raw-mode column families hold bytes only; rocksdict's stubs type values as any scalar.
        self._cf = {n: db.get_column_family(n) for n in COLUMN_FAMILIES}
        self._handle = {name: db.get_column_family_handle(name) for name in COLUMN_FAMILIES}

    def _report(self, kind: str, problem: str) -> None:
        """Records damage found in the store (status, log, metric); the list stays bounded."""
        if len(self.problems) < 100:
            self.problems.append(problem)
        metrics.STORE_CORRUPTION.labels(kind).inc()
        log.error("node %s: %s", self.node if hasattr(self, "node") else self.path, problem)

    def renew_actor(self) -> None:
        """Names this run's later writes with a new actor, in a new incarnation (synced)."""
        with self._claims_lock:
            self.incarnation = max(self.incarnation, self._incarnation_floor) + 1
            self._incarnation_floor = self.incarnation
            actor = f"{self.node}.{self.incarnation}.{secrets.token_hex(4)}"
            batch = rocksdict.WriteBatch(raw_mode=True)
            meta = self._handle["meta"]
            batch.put(b"incarnation", str(self.incarnation).encode(), meta)
            batch.put(b"actor", actor.encode(), meta)
            self._db.write(batch, self._synced)
            self.actor = actor
            self.resumable = None

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

        Meanwhile a reader that looks up a column family waits for the new one (_Reopening).
        """
        self._reopened.clear()
        try:
            self._wal_failed = None  # its traceback's frames hold column-family handles
            self._close_db()
            self._open_db()
        finally:
            self._reopened.set()
        meta = self._cf["meta"]
        self.outbox_seq = int(meta.get(b"outbox_seq", b"0"))
        self.hlc = max(self.hlc, int(meta.get(b"hlc", b"0")))
        self._reload_buckets()
        self._empty_cache()
        with self._tail_lock:
            self._tail.clear()  # read from RocksDB until new entries refill it
        self._synced_groups = self._written_groups
        self._reopen_needed = True  # until the probe below succeeds
        self.renew_actor()

    def _close_db(self) -> None:
        """Closes RocksDB; a close that fails (a broken WAL writer cannot flush) still closes."""
        for cf in self._cf.values():
            try:
                cf.close()
            except Exception as exc:
                log.debug("closing a column family: %s", exc)
        if self._db is not None:
            try:
                self._db.close()
            except Exception as exc:  # expected after a failed write: the WAL writer is broken
                log.debug("node %s: RocksDB closed with an error: %s", self.node, exc)
        self._release_wal_files()
        # Column-family handles keep the database (and its LOCK file) alive until dropped, and
        # a failed write's traceback holds some (in the frames of a reference cycle).
        self._cf = _Reopening(self, "_cf")
        self._handle = _Reopening(self, "_handle")
        self._db = None
        gc.collect()
