"""The store's RocksDB: its column families, options, and opening and closing it.

Every column family lives in one RocksDB in the data directory, so one WriteBatch writes a
subject's rows, its outbox entry and its digest atomically. At open, a damaged WAL is reported
and the store opened up to the damage; the WAL sync's assumptions are checked (node.store.wal).
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any, NamedTuple

import rocksdict

from node import metrics
from node.errors import Reason, Unavailable
from node.store.wal import WalAssumptionBroken, WalSync, check_assumptions

log = logging.getLogger("node.store")

# 3: with the attribution index (node.store.sources); 2: a subject is a head row and a row per
# observation (node.store.rows); 1 was one value.
SCHEMA_VERSION = 3
COLUMN_FAMILIES = (
    "state",
    "observations",
    "outbox",
    "peers",
    "digest",
    "meta",
    "audit",
    "requests",
    "sources",
)
# How long a read waits for RocksDB to be reopened.
REOPEN_WAIT_S = 10.0


class StoreError(Exception):
    pass


class Memory(NamedTuple):
    """RocksDB's memory budget (``rocksdb_cache_mb``), shared by every column family: one
    block cache for the blocks read (data, index and filter blocks), the memtables charged to
    it and flushed once they take half of it. Without it each column family had a block cache of
    its own (32 MiB) and memtables of up to 128 MiB, nine times over."""

    cache: rocksdict.Cache
    write_buffers: rocksdict.WriteBufferManager

    @classmethod
    def of(cls, budget_bytes: int) -> Memory:
        cache = rocksdict.Cache(budget_bytes)
        buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            budget_bytes // 2, False, cache
        )
        return cls(cache, buffers)

    def table_options(self) -> rocksdict.Options:
        """A column family's options: its blocks, index and filters in the shared cache."""
        return self.tables(rocksdict.Options(raw_mode=True))

    def tables(self, opts: rocksdict.Options) -> rocksdict.Options:
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        return opts

    def database(self, opts: rocksdict.Options) -> rocksdict.Options:
        """``opts`` (db_options') with the memtables of every column family within the
        budget and the default column family's tables in the cache."""
        opts.set_write_buffer_manager(self.write_buffers)
        return self.tables(opts)


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


class _Reopening(dict[str, Any]):
    """A store's column families while RocksDB is closed: a lookup waits until it is open
    again and answers from the new ones, or raises UNAVAILABLE (a store closed for good, or
    one that could not be opened yet). Found keys cost nothing: only missing ones come here."""

    def __init__(self, tables: Tables, attribute: str) -> None:
        super().__init__()
        self._tables = tables
        self._attribute = attribute

    def __missing__(self, name: str) -> Any:
        tables = self._tables
        if tables._reopened.wait(REOPEN_WAIT_S):
            current = getattr(tables, self._attribute)
            if not isinstance(current, _Reopening):
                return current[name]
        raise Unavailable(
            f"node {tables.node} has its store closed (reopening it); retry",
            reason=Reason.STORE_UNWRITABLE,
            metadata={"node": tables.node},
            retry_after_s=1.0,
        )


class Tables:
    """The base of node.store.Store: its RocksDB handles and what was found wrong with them.

    Store's constructor sets every attribute declared here.
    """

    path: Path
    _dir: str
    node: str
    memory: Memory
    # What is wrong with this store, for status and health: corruption found at open or in a
    # read, and why writes are suspended (None while they are not).
    problems: list[str]
    suspended: str | None
    wal: WalSync
    _db: Any
    _cf: dict[str, Any]  # raw-mode column families: bytes only
    _handle: dict[str, Any]
    _synced: rocksdict.WriteOptions
    _unsynced: rocksdict.WriteOptions
    _reopened: threading.Event  # clear while RocksDB is being reopened
    # Guards the group commit's queue and lead (node.store.commit), and closing: a writer that
    # leads holds RocksDB's writes, as reopening it does.
    _lock: threading.Lock
    _queue: list[Any]
    _leading: bool
    _closed: bool

    def _open_db(self) -> None:
        """Opens RocksDB, refusing at first any corrupt WAL record (absolute consistency).

        When recovery finds one, the store is opened again up to it (point in time) and the
        damage is reported (``problems``, the log, a metric): the writes after it are lost here,
        so this run takes a new actor (never the previous one: node.store.identity) and
        anti-entropy brings them back from the peers that have them.
        """
        cf_opts = {name: self.memory.table_options() for name in COLUMN_FAMILIES}
        try:
            db = rocksdict.Rdict(
                self._dir, self.memory.database(db_options(strict=True)), column_families=cf_opts
            )
        except Exception as exc:  # rocksdict raises plain Exception for a locked or corrupt db
            if not is_corruption(exc):
                raise StoreError(f"cannot open RocksDB at {self.path}: {exc}") from exc
            self._report(
                "wal",
                f"RocksDB found its write-ahead log in {self.path} damaged ({exc}); opened with "
                "the writes before the damage, the later ones come back from peers",
            )
            try:
                db = rocksdict.Rdict(
                    self._dir,
                    self.memory.database(db_options(strict=False)),
                    column_families=cf_opts,
                )
            except Exception as again:
                raise StoreError(f"cannot open RocksDB at {self.path}: {again}") from again
        cfs = {n: db.get_column_family(n) for n in COLUMN_FAMILIES}
        try:
            check_assumptions(self._dir, [db, *cfs.values()], self._unsynced)
        except (WalAssumptionBroken, OSError) as exc:
            for cf in cfs.values():
                cf.close()
            db.close()
            raise StoreError(f"cannot open RocksDB at {self.path}: {exc}") from exc
        self._db = db
        self._cf = cfs
        self._handle = {name: db.get_column_family_handle(name) for name in COLUMN_FAMILIES}

    def memory_bytes(self) -> int:
        """RocksDB's memory in its budget (rocksdb_cache_mb): the blocks cached and the
        memtables charged to the cache."""
        return int(self.memory.cache.get_usage())

    def memtable_bytes(self) -> int:
        """The memtables' memory, of every column family (0 while RocksDB is closed)."""
        total = 0
        for cf in list(self._cf.values()):
            try:
                total += cf.property_int_value("rocksdb.size-all-mem-tables") or 0
            except Exception:  # closed meanwhile: metrics may scrape while RocksDB reopens
                return 0
        return total

    def _report(self, kind: str, problem: str) -> None:
        """Records damage found in the store (status, log, metric); the list stays bounded."""
        if len(self.problems) < 100:
            self.problems.append(problem)
        metrics.STORE_CORRUPTION.labels(kind).inc()
        log.error("node %s: %s", self.node if hasattr(self, "node") else self.path, problem)

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
        self.wal.release()
        # Column-family handles keep the database (and its LOCK file) alive until dropped, and
        # a failed write's traceback holds some (in the frames of a reference cycle).
        self._cf = _Reopening(self, "_cf")
        self._handle = _Reopening(self, "_handle")
        self._db = None
        gc.collect()
