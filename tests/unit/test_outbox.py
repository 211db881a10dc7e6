"""The store's outbox: trimming, and what a forget leaves in it."""

from __future__ import annotations

import gc
from pathlib import Path

from node.engine import Engine
from node.store import Store
from node.writes import ObservationInput
from sync.causal import Dot
from sync.codec import decode_state
from sync.crdt import merge
from sync.observation import Subject, SubjectKind


def subject(id: str) -> Subject:
    return Subject("acme", SubjectKind.USER, id)


def observe(engine: Engine, who: str, key: str) -> None:
    item = ObservationInput(subject(who), "facts", key, f"fact {key}", 0.8)
    engine.observe("agent", [item])


def seqs(store: Store) -> list[int]:
    return [e.seq for e in store.outbox(0, 1_000)]


def test_trimming_drops_exactly_the_acknowledged_entries_and_survives_a_reopen(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db", "n1", fsync=False, outbox=True)
    engine = Engine(store)
    for i in range(10):
        observe(engine, f"u{i % 3}", f"k{i}")
    store.trim_outbox(4)
    assert seqs(store) == list(range(5, 11))
    assert store.outbox_first() == 5
    store.trim_outbox(3)  # behind the last trim: nothing to do
    store.trim_outbox(7)
    assert seqs(store) == [8, 9, 10]
    store.close()
    del engine, store
    gc.collect()  # RocksDB releases its lock once the column family handles are gone

    store = Store(tmp_path / "db", "n1", fsync=False, outbox=True)
    assert store.outbox_first() == 8
    store.trim_outbox(10)
    assert seqs(store) == []
    assert store.outbox_first() == 11
    store.close()


def test_trimming_after_every_write_leaves_point_deletes_and_no_range_tombstone(
    tmp_path: Path,
) -> None:
    """Every new iterator pays for each range tombstone in the memtable, so trimming on every
    acknowledgement with range deletes made each outbox read slower by the second. Counted in
    RocksDB's memtable rather than timed: one point delete per trimmed entry, and every other
    memtable entry a write (a range tombstone would be an entry that is neither)."""
    store = Store(tmp_path / "db", "n1", fsync=False, outbox=True)
    engine = Engine(store)
    for i in range(1_500):  # as the replicator does: trim on every acknowledgement, then read
        observe(engine, "u", f"k{i % 20}")
        store.trim_outbox(store.outbox_seq - 1)
        [entry] = store.outbox(store.outbox_seq - 1, 1)
        assert entry.seq == store.outbox_seq
    outbox = store._cf["outbox"]
    deletes = outbox.property_int_value("rocksdb.num-deletes-active-mem-table")
    entries = outbox.property_int_value("rocksdb.num-entries-active-mem-table")
    store.close()
    assert deletes == 1_499  # every entry but the newest, one point delete each
    assert entries == 1_500 + deletes, f"{entries - 1_500 - deletes} range tombstones"


def test_a_forget_empties_the_subjects_old_deltas_without_leaving_a_hole_in_the_outbox(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db", "n1", fsync=False, outbox=True)
    engine = Engine(store)
    observe(engine, "gone", "secret-one")
    observe(engine, "kept", "public")
    observe(engine, "gone", "secret-two")
    store.trim_outbox(1)  # every peer has the first delta; one has not seen the rest
    engine.forget(subject("gone"))
    entries = store.outbox(0, 100)
    # A peer at 1 reads 2, 3, 4 in order: no gap that would read as a trimmed outbox.
    assert [e.seq for e in entries] == [2, 3, 4]
    assert not any(b"secret" in e.delta for e in entries)
    kept, emptied, erase = (decode_state(e.delta) for e in entries)
    assert kept.subject == subject("kept") and len(kept.observations) == 1
    assert emptied.subject == subject("gone") and not emptied.observations
    assert Dot(store.actor, 2) in emptied.context  # its dot still reaches the peer
    assert erase.erased.hlc and not erase.observations  # the erase reaches peers
    # Merging the emptied delta changes nothing where the erase is.
    state = engine.state(subject("gone"))
    assert merge(state, emptied) == state
    store.close()
