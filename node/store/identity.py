"""Who writes: the node a data directory belongs to, and each run's incarnation, run and actor.

Every start takes a new incarnation and a new run, synced before anything else, and a new actor
to name its dots, never used before anywhere: its random part makes it so. Counting alone is not
enough: a node started on an empty directory after losing its disk, or on a restored backup,
counts again from where that directory stopped, and would hand out dots its earlier runs gave
other writes, which every peer would then drop as seen. The previous run's actor may be resumed
instead (``resume_actor``) only when that run closed cleanly and every peer grants this run's
claim to follow it (node.server, Sync.ClaimRun).
"""

from __future__ import annotations

import logging
import secrets
import threading

import rocksdict

from node.store.rows import ONE_VALUE_SCHEMA, migrate_one_value_states
from node.store.sources import SOURCES, UNINDEXED_SCHEMA, build_index
from node.store.tables import SCHEMA_VERSION, StoreError, Tables

log = logging.getLogger("node.store")


class RunIdentity(Tables):
    """Part of node.store.Store; ``_take_identity`` sets every attribute declared here."""

    incarnation: int
    previous_run: int
    run: int
    actor: str
    resumable: str | None  # the previous run's actor, when it closed cleanly
    _claims_lock: threading.Lock
    _incarnation_floor: int  # the incarnation on disk (note_incarnation)

    def _take_identity(self, node: str) -> None:
        """Checks that the open directory is ``node``'s, and starts this run (synced)."""
        meta = self._cf["meta"]
        stored_node = meta.get(b"node")
        if stored_node is not None and stored_node.decode() != node:
            self._db.close()
            raise StoreError(
                f"{self.path} holds the data of node {stored_node.decode()!r}, not {node!r}: "
                "give each node its own data directory"
            )
        schema = meta.get(b"schema")
        if schema is not None and int(schema) == ONE_VALUE_SCHEMA:
            migrated = migrate_one_value_states(
                self._db, self._cf["state"], self._handle, self._synced
            )
            log.info("node %s: %d subjects rewritten as rows (schema 1 to 2)", node, migrated)
        if schema is not None and int(schema) in (ONE_VALUE_SCHEMA, UNINDEXED_SCHEMA):
            indexed = build_index(self._db, self._cf, self._handle[SOURCES], self._synced)
            log.info("node %s: %d subjects indexed by source (schema 2 to 3)", node, indexed)
        elif schema is not None and int(schema) != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"{self.path} has schema {int(schema)}, this build reads {SCHEMA_VERSION} "
                f"(and migrates {ONE_VALUE_SCHEMA} and {UNINDEXED_SCHEMA}): run the build that "
                "wrote it, or start this node on an empty directory and let anti-entropy fill it "
                "from its peers"
            )
        self.node = node
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
        self._db.write(boot, self._synced)
        self._claims_lock = threading.Lock()
        self._incarnation_floor = self.incarnation

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

    def resume_actor(self) -> None:
        """Names this run's writes with the previous run's actor, whose counters go on.

        Only for a run whose every peer granted its claim (node.server): the previous run closed
        cleanly, so every dot it handed out is in this directory, and the peers' records show
        that no other copy of the directory has run on with the actor since. Before any write.
        """
        if self.resumable is None:
            raise StoreError("the previous run did not close cleanly: its actor is not resumable")
        with self._lock:
            if self.wal.written_groups or self._queue or self._leading:
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
