"""A subject stored as rows (node.store.rows): a write's bytes follow its change, not the
subject's size; a directory of the one-value layout is migrated at open."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from node.engine import Engine
from node.store import COLUMN_FAMILIES, SCHEMA_VERSION, Store, StoreError
from node.store.rows import OBSERVATIONS, read_rows, rows_end, rows_prefix
from node.writes import ObservationInput
from sync.codec import encode_state
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

BIG = Subject("acme", SubjectKind.USER, "big")
FRESH = Subject("acme", SubjectKind.USER, "fresh")


def item(subject: Subject, key: str, statement: str) -> ObservationInput:
    return ObservationInput(subject, "facts", key, statement, 0.8)


class CountingDb:
    """RocksDB's handle, counting the bytes of every WriteBatch written through it."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.written: list[int] = []

    def write(self, batch: rocksdict.WriteBatch, options: Any) -> None:
        self.written.append(batch.size_in_bytes())
        self._db.write(batch, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def grow(engine: Engine, subject: Subject, slots: int, sources: int) -> None:
    for source in range(sources):
        for slot in range(slots):
            statement = f"source {source} says slot {slot} holds a long enough statement"
            engine.observe(f"agent-{source}", [item(subject, f"k{slot}", statement)])


def test_a_write_to_a_large_subject_writes_about_what_a_write_to_a_fresh_one_does(
    tmp_path: Path,
):
    store = Store(tmp_path / "db", "sales", fsync=False)
    engine = Engine(store)
    grow(engine, BIG, slots=10, sources=30)
    assert len(engine.state(BIG).observations) == 300
    counting = CountingDb(store._db)
    store._db = counting

    statement = "source 0 says slot 3 changed its mind, at about the same length"
    engine.observe("agent-0", [item(FRESH, "k3", statement)])
    engine.observe("agent-0", [item(FRESH, "k3", statement)])  # supersedes, as below
    fresh = counting.written[-1]
    engine.observe("agent-0", [item(BIG, "k3", statement)])  # supersedes agent-0's k3
    big = counting.written[-1]
    whole = len(encode_state(engine.state(BIG)))
    # The head grows with the subject's causal context (one actor here), not with its
    # observations: the batch is the new observation's row, one row deleted, head and digests.
    assert big <= 1.3 * fresh, (big, fresh, whole)
    assert whole > 20 * fresh
    store._db = counting._db
    store.close()


def one_value_directory(path: Path, subjects: dict[Subject, SubjectState]) -> None:
    """Turns a closed store's directory into the one-value layout (schema 1): each subject's
    whole encode_state as its ``state`` value, no observation rows."""
    db = rocksdict.Rdict(
        str(path),
        rocksdict.Options(raw_mode=True),
        column_families={n: rocksdict.Options(raw_mode=True) for n in COLUMN_FAMILIES},
    )
    state, rows, meta = (db.get_column_family(n) for n in ("state", OBSERVATIONS, "meta"))
    for subject, full in subjects.items():
        key = subject.storage_key()
        state[key] = encode_state(full)
        rows.delete_range(rows_prefix(key), rows_end(key))
    meta[b"schema"] = b"1"
    for cf in (state, rows, meta):
        cf.flush(True)
        cf.close()
    db.close()
    del db, state, rows, meta
    gc.collect()


def test_a_one_value_directory_is_migrated_to_rows_at_open(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")
    engine = Engine(store)
    grow(engine, BIG, slots=4, sources=5)
    grow(engine, FRESH, slots=1, sources=1)
    states = {s: engine.state(s) for s in (BIG, FRESH)}
    buckets = store.bucket_hashes()
    store.close()
    del engine, store
    gc.collect()
    one_value_directory(tmp_path / "db", states)

    store = Store(tmp_path / "db", "sales")
    assert store.get_meta("meta", b"schema") == str(SCHEMA_VERSION).encode()
    for subject, state in states.items():
        assert store.load(subject) == state
        rows = read_rows(store._cf[OBSERVATIONS], subject.storage_key())
        assert len(rows) == len(state.observations)
        assert (
            len(store.get_meta("state", subject.storage_key()) or b"") < len(encode_state(state))
            or not state.observations
        )
    assert store.bucket_hashes() == buckets  # the digests were the states', and still are
    engine = Engine(store)
    engine.observe("agent-9", [item(BIG, "k0", "after the migration")])
    assert len(engine.state(BIG).observations) == len(states[BIG].observations) + 1
    store.close()
    del engine, store
    gc.collect()
    reopened = Store(tmp_path / "db", "sales")
    assert len((reopened.load(BIG) or SubjectState(BIG)).observations) == 21
    reopened.close()


def test_a_directory_of_an_unknown_schema_is_refused_naming_what_to_do(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")
    store.close()
    del store
    gc.collect()
    db = rocksdict.Rdict(
        str(tmp_path / "db"),
        rocksdict.Options(raw_mode=True),
        column_families={n: rocksdict.Options(raw_mode=True) for n in COLUMN_FAMILIES},
    )
    meta = db.get_column_family("meta")
    meta[b"schema"] = b"99"
    meta.close()
    db.close()
    del db, meta
    gc.collect()
    with pytest.raises(StoreError, match=r"schema 99.*empty directory"):
        Store(tmp_path / "db", "sales")


def test_holds_observations_reads_one_row_and_keeps_nothing_in_the_cache(tmp_path: Path):
    store = Store(tmp_path / "db", "sales", fsync=False)
    engine = Engine(store)
    grow(engine, BIG, slots=3, sources=4)
    grow(engine, FRESH, slots=1, sources=1)
    engine.forget(FRESH)
    store._empty_cache()

    assert store.holds_observations(BIG)
    assert not store.holds_observations(FRESH)  # forgotten: its head stays, no rows
    assert not store.holds_observations(Subject("acme", SubjectKind.USER, "never"))
    assert store.cache_bytes() == 0  # a listing does not push hot states out of the cache
    store.close()
