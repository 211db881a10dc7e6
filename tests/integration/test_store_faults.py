"""The store over a failing or damaged disk, without gRPC: suspension, reopening, quarantine."""

from __future__ import annotations

import gc
import logging
import os
import random
from pathlib import Path

import pytest

from node.engine import Engine
from node.errors import Unavailable
from node.store import Store, bucket_of
from node.writes import ObservationInput
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

U1 = Subject("acme", SubjectKind.USER, "u-1")
U2 = Subject("acme", SubjectKind.USER, "u-2")


def item(subject: Subject, key: str, statement: str = "x") -> ObservationInput:
    return ObservationInput(subject, "facts", key, statement, 0.8)


def keys(engine: Engine, subject: Subject) -> set[str]:
    return {o.key for o in engine.state(subject).observations.values()}


def test_after_a_failed_wal_sync_resuming_reopens_rocksdb_under_a_new_actor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    store = Store(tmp_path / "db", "sales", fsync=True, outbox=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])
    actor, incarnation = store.actor, store.incarnation

    def failing(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fdatasync", failing)
        with pytest.raises(Unavailable, match="disk holding its data directory is full"):
            engine.observe("agent", [item(U1, "k2")])
    assert store.suspended is not None
    with pytest.raises(Unavailable, match="refuses writes"):
        engine.observe("agent", [item(U2, "k3")])
    store.set_peer_seq("acked", "peer", 5)  # skipped, not an error
    assert [r.message for r in caplog.records].count(
        f"node sales: writes suspended: {store.suspended}"
    ) == 1

    assert store.resume_writes()
    assert store.suspended is None
    # As after a crash: the failed write may have reached a peer with its dot.
    assert store.actor != actor and store.incarnation == incarnation + 1
    written = engine.observe("agent", [item(U1, "k4")])
    assert written.written[0].observation_id.startswith(f"{store.actor}:")
    assert {"k1", "k4"} <= keys(engine, U1)
    store.close()
    del engine, store
    gc.collect()
    reopened = Store(tmp_path / "db", "sales")
    assert reopened.resumable is not None  # resumed cleanly, closed cleanly
    assert {"k1", "k4"} <= {
        o.key for o in (reopened.load(U1) or SubjectState(U1)).observations.values()
    }
    reopened.close()


def verbatim_secret() -> str:
    """A string a compressed SST block keeps verbatim: no 4 bytes of it repeat within it or the
    hex, lowercase and digits of the rest of the block, which Snappy would encode as a back
    reference."""
    rng = random.Random()
    while True:
        secret = "".join(rng.choices("GHIJKLMNOPQRSTUVWXZ", k=96))
        grams = [secret[i : i + 4] for i in range(len(secret) - 3)]
        if len(set(grams)) == len(grams):
            return secret


def test_a_corrupt_subject_is_quarantined_its_digest_rewritten_and_the_actor_renewed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.CRITICAL, logger="node.store")
    secret = verbatim_secret()
    store = Store(tmp_path / "db", "sales")
    engine = Engine(store)
    for i in range(50):
        engine.observe("agent", [item(Subject("acme", SubjectKind.USER, f"o-{i}"), "k", "y" * 300)])
    engine.observe("agent", [item(U1, "k", f"secret {secret}")])
    store.close()
    del engine, store
    gc.collect()
    hit = False
    for sst in (tmp_path / "db").glob("*.sst"):
        raw = bytearray(sst.read_bytes())
        at = raw.find(secret.encode())
        if at >= 0:
            raw[at : at + 64] = b"\xff" * 64
            sst.write_bytes(bytes(raw))
            hit = True
    assert hit

    store = Store(tmp_path / "db", "sales")
    actor = store.actor
    buckets_before = store.bucket_hashes()
    assert store.verify() >= 1
    assert any("corrupt" in p and str(U1) in p for p in store.problems), store.problems
    assert store.actor != actor
    assert store.load(U1) is None or not store.load(U1).observations  # type: ignore[union-attr]
    key = U1.storage_key()
    bucket = bucket_of(key)
    digest_row = store.get_meta("digest", b"S" + bucket.to_bytes(2, "big") + key)
    assert digest_row == SubjectState(U1).digest()  # no longer vouching for the lost state
    assert store.bucket_hashes()[bucket] != buckets_before[bucket]
    assert store.verify() == 0  # rewritten: found once
    # The attribution index names what the subjects hold: nothing of a quarantined one.
    listed = {c.subject for _, c in store.contributions("acme", "agent", limit=1000)}
    holding = {s for s in store.subjects("acme") if (store.load(s) or SubjectState(s)).observations}
    assert U1 not in listed and listed == holding and len(listed) >= 40
    # Its rows now live apart from the corrupt block: writing and reading it again is clean.
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k", "after the repair")])
    assert store.verify() == 0
    assert keys(engine, U1) == {"k"}
    assert [c.subject for _, c in store.contributions("acme", "agent", limit=1000)].count(U1) == 1
    store.close()


def test_a_damaged_wal_is_reported_at_open_and_the_actor_is_not_resumed(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")
    Engine(store).observe("agent", [item(U1, f"k{i}") for i in range(100)])
    store._db.flush_wal(True)  # the WAL as a crash would leave it
    wal = max((tmp_path / "db").glob("*.log"), key=lambda p: p.stat().st_size)
    size = wal.stat().st_size
    os.truncate(wal, size // 2 + 7)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in (tmp_path / "db").iterdir():
        if f.name != "LOCK":
            (copy / f.name).write_bytes(f.read_bytes())
    store.close()

    damaged = Store(copy, "sales")
    assert any("write-ahead log" in p and "damaged" in p for p in damaged.problems)
    assert damaged.resumable is None
    damaged.close()
