"""The node's RocksDB store: subject states, outbox, peer positions, digests and meta.

Every mutation writes state + outbox + digest in one WriteBatch with the WAL on. With
``sync=True`` concurrent writers share one fsync (group commit): the first waiting writer leads,
takes every batch queued behind it, writes them as one synced batch, wakes the others and hands
the lead to the next queued writer. Outbox sequence numbers are assigned by the leader, so they
follow commit order exactly and a crash can never leave a hole below an acknowledged entry.

The sync itself is not RocksDB's: rocksdict holds the GIL through a ``sync=True`` write, fsync
included, which stops every other thread of the node for each fsync and leaves nothing to group
(one write per fsync, measured). So the leader writes the batch without sync (RocksDB has then
handed the WAL record to the OS) and fdatasyncs the live WAL files itself, GIL released: the
same durability as RocksDB's own WAL sync (which uses fdatasync too), while the other threads
keep queueing batches for the next group. Until the sync returns, the group's writers are not
answered, the state cache does not show the batch and the counters do not move; only direct
RocksDB reads (a subject missing from the cache, a bucket's digests) could see it early. Such a
read fills the cache only if no write group was cached while it read (``load``), so the cache
never holds a state older than one it held before.

The outbox shows a group's entries as soon as RocksDB has them, while the WAL syncs: the
delta streams ship them to the peers in parallel with the local sync (as a Raft leader sends
entries to its followers while it appends them to its own log), which takes the sync off the
time from a write to its visibility elsewhere. A peer may so merge a write that this node then
loses, which costs nothing a CRDT cares about:

- if the sync fails, the writers get an error, but the write may exist on peers (like a write
  whose answer was lost), and this node refuses every later write until it has reopened
  RocksDB under a new actor (node.storefaults), as a restart would;
- if the machine crashes before the sync, the next run finds no clean close (``close``) and
  takes a new actor, so no dot of the lost writes is ever handed out again; anti-entropy
  brings the writes back from the peers that have them;
- the outbox positions stay consistent: RocksDB replays the WAL as a prefix, so a peer's
  acknowledgement written down here implies that the entries it covers survived. Should a
  machine crash ever break that (across a WAL switch, say), the delta streams clamp a
  recorded acknowledgement to the outbox's end (sync.replicator.PeerReplicator).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import rocksdict

from node import metrics
from node.errors import SelfModelError
from node.storefaults import (
    COLUMN_FAMILIES,
    StoreFaults,
    disk_failure,
    is_corruption,
)
from node.storefaults import (
    StoreError as StoreError,  # raised by Store: importable from here
)
from sync.causal import CausalContext
from sync.codec import (
    EncodedObservations,
    decode_delta,
    decode_state,
    encode_delta,
    encode_state_reusing,
)
from sync.crdt import NO_ERASE, EraseBound, SubjectState, digest, without_erased
from sync.delivery import Delta
from sync.observation import Subject

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUCKETS = 1024
_EMPTY_HASH = bytes(16)
# The digest of a subject never written: the empty state the engine starts it from.
_UNWRITTEN_DIGEST = digest(NO_ERASE, CausalContext())
# The newest outbox entries, kept in memory too: a peer that keeps up reads them from here.
OUTBOX_TAIL = 1024


def bucket_of(subject_key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(subject_key, digest_size=4).digest(), "big") % BUCKETS


def _xor(a: bytes, b: bytes, c: bytes) -> bytes:
    return (
        int.from_bytes(a, "big") ^ int.from_bytes(b, "big") ^ int.from_bytes(c, "big")
    ).to_bytes(16, "big")


class Change:
    """One subject's transition, and the delta to replicate (None: nothing to send).

    A plain class rather than a dataclass, as ``_Pending`` is: mypyc compiles its
    ``__init__``, while the one ``dataclasses`` generates runs interpreted, on every write.
    """

    def __init__(self, old: SubjectState | None, new: SubjectState, delta: Delta | None) -> None:
        self.old = old
        self.new = new
        self.delta = delta
        # Set by the commit: the new state's encoded position (encode_position), from which
        # the writer's handoff token is made (token_of_positions) with no encoding of its own.
        self.position = b""
        # The digest stored for the old state, when it is not the old state's (see quarantine).
        self.old_digest: bytes | None = None


class OutboxEntry(NamedTuple):
    seq: int
    written_ms: int
    delta: bytes  # an encoded Delta (a SubjectState with its event dots)


class _Cached(NamedTuple):
    """A subject's latest state, as the store's cache keeps it."""

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
    ) -> _Cached:
        """The entry of ``state``, whose encoding is ``stored_bytes`` long."""
        cost = cache_cost(len(state.observations), stored_bytes, encoded is not None)
        return cls(state, digest, encoded, cost)


def cache_cost(observations: int, stored_bytes: int, encoded: bool) -> int:
    """About the memory a cached state takes: 1.25 KiB for the entry, 0.75 KiB per observation
    (its objects), and 1.5 times its stored encoding's size for the text those objects hold, once
    more when the encoding is kept for the next write. Fitted with tracemalloc on subjects of 1
    to 200 observations with short and long text; the tests check that it errs on the high side.
    """
    per_byte = 5 if encoded else 3  # halves
    return 1280 + 768 * observations + stored_bytes * per_byte // 2


class _Pending:
    """A writer's batch in the group commit's queue (a plain class: see Change)."""

    def __init__(
        self,
        changes: Sequence[Change],
        extra: Sequence[tuple[str, bytes, bytes | None]],
        durable: bool,
    ) -> None:
        self.changes = changes
        self.extra = extra
        self.durable = durable
        # Held while a writer waits (a first leader has none): released once, when its batch
        # is written, or when it is its turn to lead. A bare lock: waking a writer is one
        # release, with none of an Event's Python-level bookkeeping under the GIL that bounds
        # the node.
        self.wake: threading.Lock | None = None
        self.finished = False
        self.error: BaseException | None = None
        self.last_seq = 0


@dataclass(frozen=True, slots=True)
class CommitStats:
    batches: int
    groups: int
    fsync_seconds: float


class Store(StoreFaults):
    """Thread-safe. Callers serialize read-modify-write of one subject (see node.engine)."""

    def __init__(
        self,
        path: Path,
        node: str,
        *,
        sync: bool = True,
        outbox: bool = False,
        cache_size: int = 20_000,
        cache_mb: float = 256.0,
    ) -> None:
        """``cache_size`` and ``cache_mb``: at most that many subject states kept in memory, of
        about that much memory in all (see cache_cost)."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {path}: {exc.strerror}") from exc
        self.path = path
        self._dir = str(path)
        # What is wrong with this store, for status and health (node.diskwatch): corruption
        # found at open or in a read, and why writes are suspended (None while they are not).
        self.problems: list[str] = []
        self.suspended: str | None = None
        self._reopened = threading.Event()
        self._reopened.set()
        self._open_db()
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = False  # with sync=True the leader syncs the WAL: _sync_wal
        self.sync = sync
        self._wal_lock = threading.Lock()
        self._wal_files: dict[str, int] = {}  # live WAL file -> descriptor kept to sync it
        self._wal_versions: tuple[int, ...] = ()  # memtable versions when they were listed
        self._wal_failed: OSError | None = None  # a failed WAL sync stops every later write
        self.outbox_enabled = outbox

        meta = self._cf["meta"]
        stored_node = meta.get(b"node")
        if stored_node is not None and stored_node.decode() != node:
            self._db.close()
            raise StoreError(
                f"{path} holds the data of node {stored_node.decode()!r}, not {node!r}: "
                "give each node its own data directory"
            )
        schema = meta.get(b"schema")
        if schema is not None and int(schema) != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(f"{path} has schema {int(schema)}, this build reads {SCHEMA_VERSION}")
        self.node = node
        # A new incarnation and a new run on every start, fsynced before anything else, and a
        # new actor to name this run's dots, never used before anywhere: its random part is what
        # makes it so. Counting alone is not enough: a node started on an empty directory after
        # losing its disk, or on a restored backup, counts again from where that directory
        # stopped, and would hand out dots its earlier runs already gave other writes, which
        # every peer would then drop as seen (tests/integration/test_store_engine).
        #
        # The previous run's actor may be resumed instead (resume_actor), so that restarts do not
        # add an actor to every causal context, but only when that run closed cleanly (see
        # close) and every peer then grants this run's claim to follow it (node.server): the
        # peers' records show that no other copy of this directory ran on with the actor.
        self.incarnation = int(meta.get(b"incarnation", b"0")) + 1
        self.previous_run = int(meta.get(b"run", b"0"))
        previous_actor = meta.get(b"actor")
        clean = (
            self.previous_run
            and meta.get(b"closed_cleanly") == str(self.previous_run).encode()
            and not self.problems  # never resume over a damaged WAL
        )
        self.resumable = previous_actor.decode() if clean and previous_actor is not None else None
        self.run = secrets.randbits(63) or 1
        self.actor = f"{node}.{self.incarnation}.{secrets.token_hex(4)}"
        meta_cf = self._handle["meta"]
        boot = rocksdict.WriteBatch(raw_mode=True)
        boot.put(b"node", node.encode(), meta_cf)
        boot.put(b"schema", str(SCHEMA_VERSION).encode(), meta_cf)
        boot.put(b"incarnation", str(self.incarnation).encode(), meta_cf)
        boot.put(b"run", str(self.run).encode(), meta_cf)
        boot.put(b"actor", self.actor.encode(), meta_cf)
        boot.delete(b"closed_cleanly", meta_cf)  # this run is not closed yet
        self._synced = rocksdict.WriteOptions()
        self._synced.sync = True
        self._db.write(boot, self._synced)
        self._claims_lock = threading.Lock()
        self._incarnation_floor = self.incarnation  # the incarnation on disk (note_incarnation)
        self.hlc_high_water = int(meta.get(b"hlc", b"0"))
        self.outbox_seq = int(meta.get(b"outbox_seq", b"0"))

        self._buckets = [_EMPTY_HASH] * BUCKETS
        self._reload_buckets()

        self._cache: collections.OrderedDict[Subject, _Cached] = collections.OrderedDict()
        self._cache_size = cache_size
        self._cache_budget = int(cache_mb * 2**20)
        self._cache_cost = 0  # the sum of the cached entries' costs
        # Guards filling the cache: write groups cached (counted), and a read's state cached
        # only if none was since it read RocksDB (see load).
        self._cache_lock = threading.Lock()
        self._cache_writes = 0
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self._closed = False
        self._outbox_grew = threading.Condition()
        self.hlc = self.hlc_high_water
        # Trimming deletes entries one by one from here (see trim_outbox); found once at open.
        self._outbox_lock = threading.Lock()
        self._outbox_trimmed = self._first_outbox_key(0) - 1
        self._unsynced = rocksdict.WriteOptions()
        # Consecutive written entries ending at outbox_seq (see outbox); guarded by _tail_lock.
        self._tail: collections.deque[OutboxEntry] = collections.deque(maxlen=OUTBOX_TAIL)
        self._tail_lock = threading.Lock()
        # Groups written to RocksDB, and how many of them a WAL sync covers (see sync_written).
        self._written_groups = 0
        self._synced_groups = 0
        # Serializes quarantines (see quarantine), each checked again under it.
        self._quarantine_lock = threading.Lock()
        # Set after a failed write: RocksDB's WAL writer is broken until the store reopens it.
        self._reopen_needed = False
        # Called with the reason (None: resumed) when writes are suspended or resume.
        self.on_suspension: Callable[[str | None], None] | None = None
        # The largest causal context written since the start (metrics: a start that takes a new
        # actor adds one to the contexts written from then on, and handoff tokens carry them).
        self.context_entries_max = 0

    # -- damage found in the store (the rest of its fault handling: node.storefaults) --

    def quarantine(self, subject: Subject, exc: BaseException) -> SubjectState | None:
        """Stops vouching for a subject whose stored state RocksDB finds corrupt; returns None,
        the state it is read as from then on.

        Its state is written down as the empty state, and its digest with it: the digest row,
        stored apart, would otherwise keep matching the peers' and anti-entropy would never
        repair it. The empty state's digest differs from any written one, so anti-entropy
        brings the subject's state back from the peers. A new actor is taken first, as after
        a crash: the lost state may have held dots of this run that no peer has yet.
        """
        key = subject.storage_key()
        with self._quarantine_lock:
            try:
                raw = self._cf["state"].get(key)
            except Exception as again:
                if not is_corruption(again):
                    raise
            else:  # rewritten since it was found corrupt: no longer so
                return None if raw is None else self.load(subject)
            self._report(
                "sst", f"the stored state of {subject} is corrupt ({exc}); repaired from peers"
            )
            stored = self._cf["digest"].get(b"S" + bucket_of(key).to_bytes(2, "big") + key)
            self.renew_actor()
            change = Change(None, SubjectState(subject), None)
            change.old_digest = stored if stored is not None else _EMPTY_HASH
            self.commit([change])
        return None

    def verify(self, pause_s: float = 0.0) -> int:
        """Reads every stored state, quarantining those RocksDB finds corrupt; returns how many.

        A get per subject (listed by its digest row), not a scan: an iterator over a corrupt
        block ends there without an error, hiding the subjects after it. ``pause_s`` after each
        thousand subjects leaves the node's other threads most of the time.
        """
        found = 0
        after = b"S"
        while True:
            rows = self.scan("digest", after, 1000)
            keys = [k for k, _ in rows if k.startswith(b"S")]
            for k in keys:
                try:
                    self._cf["state"].get(k[3:])
                except Exception as exc:
                    if not is_corruption(exc):
                        raise
                    self.quarantine(Subject.from_storage_key(k[3:]), exc)
                    found += 1
            if len(keys) < len(rows) or len(rows) < 1000:
                return found
            after = rows[-1][0]
            time.sleep(pause_s)

    # -- reads ---------------------------------------------------------------------------

    def load(self, subject: Subject) -> SubjectState | None:
        cached = self._cache.get(subject)
        if cached is not None:
            return cached.state
        writes = self._cache_writes
        try:
            raw = self._cf["state"].get(subject.storage_key())
        except Exception as exc:
            if not is_corruption(exc):
                raise
            return self.quarantine(subject, exc)
        if raw is None:
            return None
        state = decode_state(raw)
        with self._cache_lock:
            # Cached only if no write group was cached since the read: else these bytes may be
            # older than what the cache holds by now, and the subject's next write would build
            # on them, dropping a write and handing out its dot again.
            if self._cache_writes == writes and subject not in self._cache:
                self._remember(_Cached.of(state, len(raw)))
        return state

    @staticmethod
    def _digest(state: SubjectState, cached: _Cached | None) -> bytes:
        """``state.digest()``, from ``cached`` (the cache's entry of its subject) when that holds
        this very state."""
        if cached is not None and cached.state is state and cached.digest is not None:
            return cached.digest
        if (
            state.erased == NO_ERASE
            and not state.observations
            and not state.withdrawals
            and state.context.is_empty()
        ):
            return _UNWRITTEN_DIGEST
        return state.digest()

    def subjects(self, tenant: str | None = None) -> Iterator[Subject]:
        prefix = b"" if tenant is None else tenant.encode() + b"\x00"
        for key in self._cf["state"].keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield Subject.from_storage_key(key)

    def bucket_hashes(self) -> list[bytes]:
        return list(self._buckets)

    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]:
        prefix = b"S" + bucket.to_bytes(2, "big")
        found = []
        for key, value in self._cf["digest"].items(from_key=prefix):
            if not key.startswith(prefix):
                break
            found.append((Subject.from_storage_key(key[3:]), value))
        return found

    def outbox(self, after: int, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` outbox entries with a sequence above ``after``, in order.

        Entries RocksDB has, including those of a group whose WAL sync is still under way (see
        the module's doc). A peer that keeps up asks for the newest ones, served from memory;
        older ones from RocksDB.
        """
        with self._tail_lock:
            tail = self._tail
            if tail and tail[0].seq <= after + 1:
                start = after + 1 - tail[0].seq
                return list(itertools.islice(tail, start, start + limit))
        entries = []
        last = self.outbox_seq
        for key, value in self._cf["outbox"].items(from_key=(after + 1).to_bytes(8, "big")):
            seq = int.from_bytes(key, "big")
            if seq > last:
                break
            entries.append(OutboxEntry(seq, int.from_bytes(value[:8], "big"), value[8:]))
            if len(entries) >= limit:
                break
        return entries

    def outbox_first(self) -> int:
        """The lowest sequence still in the outbox (outbox_seq + 1 when it is empty)."""
        return self._first_outbox_key(self._outbox_trimmed + 1)

    def _first_outbox_key(self, start: int) -> int:
        # Seeking past the trimmed entries skips their tombstones instead of stepping over them.
        for key in self._cf["outbox"].keys(from_key=start.to_bytes(8, "big")):
            return int.from_bytes(key, "big")
        return self.outbox_seq + 1

    def wait_outbox(self, after: int, timeout_s: float) -> bool:
        """Waits until the outbox holds a sequence above ``after``; False on timeout."""
        with self._outbox_grew:
            return self._outbox_grew.wait_for(
                lambda: self.outbox_seq > after or self._closed, timeout_s
            )

    def resume_actor(self) -> None:
        """Names this run's writes with the previous run's actor, whose counters go on.

        Only for a run whose every peer granted its claim (node.server): the previous run closed
        cleanly, so every dot it handed out is in this directory, and the peers' records show
        that no other copy of the directory has run on with the actor since. Before any write.
        """
        if self.resumable is None:
            raise StoreError("the previous run did not close cleanly: its actor is not resumable")
        with self._lock:
            if self._written_groups or self._queue or self._leading:
                raise StoreError("the actor can only be resumed before the first write")
            self._cf["meta"].put(b"actor", self.resumable.encode(), self._synced)
            self.actor = self.resumable

    def claim_run(self, peer: str, previous: int, run: int, incarnation: int) -> tuple[bool, int]:
        """Grants ``peer``'s claim only if the run recorded for it was ``previous``; returns
        whether it did, and the incarnation recorded before (0 when none).

        Records ``run`` as the peer's latest (synced) when granted, or when ``incarnation`` is
        later than the recorded run's: so of two runs claiming to follow the same one at most
        one is granted, a run of a stale copy of the peer's directory never is, and a late
        call of a run that has ended does not bring its record back.
        """
        key = f"run:{peer}".encode()
        with self._claims_lock:
            raw = self._cf["peers"].get(key)
            recorded_incarnation, recorded = (
                (int(x) for x in raw.split(b":")) if raw is not None else (0, 0)
            )
            granted = previous != 0 and recorded == previous
            if granted or incarnation > recorded_incarnation:
                self._cf["peers"].put(key, f"{incarnation}:{run}".encode(), self._synced)
        return granted, recorded_incarnation

    def note_incarnation(self, seen: int) -> None:
        """A peer had a run of this node at incarnation ``seen`` on record (Sync.ClaimRun): the
        next start counts on from above it. This run keeps its own."""
        with self._claims_lock:
            if seen <= self._incarnation_floor:
                return
            self._cf["meta"].put(b"incarnation", str(seen).encode(), self._synced)
            self._incarnation_floor = seen

    def position(self, kind: str, peer: str) -> int:
        """``acked``: how far ``peer`` acknowledged our outbox; ``applied``: how far we merged
        ``peer``'s outbox."""
        raw = self._cf["peers"].get(f"{kind}:{peer}".encode())
        return int(raw) if raw is not None else 0

    def set_position(self, kind: str, peer: str, seq: int) -> None:
        """Records a position; skipped while writes are suspended (a position recorded lower
        than it is only makes a peer resend deltas it has)."""
        if self.suspended is None:
            self._cf["peers"].put(f"{kind}:{peer}".encode(), str(seq).encode())

    @staticmethod
    def position_row(kind: str, peer: str, seq: int) -> tuple[str, bytes, bytes]:
        return ("peers", f"{kind}:{peer}".encode(), str(seq).encode())

    def scan(
        self, cf: str, after: bytes = b"", limit: int = 100, *, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` rows of a column family in key order, strictly after ``after``
        (forward only), or the last rows first with ``reverse``."""
        rows: list[tuple[bytes, bytes]] = []
        if limit <= 0:
            return rows
        table = self._cf[cf]
        items = table.items(backwards=True) if reverse else table.items(from_key=after)
        for key, value in items:
            if not reverse and key == after:
                continue
            rows.append(cast(tuple[bytes, bytes], (key, value)))
            if len(rows) >= limit:
                break
        return rows

    def get_meta(self, cf: str, key: bytes) -> bytes | None:
        value: bytes | None = self._cf[cf].get(key)
        return value

    # -- writes --------------------------------------------------------------------------

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
        are always durable (their entries are shipped during the sync: see the module's doc).
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

    def _lead(self, mine: _Pending) -> None:
        with self._lock:
            group, self._queue = self._queue, []
        started = time.perf_counter()
        error: BaseException | None = None
        written: list[_Cached] = []
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
            if self._wal_failed is None:
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

    def _empty_cache(self) -> None:
        """Drops every cached state, for when RocksDB may hold newer ones: later reads load
        what RocksDB has (and a read racing this caches nothing: see load)."""
        with self._cache_lock:
            self._cache.clear()
            self._cache_cost = 0
            self._cache_writes += 1

    def _note_written(self, written: list[_Cached]) -> None:
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

    def _write_group(self, group: list[_Pending]) -> list[_Cached]:
        """Writes the group as one batch; returns every new state written, with its digest and
        its observations' bytes."""
        if self.suspended is not None:
            raise self._refusal()
        batch = rocksdict.WriteBatch(raw_mode=True)
        put = batch.put
        handle = self._handle
        state_cf, outbox_cf, digest_cf = handle["state"], handle["outbox"], handle["digest"]
        outbox_enabled = self.outbox_enabled
        seq = self.outbox_seq
        now_ms = time.time_ns() // 1_000_000
        now_row = now_ms.to_bytes(8, "big")
        touched: dict[int, bytes] = {}
        hlc = self.hlc
        entries: list[OutboxEntry] = []
        written: list[_Cached] = []
        cache = self._cache
        for p in group:
            for change in p.changes:
                new = change.new
                key = new.subject.storage_key()
                cached = cache.get(new.subject)
                raw, change.position, encoded = encode_state_reusing(
                    new, cached.encoded if cached is not None else None
                )
                put(key, raw, state_cf)
                old = change.old
                if change.old_digest is not None:
                    old_digest = change.old_digest
                else:
                    old_digest = self._digest(old, cached) if old is not None else _EMPTY_HASH
                new_digest = new.digest()
                written.append(_Cached.of(new, len(raw), new_digest, encoded))
                if old_digest != new_digest:
                    bucket = bucket_of(key)
                    current = touched.get(bucket, self._buckets[bucket])
                    touched[bucket] = _xor(current, old_digest, new_digest)
                    put(b"S" + bucket.to_bytes(2, "big") + key, new_digest, digest_cf)
                delta = change.delta
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
                        put(seq.to_bytes(8, "big"), now_row + raw, outbox_cf)
                p.last_seq = seq
            for cf, key, value in p.extra:
                if value is None:
                    batch.delete(key, self._handle[cf])
                else:
                    batch.put(key, value, self._handle[cf])
        for bucket, value in touched.items():
            batch.put(b"B" + bucket.to_bytes(2, "big"), value, digest_cf)
        meta = self._handle["meta"]
        if seq != self.outbox_seq:
            batch.put(b"outbox_seq", str(seq).encode(), meta)
        if hlc != self.hlc:
            batch.put(b"hlc", str(hlc).encode(), meta)
        self._db.write(batch, self._write_opts)
        self._written_groups += 1
        self.outbox_seq = seq
        if entries:
            # Shipped to the peers while the WAL syncs, not after: see the module's doc.
            with self._tail_lock:
                self._tail.extend(entries)
            with self._outbox_grew:
                self._outbox_grew.notify_all()
        if self.sync and any(p.durable for p in group):
            self._sync_wal()
        self.hlc = hlc
        for bucket, value in touched.items():
            self._buckets[bucket] = value
        return written

    def sync_written(self) -> None:
        """Makes every batch written so far durable (those of ``commit(durable=False)``).

        One sync covers every batch written before it started, so concurrent callers share
        syncs as group commit does. Nothing to do without fsync.
        """
        if self.sync and self._synced_groups < self._written_groups:
            self._sync_wal()

    def _sync_wal(self) -> None:
        """fdatasyncs every live WAL file, and the directory when a new one appeared.

        Called by the group's leader right after its unsynced write, which RocksDB has already
        written to the OS (``manual_wal_flush`` is off). Every live WAL is synced, not only the
        newest, so a WAL switch around the write loses nothing; a WAL deleted meanwhile was
        obsolete, its memtables flushed to synced SST files. The files are listed again only
        when a memtable version changed: RocksDB creates a WAL only when it switches a memtable,
        which installs a new version of that column family. Each call that blocks releases the
        GIL and must win it back, so the common case makes one: ``os.fdatasync`` per WAL.
        """
        with self._wal_lock:
            if self._wal_failed is not None:
                raise self._refusal()
            covered = self._written_groups
            if self._synced_groups >= covered:
                return  # a sync that started after our write already finished
            try:
                versions = self._memtable_versions()
                if versions != self._wal_versions:
                    self._list_wal_files()
                    self._wal_versions = versions
                for fd in self._wal_files.values():
                    os.fdatasync(fd)
            except OSError as exc:
                # The batch is in RocksDB but perhaps not on disk, and after a failed fsync the
                # kernel may drop the dirty pages, so a later sync could succeed over a hole.
                # Like RocksDB after a failed WAL sync: no further write until RocksDB is
                # reopened (resume_writes), which recovers what is on disk, as a restart does.
                self._wal_failed = exc
                raise
            self._synced_groups = covered

    def _memtable_versions(self) -> tuple[int, ...]:
        """Every column family's super-version number (read from RocksDB's memory)."""
        cfs = [self._db, *self._cf.values()]
        return tuple(cf.property_int_value("rocksdb.current-super-version-number") for cf in cfs)

    def _list_wal_files(self) -> None:
        names = {n for n in os.listdir(self._dir) if n.endswith(".log")}
        for gone in self._wal_files.keys() - names:
            os.close(self._wal_files.pop(gone))
        new = False
        for name in sorted(names - self._wal_files.keys()):
            try:
                self._wal_files[name] = os.open(os.path.join(self._dir, name), os.O_RDONLY)
            except FileNotFoundError:
                continue
            new = True
        if new:
            fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _release_wal_files(self) -> None:
        """Closes the WAL descriptors, so a WAL RocksDB deletes (after a forget) is really gone."""
        with self._wal_lock:
            for fd in self._wal_files.values():
                os.close(fd)
            self._wal_files.clear()
            self._wal_versions = ()

    def _reload_buckets(self) -> None:
        self._buckets = [_EMPTY_HASH] * BUCKETS
        for key, value in self._cf["digest"].items(from_key=b"B"):
            if not key.startswith(b"B"):
                break
            self._buckets[int.from_bytes(key[1:3], "big")] = value

    def _remember(self, cached: _Cached) -> None:
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
            self._cache_cost -= cache.popitem(last=False)[1].cost

    def cache_bytes(self) -> int:
        """The estimated memory of the cached states (see cache_cost)."""
        return self._cache_cost

    def trim_outbox(self, upto: int) -> None:
        """Drops outbox entries up to and including ``upto`` (acknowledged by every peer).

        One point delete per entry, from the previous trim on, never a range delete: RocksDB
        keeps range tombstones in the memtable until it is flushed, and every new iterator pays
        for all of them, so trimming on every acknowledgement made each outbox read slower by
        the second (milliseconds per read after a few thousand trims).
        """
        with self._outbox_lock:
            start = self._outbox_trimmed + 1
            # Skipped while writes are suspended: a later acknowledgement trims them.
            if upto < start or self.suspended is not None:
                return
            batch = rocksdict.WriteBatch(raw_mode=True)
            outbox = self._handle["outbox"]
            for seq in range(start, upto + 1):
                batch.delete(seq.to_bytes(8, "big"), outbox)
            self._db.write(batch, self._unsynced)
            self._outbox_trimmed = upto
            with self._tail_lock:
                while self._tail and self._tail[0].seq <= upto:
                    self._tail.popleft()

    def purge(self, subject: Subject, erased: EraseBound) -> None:
        """Removes a forgotten subject's erased data from RocksDB's files, not only from view.

        Drops the observations ``erased`` reaches from its deltas in the outbox (the erase itself
        stays, to reach the peers), flushes the memtables (so the WAL holding the old
        rows becomes obsolete) and compacts the subject's key range, so no SST file or log
        keeps a superseded version of its observations.

        A delta keeps its context and events (merging it equals merging the original and then
        the erase), and is never deleted: a peer that has not acknowledged it yet must find the
        sequence unbroken, since a hole in the outbox reads as entries trimmed past the peer.
        """
        key = subject.storage_key()
        with self._outbox_lock:
            batch = rocksdict.WriteBatch(raw_mode=True)
            outbox = self._handle["outbox"]
            start = (self._outbox_trimmed + 1).to_bytes(8, "big")
            for k, v in self._cf["outbox"].items(from_key=start):
                delta = decode_delta(v[8:])
                if delta.state.subject != subject:
                    continue
                kept = without_erased(delta.state, erased)
                if len(kept.observations) != len(delta.state.observations):
                    batch.put(k, v[:8] + encode_delta(Delta(kept, delta.events)), outbox)
            self._db.write(batch, self._unsynced)
            with self._tail_lock:
                self._tail.clear()  # read from RocksDB, purged, until new entries refill it
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
        self._cf["outbox"].compact_range(None, None, rewrite)
        self._db.flush_wal(True)
        self._release_wal_files()

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

        The mark lets the next run resume this run's actor (see __init__): written after the
        flush, synced, and only when no group commit was in flight and no write ever failed, so
        every dot this run handed out is on disk. A store whose writes are suspended (a full
        disk) closes all the same, unmarked.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = not self._leading and not self._queue
        with self._outbox_grew:
            self._outbox_grew.notify_all()
        if self._db is not None and self.suspended is None:
            try:
                for name in COLUMN_FAMILIES:
                    self._cf[name].flush(True)
                if idle and self._wal_failed is None:
                    self._cf["meta"].put(b"closed_cleanly", str(self.run).encode(), self._synced)
            except Exception as exc:
                log.error("node %s: closing without a clean mark: %s", self.node, exc)
        self._close_db()
