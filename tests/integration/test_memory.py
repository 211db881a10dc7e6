"""What a node keeps in memory under a bulk load stays within the bounds an operator sets.

A bulk load writes far more subjects than the state cache (``cache_mb``) holds. Each write keeps
its subject's slot index (node.snapshots) for the next write; the index holds the subject's
whole state, so it must go when the state cache drops that state, or the states of every
subject written stay in memory, counted nowhere.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from pathlib import Path

from federation.client import Client, user
from node.engine import Engine
from node.store import Store
from node.writes import ObservationInput
from sync.observation import Subject, SubjectKind
from tests.integration.test_metrics import one

MiB = 2**20


def load(engine: Engine, users: range, agents: int = 5, slots: int = 10) -> None:
    """Each of ``agents`` writes one observation to each of ``slots`` slots of every user, one
    call per user, agent after agent (as benchmarks/scale.py's ObserveBatch calls do: a user's
    state has left the cache by the next agent's write), every string its own object (as
    decoded from a request)."""
    for agent in range(agents):
        for i in users:
            subject = Subject("acme", SubjectKind.USER, f"u-{i}")
            items = [
                ObservationInput(subject, "purchase", f"k{k}", f"fact {k} of u-{i}, {agent}", 0.8)
                for k in range(slots)
            ]
            engine.observe(f"agent-{agent}", items)


def test_a_bulk_load_keeps_within_the_state_and_snapshot_caches(tmp_path: Path) -> None:
    """300 users of 50 observations (about 15 MiB of states) through a 0.5 MiB state cache: what
    the load leaves in the interpreter's heap stays within what the two caches report (the
    figures /metrics shows), and each within its budget."""
    store = Store(tmp_path / "db", "sales", fsync=False, cache_mb=0.5)
    engine = Engine(store, snapshot_cache_mb=8)
    try:
        load(engine, range(300, 302))  # what is made once (locks, books, tables) made here
        gc.collect()
        tracemalloc.start()
        try:
            load(engine, range(300))
            gc.collect()
            used, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        cached, kept = store.cache_bytes(), engine.snapshots.cost_bytes
        assert 0 < cached <= 0.5 * MiB
        assert 0 < kept <= 8 * MiB
        # Besides the two caches, the footprint of each subject's slots stays (node.sizes,
        # bounded by its max_slots): under 256 bytes a slot, its key's text included.
        footprints = 300 * 10 * 256
        assert used <= cached + kept + footprints, (used, cached, kept)
    finally:
        store.close()


def test_rocksdb_keeps_its_blocks_and_memtables_within_rocksdb_cache_mb(tmp_path: Path) -> None:
    """About 12 MiB of statements written (more than the budget: the memtables are flushed once
    they take half of it), then every subject read back from RocksDB's files (the blocks they
    need cached): every column family together stays within an 8 MiB rocksdb_cache_mb, and the
    store's figures (/metrics) say so."""
    budget = 8 * MiB
    store = Store(tmp_path / "db", "sales", fsync=False, rocksdb_cache_mb=8)
    engine = Engine(store)
    subjects = [Subject("acme", SubjectKind.USER, f"u-{i}") for i in range(160)]
    try:
        for n, subject in enumerate(subjects):
            items = [
                ObservationInput(subject, "notes", f"k{k}", f"{n} {k} " + "w" * 1500, 0.8)
                for k in range(50)
            ]
            engine.observe("agent", items)
        # RocksDB's block cache is not strict: a block being inserted, and the L0 index and
        # filter blocks it keeps pinned, may take it past its capacity for a while (up to 6%
        # seen with this 8 MiB budget; the code before the shared cache took twice the budget).
        slack = budget // 8
        # Nor is the memtables' half: a memtable grows by 1 MiB arena blocks, and a flush starts
        # at a write that finds them past half, so the last write may leave one block more in
        # each column family it wrote (5 MiB of 8 seen). A burst of writes may also run ahead of
        # the flushes it starts; they catch up.
        deadline = time.monotonic() + 30
        while store.memtable_bytes() > budget * 3 // 4:
            assert time.monotonic() < deadline, f"memtables of {store.memtable_bytes()} bytes"
            time.sleep(0.05)
        assert 0 < store.memtable_bytes() <= store.memory_bytes() <= budget + slack
        store._empty_cache()
        for subject in subjects:
            assert len(store.load(subject).observations) == 50  # read from RocksDB's files
            assert store.memory_bytes() <= budget + slack
        assert store.memory_bytes() > store.memtable_bytes() + budget // 4  # blocks cached
    finally:
        store.close()


def test_a_node_shows_rocksdb_memory_on_metrics_within_rocksdb_cache_mb(start_node) -> None:
    node = start_node("rocks", "--rocksdb-cache-mb", "8")
    with Client(node.address, agent="agent", tenant="acme") as client:
        for i in range(20):
            client.observe(user(f"u-{i}"), f"statement {i}", confidence=0.8, context="budget")
    scraped = node.metrics()
    memtables = one(scraped, "selfmodel_rocksdb_memtable_bytes")
    assert 0 < memtables <= one(scraped, "selfmodel_rocksdb_cache_bytes") <= 8 * MiB
