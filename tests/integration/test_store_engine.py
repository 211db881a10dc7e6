"""The engine over a real RocksDB store, without gRPC: durability, ordering, clock safety."""

from __future__ import annotations

import collections
import gc
import hashlib
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from node.engine import Engine
from node.errors import HandoffPending, Unavailable
from node.store import BUCKETS, Change, Store, StoreError, bucket_of
from node.store.rows import read_rows
from node.writes import ObservationInput
from sync.causal import CausalContext, Dot
from sync.codec import decode_delta, decode_state, decode_token, encode_state
from sync.crdt import NO_ERASE, EraseBound, SubjectState
from sync.delivery import Delta
from sync.hlc import HybridClock, pack, wall_ms
from sync.observation import Evidence, Observation, Subject, SubjectKind

U1 = Subject("acme", SubjectKind.USER, "u-1")


def item(
    subject: Subject, key: str, statement: str = "x", confidence: float = 0.8
) -> ObservationInput:
    return ObservationInput(subject, "facts", key, statement, confidence)


def die_without_closing(path: Path) -> None:
    """A process that opens the store of node sales at ``path`` and exits without closing it."""
    die = (
        "import os, sys; from pathlib import Path; from node.store import Store; "
        "Store(Path(sys.argv[1]), 'sales'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", die, str(path)], check=True, timeout=60)


def test_every_start_is_a_new_incarnation_with_an_actor_never_used_before(tmp_path: Path):
    seen = []
    for _ in range(3):
        store = Store(tmp_path / "db", "sales")
        seen.append((store.incarnation, store.actor))
        store.close()
    assert [incarnation for incarnation, _ in seen] == [1, 2, 3]
    for incarnation, actor in seen:
        assert re.fullmatch(rf"sales\.{incarnation}\.[0-9a-f]{{8}}", actor), actor
    die_without_closing(tmp_path / "db")  # as after kill -9: the same
    store = Store(tmp_path / "db", "sales")
    seen.append((store.incarnation, store.actor))
    store.close()
    assert seen[-1][0] == 5
    assert len({actor for _, actor in seen}) == len(seen)


def _keys(engine: Engine, subject: Subject) -> set[str]:
    return {o.key for o in engine.state(subject).observations.values()}


def test_a_node_started_afresh_after_losing_its_disk_never_reuses_a_dot(tmp_path: Path):
    """Its peers fill it in by anti-entropy; a write it takes before they have must not name
    a dot its old self handed out, or every peer would drop the write as one it has seen."""
    peer = Engine(Store(tmp_path / "peer", "support"))
    lost = Engine(Store(tmp_path / "lost", "sales"))
    lost.observe("agent", [item(U1, "plan", "Pro")])
    peer.merge_remote([Delta(lost.state(U1))])
    lost.store.close()
    fresh = Engine(Store(tmp_path / "fresh", "sales"))  # same node, empty directory
    fresh.observe("agent", [item(U1, "seats", "12")])
    peer.merge_remote([Delta(fresh.state(U1))])
    assert _keys(peer, U1) == {"plan", "seats"}
    fresh.merge_remote([Delta(peer.state(U1))])
    assert fresh.state(U1).digest() == peer.state(U1).digest()
    fresh.store.close()
    peer.store.close()


def test_a_node_restored_from_a_backup_never_reuses_a_dot_it_handed_out_since(tmp_path: Path):
    """A copy of the data directory taken while the node was stopped (a cold backup), restored
    after the node wrote on through a restart: the restored node must not count again from
    where the copy stopped."""
    peer = Engine(Store(tmp_path / "peer", "support"))
    Store(tmp_path / "sales", "sales").close()
    shutil.copytree(tmp_path / "sales", tmp_path / "backup")
    for i in range(2):
        engine = Engine(Store(tmp_path / "sales", "sales"))
        engine.observe("agent", [item(U1, f"after-backup-{i}")])
        peer.merge_remote([Delta(engine.state(U1))])
        engine.store.close()
    shutil.rmtree(tmp_path / "sales")
    shutil.copytree(tmp_path / "backup", tmp_path / "sales")
    restored = Engine(Store(tmp_path / "sales", "sales"))
    restored.observe("agent", [item(U1, "after-restore")])
    peer.merge_remote([Delta(restored.state(U1))])
    assert _keys(peer, U1) == {"after-backup-0", "after-backup-1", "after-restore"}
    restored.merge_remote([Delta(peer.state(U1))])
    assert restored.state(U1).digest() == peer.state(U1).digest()
    restored.store.close()
    peer.store.close()


def test_a_handoff_position_not_merged_yet_is_pending_at_once_and_read_once_merged(
    tmp_path: Path,
):
    """The engine never waits for a position: it answers HandoffPending naming the missing dot
    and a retry delay, and the same read succeeds once the write is merged."""
    sales = Engine(Store(tmp_path / "sales", "sales"))
    # Its cluster's nodes: a token naming an actor of none of them is refused, not pending.
    support = Engine(Store(tmp_path / "support", "support"), members=frozenset({"sales"}))
    token = decode_token(sales.observe("sales_agent", [item(U1, "plan", "Pro")]).token)
    started = time.monotonic()
    with pytest.raises(HandoffPending) as pending:
        support.at_position(U1, token)
    assert time.monotonic() - started < 1.0, "a pending position is answered at once"
    assert pending.value.reason == "HANDOFF_POSITION_PENDING"
    assert pending.value.metadata["actor"] == sales.actor
    assert pending.value.metadata["counter"] == "1" and pending.value.metadata["held"] == "0"
    assert pending.value.retry_after_s is not None and 0 < pending.value.retry_after_s <= 1
    support.merge_remote([Delta(sales.state(U1))])
    assert isinstance(support.at_position(U1, token), SubjectState)
    assert _keys(support, U1) == {"plan"}
    sales.store.close()
    support.store.close()


def test_a_data_directory_of_another_node_is_refused(tmp_path: Path):
    Store(tmp_path / "db", "sales").close()
    with pytest.raises(StoreError, match="holds the data of node 'sales'"):
        Store(tmp_path / "db", "support")


def test_concurrent_writers_share_group_commits_and_the_outbox_has_no_holes(tmp_path: Path):
    store = Store(tmp_path / "db", "sales", fsync=True, outbox=True)
    engine = Engine(store)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(40):
                engine.observe(
                    f"agent{w}", [item(Subject("acme", SubjectKind.USER, f"u{w}"), f"k{i}")]
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    entries = store.outbox(0, 10_000)
    assert [e.seq for e in entries] == list(range(1, 321))
    groups = REGISTRY.get_sample_value("selfmodel_commit_groups_total") or 0
    batches = REGISTRY.get_sample_value("selfmodel_commit_batches_total") or 0
    assert batches >= 320 and groups < batches, "no group commit ever carried two writers"
    store.close()

    reopened = Store(tmp_path / "db", "sales", outbox=True)
    for w in range(8):
        state = reopened.load(Subject("acme", SubjectKind.USER, f"u{w}"))
        assert state is not None and len(state.observations) == 40
    assert reopened.outbox_seq == 320
    reopened.close()


def remote_delta(subject: Subject, hlc: int) -> Delta:
    dot = Dot("remote.1", 1)
    obs = Observation(dot, "facts", "k", "peer_agent", "from the future", 0.9, (), hlc, "remote")
    return Delta(
        SubjectState(subject, NO_ERASE, CausalContext.of([dot]), {dot: obs}), frozenset([dot])
    )


def test_a_delta_from_a_clock_too_far_ahead_is_refused_counted_and_never_moves_the_clock(
    tmp_path: Path,
):
    store = Store(tmp_path / "db", "sales")
    clock = HybridClock(max_offset_ms=1_000, high_water=store.hlc_high_water)
    engine = Engine(store, clock=clock)
    before = REGISTRY.get_sample_value("selfmodel_clock_skew_refused_total") or 0
    last = clock.last

    outcome = engine.merge_remote([remote_delta(U1, pack(wall_ms() + 3_600_000))])

    assert (outcome.merged, outcome.refused) == (0, (0,))
    assert engine.state(U1).observations == {}
    assert clock.last == last
    assert REGISTRY.get_sample_value("selfmodel_clock_skew_refused_total") == before + 1

    ok = engine.merge_remote([remote_delta(U1, pack(wall_ms() + 10))])
    assert (ok.merged, ok.refused) == (1, ())
    assert len(engine.state(U1).observations) == 1
    store.close()


def test_anti_entropy_of_a_subject_with_one_observation_too_new_repairs_the_rest(
    tmp_path: Path,
):
    """A whole state merges without its too-new observation (nor that observation's dot), and
    the same state merges whole once the clock allows it."""
    store = Store(tmp_path / "db", "sales")
    wall = [wall_ms()]
    clock = HybridClock(lambda: wall[0], max_offset_ms=1_000, high_water=store.hlc_high_water)
    engine = Engine(store, clock=clock)
    dots = [Dot("remote.1", c) for c in (1, 2, 3)]
    stamps = [pack(wall[0]), pack(wall[0] + 600_000), pack(wall[0] + 1)]
    observations = {
        dot: Observation(dot, "facts", f"k{dot.counter}", "agent", "s", 0.9, (), hlc, "remote")
        for dot, hlc in zip(dots, stamps, strict=True)
    }
    state = SubjectState(U1, NO_ERASE, CausalContext.of(dots), observations)

    outcome = engine.merge_remote([Delta(state)])

    assert (outcome.merged, outcome.refused, outcome.held_back) == (1, (), 1)
    assert "ahead" in outcome.reason
    merged = engine.state(U1)
    assert set(merged.observations) == {dots[0], dots[2]}
    assert dots[1] not in merged.context  # not recorded as seen: a later merge still adds it
    assert merged.digest() != state.digest()

    wall[0] += 600_000
    again = engine.merge_remote([Delta(state)])
    assert (again.merged, again.refused, again.held_back) == (1, (), 0)
    assert engine.state(U1).digest() == state.digest()
    store.close()


def test_a_state_whose_erase_bound_or_withdrawal_is_too_new_is_refused_whole_until_the_clock_allows(
    tmp_path: Path,
):
    """An erase bound or a withdrawal is one event's and cannot be taken out of a whole state
    without its dot staying in the context (a position claimed but not held): such a state is
    refused whole, is not acknowledged as merged, and merges once the clock allows it."""
    store = Store(tmp_path / "db", "sales")
    wall = [wall_ms()]
    clock = HybridClock(lambda: wall[0], max_offset_ms=1_000, high_water=store.hlc_high_water)
    engine = Engine(store, clock=clock)
    engine.observe("agent", [item(U1, "k", "a fact")])
    erase = Dot("remote.1", 1)
    ahead = pack(wall[0] + 600_000)
    erased = SubjectState(U1, EraseBound(ahead), CausalContext.of([erase]))
    withdrawn = SubjectState(
        U1, NO_ERASE, CausalContext.of([Dot("remote.1", 2)]), {}, {("facts", "k", "agent"): ahead}
    )
    before = engine.state(U1)

    outcome = engine.merge_remote([Delta(erased), Delta(withdrawn)])

    assert (outcome.merged, outcome.refused) == (0, (0, 1))
    assert "ahead" in outcome.reason and dict(outcome.reasons)[U1].startswith("clock skew")
    assert engine.state(U1) == before  # neither the bound nor the erase's dot recorded

    wall[0] += 600_000
    again = engine.merge_remote([Delta(erased)])
    assert (again.merged, again.refused) == (1, ())
    assert not engine.state(U1).observations and erase in engine.state(U1).context
    store.close()


def test_a_write_whose_next_counter_would_pass_the_bound_is_refused_at_the_writer(
    tmp_path: Path,
):
    """Peers refuse a counter beyond MAX_COUNTER, so the writer never mints one."""
    from node.errors import ResourceExhausted
    from sync.causal import MAX_COUNTER

    store = Store(tmp_path / "db", "sales")
    engine = Engine(store)
    at_bound = SubjectState(U1, NO_ERASE, CausalContext({engine.actor: MAX_COUNTER}))
    engine.merge_remote([Delta(at_bound)])
    outbox = store.outbox_seq

    with pytest.raises(ResourceExhausted, match=r"beyond the bound every replica accepts"):
        engine.observe("agent", [item(U1, "k")])
    with pytest.raises(ResourceExhausted, match=r"beyond the bound"):
        engine.observe("agent", [item(U1, "k")])
    assert store.outbox_seq == outbox  # nothing minted, nothing queued for peers
    assert engine.state(U1).observations == {}
    engine.observe("agent", [item(Subject("acme", SubjectKind.USER, "u-2"), "k")])  # others go on
    store.close()


def test_a_node_whose_saved_clock_is_beyond_the_offset_refuses_writes_until_it_is_not(
    tmp_path: Path,
):
    from node.errors import Unavailable

    store = Store(tmp_path / "db", "sales")
    wall = [wall_ms()]
    saved = pack(wall[0] + 150_000)
    clock = HybridClock(lambda: wall[0], max_offset_ms=60_000, high_water=saved)
    engine = Engine(store, clock=clock)
    before = (
        REGISTRY.get_sample_value("selfmodel_writes_refused_total", {"reason": "clock_ahead"}) or 0
    )

    for write in (
        lambda: engine.observe("agent", [item(U1, "k")]),
        lambda: engine.retract(U1, "facts", "k", "agent"),
        lambda: engine.forget(U1),
    ):
        with pytest.raises(Unavailable, match=r"150000 ms ahead.*max_clock_offset_ms = 60000"):
            write()
    assert store.outbox_seq == 0 and clock.last == saved
    assert (
        REGISTRY.get_sample_value("selfmodel_writes_refused_total", {"reason": "clock_ahead"})
        == before + 3
    )

    wall[0] += 90_000  # now exactly max_clock_offset_ms behind the saved clock
    engine.observe("agent", [item(U1, "k")])
    assert clock.last > saved
    store.close()


def test_remote_merges_write_the_origin_position_in_the_same_batch(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")
    engine = Engine(store)
    engine.merge_remote(
        [remote_delta(U1, pack(wall_ms()))], extra=[Store.peer_seq_row("applied", "support", 7)]
    )
    store.close()
    reopened = Store(tmp_path / "db", "sales")
    assert reopened.peer_seq("applied", "support") == 7
    assert reopened.load(U1) is not None
    reopened.close()


def test_forget_keeps_the_erase_in_the_outbox_and_no_delta_keeps_the_data(tmp_path: Path):
    store = Store(tmp_path / "db", "sales", outbox=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1", "Secret detail")])
    engine.forget(U1)
    entries = store.outbox(0, 100)
    deltas = [decode_delta(e.delta).state for e in entries]
    assert deltas[-1].subject == U1 and deltas[-1].erased.hlc  # the erase reaches peers
    assert all(not d.observations for d in deltas)
    assert not any(b"Secret detail" in e.delta for e in entries)
    store.close()


def test_a_subject_s_stored_bytes_are_its_whole_encoding_over_every_kind_of_write(
    tmp_path: Path,
):
    """Each write encodes only the observations it adds (the rest are the bytes of the write
    before): what RocksDB holds is still exactly ``encode_state`` of the state, and reads back as
    it, through supersedes, merges, retractions, a forget (after which the dots go on), a
    restart with an empty cache and a cache too small to hold the subject. Each write's token,
    made from the start of those bytes, names the position the write left."""
    store = Store(tmp_path / "db", "sales", cache_size=1)
    engine = Engine(store)
    other = Subject("acme", SubjectKind.USER, "u-2")

    def stored_is_encoded(token: str | None = None) -> None:
        state = engine.state(U1)
        key = U1.storage_key()
        head = store.get_meta("state", key)
        assert head is not None
        rows = read_rows(store._cf["observations"], key)
        assert len(rows) == len(state.observations)
        # The head and the rows are encode_state's bytes: its observations' fields in dot
        # order are the rows in key order, the rest is the head.
        body = b"".join(rows)
        full = encode_state(state)
        assert body in full and full.replace(body, b"", 1) == head
        assert decode_state(head + body) == state
        if token is not None:
            assert decode_token(token) == {U1: state.context}

    def observe(subject: Subject, key: str, statement: str = "x", source: str = "sales_agent"):
        return engine.observe(source, [item(subject, key, statement)]).token

    for key in ("k1", "k2", "k3"):
        stored_is_encoded(observe(U1, key, f"first {key}"))
    observe(U1, "k1", "another view", source="support_agent")
    stored_is_encoded(observe(U1, "k2", "superseded"))
    engine.merge_remote([remote_delta(U1, pack(wall_ms()))])
    stored_is_encoded()
    stored_is_encoded(engine.retract(U1, "facts", "k3", "sales_agent")[1])
    stored_is_encoded(engine.retract(U1, "facts", "k3", "sales_agent")[1])  # nothing to retract
    observe(other, "k1")  # U1 leaves the cache of one
    stored_is_encoded(observe(U1, "k4"))
    store.close()
    store = Store(tmp_path / "db", "sales", cache_size=1)
    engine = Engine(store)
    stored_is_encoded(observe(U1, "k5"))
    stored_is_encoded(engine.forget(U1))
    before = engine.state(U1).context
    for key in ("k1", "k2"):  # dots go on after the forget: none names two observations
        stored_is_encoded(observe(U1, key, f"after the forget {key}"))
        assert not any(d in before for d in engine.state(U1).observations)
    assert {o.statement for o in engine.state(U1).observations.values()} == {
        "after the forget k1",
        "after the forget k2",
    }
    both = engine.observe("sales_agent", [item(other, "k9"), item(U1, "k9")]).token
    assert decode_token(both) == {s: engine.position(s) for s in (U1, other)}
    store.close()


def test_a_read_that_raced_a_write_never_leaves_the_older_state_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A reader that missed the cache reads the subject from RocksDB; a write lands (and even
    leaves the cache again) before it has decoded what it read. The older state must not be
    cached then: the next write would build on it, dropping the landed write and handing out its
    dot again."""
    store = Store(tmp_path / "db", "sales", cache_size=1)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1", "before")])
    engine.observe("agent", [item(Subject("acme", SubjectKind.USER, "u-2"), "k1")])  # evicts U1
    read, go_on = threading.Event(), threading.Event()

    class SlowForTheReader:
        """The state column family, holding the reader between its read and its decoding."""

        def __init__(self, table: Any) -> None:
            self._table = table

        def get(self, key: bytes) -> bytes | None:
            raw: bytes | None = self._table.get(key)
            if threading.current_thread().name == "reader":
                read.set()
                assert go_on.wait(10)
            return raw

        def __getattr__(self, name: str) -> Any:
            return getattr(self._table, name)

    monkeypatch.setitem(store._cf, "state", SlowForTheReader(store._cf["state"]))
    reader = threading.Thread(target=engine.state, args=(U1,), name="reader")
    reader.start()
    assert read.wait(10)  # the reader has the older bytes
    written = engine.observe("agent", [item(U1, "k2", "landed while the reader decoded")])
    engine.observe("agent", [item(Subject("acme", SubjectKind.USER, "u-2"), "k2")])  # evicts U1
    go_on.set()
    reader.join(10)

    engine.observe("agent", [item(U1, "k3", "after")])
    state = engine.state(U1)
    assert {o.key for o in state.observations.values()} == {"k1", "k2", "k3"}
    assert len({o.dot for o in state.observations.values()}) == 3
    assert written.written[0].observation_id in {str(o.dot) for o in state.observations.values()}
    store.close()


def test_a_group_whose_bookkeeping_fails_is_still_answered_and_the_next_write_builds_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The group is durable by then: its writers get their answer, the lead passes on (a leader
    that raised here left every later write waiting), and no stale state stays cached."""
    store = Store(tmp_path / "db", "sales")
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])  # U1 cached

    class BreaksOnce(collections.OrderedDict[Subject, Any]):
        """The state cache, failing the first state cached into it once armed."""

        armed = broke = False

        def __setitem__(self, subject: Subject, cached: Any) -> None:
            if self.armed and not self.broke:
                self.broke = True
                raise RuntimeError("bookkeeping broke")
            super().__setitem__(subject, cached)

    store._cache = BreaksOnce(store._cache)
    store._cache.armed = True
    with caplog.at_level(logging.ERROR, logger="node.store"):
        first = engine.observe("agent", [item(U1, "k2")])
    assert "emptying the state cache" in caplog.text
    assert store._cache.broke
    second = threading.Thread(target=engine.observe, args=("agent", [item(U1, "k3")]), daemon=True)
    second.start()
    second.join(10)
    assert not second.is_alive(), "the next write waited for a lead never passed on"
    state = engine.state(U1)
    assert {o.key for o in state.observations.values()} == {"k1", "k2", "k3"}
    assert first.written[0].observation_id in {str(o.dot) for o in state.observations.values()}
    store.close()


def test_after_a_group_fails_past_its_rocksdb_write_the_next_write_builds_on_rocksdb_s_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The writer got an error, but RocksDB has its write (and its dot, shipped to the peers):
    the store still takes writes, so the next one must not build on the older cached state."""
    caplog.set_level(logging.CRITICAL, logger="node.store")
    store = Store(tmp_path / "db", "sales", outbox=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])  # U1 cached
    grew = store._outbox_grew

    class Broken:
        def __enter__(self) -> None:
            raise RuntimeError("after the write")

        def __exit__(self, *exc: object) -> None:
            pass

    store._outbox_grew = Broken()  # type: ignore[assignment]
    with pytest.raises(StoreError, match="after the write"):
        engine.observe("agent", [item(U1, "k2")])
    store._outbox_grew = grew
    engine.observe("agent", [item(U1, "k3")])
    state = engine.state(U1)
    assert sorted(o.key for o in state.observations.values()) == ["k1", "k2", "k3"]
    assert len({o.dot for o in state.observations.values()}) == 3
    store.close()


def test_writers_and_cold_readers_hammering_a_tiny_cache_lose_nothing(tmp_path: Path):
    """Threads switching every microsecond: writers on six subjects, readers that mostly miss a
    cache of two. Every acknowledged write is kept, under its own dot, and no call fails (an
    unguarded cache raised KeyError from its LRU eviction here, and a leader that raised left
    its group's writers waiting forever)."""
    store = Store(tmp_path / "db", "sales", fsync=False, cache_size=2)
    engine = Engine(store)
    subjects = [Subject("acme", SubjectKind.USER, f"u{i}") for i in range(6)]
    acked: list[tuple[Subject, str]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def guarded(work: Callable[[random.Random], None], seed: int) -> threading.Thread:
        def run() -> None:
            try:
                work(random.Random(seed))
            except BaseException as exc:
                failures.append(exc)

        return threading.Thread(target=run, daemon=True)

    def write(rnd: random.Random) -> None:
        for i in range(150):
            subject = rnd.choice(subjects)
            result = engine.observe("agent", [item(subject, f"{rnd.random()}-{i}")])
            acked.append((subject, result.written[0].observation_id))

    def read(rnd: random.Random) -> None:
        while not done.is_set():
            engine.state(rnd.choice(subjects))

    writers = [guarded(write, seed) for seed in range(4)]
    readers = [guarded(read, 100 + seed) for seed in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in readers + writers:
            thread.start()
        for thread in writers:
            thread.join(60)
        done.set()
        for thread in readers:
            thread.join(10)
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures
    assert not any(t.is_alive() for t in writers + readers), "a writer or reader hung"
    assert len(acked) == 600
    kept = {s: {str(o.dot) for o in engine.state(s).observations.values()} for s in subjects}
    assert [(s, dot) for s, dot in acked if dot not in kept[s]] == []
    assert len(set(acked)) == 600  # no dot of a subject handed out twice
    store.close()


def _evidence(k: int, n: int) -> tuple[Evidence, ...]:
    return tuple(
        Evidence("call", f"crm://call/{k}-{i}", f"quote {k} {i} " + "q" * 40) for i in range(n)
    )


SHAPES = {  # observations as agents write them: every string its own object
    "short": lambda s, k: ObservationInput(s, "facts", f"k{k}", f"x{k}", 0.8),
    "typical": lambda s, k: ObservationInput(
        s,
        "motivation",
        f"fact-{k}",
        f"Fact {k} about how {s.id} decides to buy",
        0.8,
        _evidence(k, 1),
    ),
    "long": lambda s, k: ObservationInput(
        s, "motivation", f"fact-{k}", f"{k} {s.id} " + "y" * 1500, 0.8, _evidence(k, 4)
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("beliefs", [1, 120])
def test_the_state_cache_estimates_its_memory_on_the_high_side(
    tmp_path: Path, shape: str, beliefs: int
):
    """What an operator's --cache-mb bounds: the states a node keeps in memory, written here
    (with their encoding kept) or read back from RocksDB, measured with tracemalloc."""
    subjects = [Subject("acme", SubjectKind.USER, f"u{i}") for i in range(10)]
    for reread in (False, True):
        store = Store(tmp_path / "db", "sales", fsync=False)
        engine = Engine(store)
        gc.collect()
        tracemalloc.start()
        try:
            for subject in subjects:
                if reread:
                    engine.state(subject)
                else:
                    for k in range(beliefs):
                        engine.observe("agent", [SHAPES[shape](subject, k)])
            gc.collect()
            used, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The engine's slot indexes (node.snapshots), which writes keep, are estimated apart.
        estimate = store.cache_bytes() + engine.snapshots.cost_bytes
        assert used <= estimate <= 2.2 * used, (reread, used, estimate)  # 1.1-1.75 measured
        store.close()


def test_the_state_cache_keeps_within_its_memory_budget_and_keeps_the_newest(tmp_path: Path):
    store = Store(tmp_path / "db", "sales", fsync=False, cache_mb=0.25)
    engine = Engine(store)
    subjects = [Subject("acme", SubjectKind.USER, f"u{i}") for i in range(40)]
    for k in range(20):
        for subject in subjects:
            engine.observe("agent", [SHAPES["typical"](subject, k)])
            assert 0 < store.cache_bytes() <= 0.25 * 2**20
    cached = [s for s in subjects if store._cache.get(s) is not None]
    assert subjects[-1] in cached and len(cached) < len(subjects)
    assert cached == subjects[-len(cached) :]  # the least recently written went first
    huge = Subject("acme", SubjectKind.USER, "huge")
    engine.observe("agent", [SHAPES["long"](huge, k) for k in range(100)])
    assert store.cache_bytes() > 0.25 * 2**20  # a state above the budget alone is still kept
    assert list(store._cache) == [huge]
    store.close()


def _bucket_hashes_from_scratch(store: Store, subjects: list[Subject]) -> list[bytes]:
    """Each bucket: the XOR, over its subjects written, of blake2b(digest + key)."""
    hashes = [0] * BUCKETS
    for subject in subjects:
        state = store.load(subject)
        assert state is not None and state.digest() != SubjectState(subject).digest()
        bound = hashlib.blake2b(state.digest() + subject.storage_key(), digest_size=16)
        hashes[bucket_of(subject.storage_key())] ^= int.from_bytes(bound.digest(), "big")
    return [h.to_bytes(16, "big") for h in hashes]


def test_digests_and_bucket_hashes_match_the_states_over_writes_and_restarts(tmp_path: Path):
    subjects = [Subject("acme", SubjectKind.USER, f"u{i}") for i in range(6)]
    store = Store(tmp_path / "db", "sales", cache_size=3)  # some states reloaded from RocksDB
    engine = Engine(store)
    for round_ in range(3):
        for subject in subjects:
            engine.observe("agent", [item(subject, f"k{round_}")])
        engine.retract(subjects[round_], "facts", "k0", "agent")
        if round_ == 1:
            store.close()
            store = Store(tmp_path / "db", "sales", cache_size=3)
            engine = Engine(store)
    engine.forget(subjects[5])
    for subject in subjects:
        state = store.load(subject)
        assert state is not None
        assert (subject, state.digest()) in store.bucket_digests(bucket_of(subject.storage_key()))
    assert store.bucket_hashes() == _bucket_hashes_from_scratch(store, subjects)
    store.close()


def test_store_figures_read_zero_after_close_instead_of_failing_a_scrape(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")
    Engine(store).observe("agent", [item(U1, "k1")])
    assert store.size_bytes() > 0 and store.estimate_subjects() >= 0
    store.close()
    assert (store.size_bytes(), store.estimate_subjects()) == (0, 0)


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The base names of the files fdatasynced from now on (each still synced for real)."""
    names: list[str] = []
    fdatasync = os.fdatasync

    def recording(fd: int) -> None:
        names.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recording)
    return names


def test_a_durable_commit_fdatasyncs_every_live_wal_file_even_after_a_wal_switch(
    tmp_path: Path, synced: list[str]
):
    def live_wals() -> list[str]:
        return sorted(n for n in os.listdir(tmp_path / "db") if n.endswith(".log"))

    store = Store(tmp_path / "db", "sales", fsync=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])
    before = live_wals()
    assert before and sorted(set(synced)) == before

    engine.forget(U1)  # flushes the memtables: RocksDB switches to a new WAL
    synced.clear()
    engine.observe("agent", [item(U1, "k2")])
    after = live_wals()
    assert after != before and sorted(set(synced)) == after
    store.close()
    reopened = Store(tmp_path / "db", "sales")
    state = reopened.load(U1)
    assert state is not None and [o.key for o in state.observations.values()] == ["k2"]
    reopened.close()


def open_files() -> set[str]:
    """The paths of the files this process holds open (deleted ones included)."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        paths.add(target.removesuffix(" (deleted)"))
    return paths


def test_a_full_memtable_s_new_wal_is_synced_and_the_deleted_one_let_go(
    tmp_path: Path, synced: list[str]
):
    store = Store(tmp_path / "db", "sales", fsync=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])
    before = set(synced)
    for cf in ("state", "digest", "meta"):  # as RocksDB does when memtables fill up
        store._cf[cf].flush(True)
    synced.clear()
    engine.observe("agent", [item(U1, "k2")])
    live = {n for n in os.listdir(tmp_path / "db") if n.endswith(".log")}
    assert set(synced) == live and live != before
    gone = {str(tmp_path / "db" / name) for name in before - live}
    assert not gone & open_files(), "a deleted WAL is still held open"
    store.close()


def test_without_fsync_nothing_is_fdatasynced(tmp_path: Path, synced: list[str]):
    store = Store(tmp_path / "db", "sales", fsync=False)
    Engine(store).observe("agent", [item(U1, "k")])
    assert synced == []
    store.close()


def test_after_a_failed_wal_sync_the_store_refuses_every_write_until_reopened_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # A logged failure's traceback would keep the store's column-family handles (its LOCK) alive.
    caplog.set_level(logging.CRITICAL, logger="node.store")
    store = Store(tmp_path / "db", "sales", fsync=True, outbox=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])
    actor = store.actor

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fdatasync", failing)
        with pytest.raises(Unavailable, match="Input/output error"):
            engine.observe("agent", [item(U1, "k2")])
    with pytest.raises(Unavailable, match=f"node sales refuses writes: .*{tmp_path / 'db'}"):
        engine.observe("agent", [item(U1, "k3")])
    assert [o.key for o in engine.state(U1).observations.values()] == ["k1"]
    # The failed write was shipped to the peers during its sync: they may hold its dot.
    shipped = [decode_delta(e.delta) for e in store.outbox(1, 10)]
    assert [o.key for d in shipped for o in d.state.observations.values()] == ["k2"]
    store.close()
    del engine, store
    gc.collect()  # the failed writes' tracebacks are in reference cycles holding the handles

    # So the next run never hands that dot out again: it cannot resume the actor.
    reopened = Store(tmp_path / "db", "sales", fsync=True, outbox=True)
    assert reopened.resumable is None
    with pytest.raises(StoreError, match="not resumable"):
        reopened.resume_actor()
    assert reopened.actor != actor
    Engine(reopened).observe("agent", [item(U1, "k4")])
    state = reopened.load(U1)
    assert state is not None and "k4" in {o.key for o in state.observations.values()}
    reopened.close()


def test_a_group_s_outbox_entries_are_shipped_while_its_wal_syncs_not_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The delta streams may send a write to the peers in parallel with its local sync."""
    store = Store(tmp_path / "db", "sales", fsync=True, outbox=True)
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1")])
    during: list[tuple[list[int], bool, bool]] = []
    fdatasync = os.fdatasync

    def syncing(fd: int) -> None:
        # What a peer's delta stream sees while the group's sync is under way.
        shown = [e.seq for e in store.outbox(0, 10)]
        cached = any(o.key == "k2" for o in engine.state(U1).observations.values())
        during.append((shown, store.wait_outbox(1, 0.0), cached))
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", syncing)
    engine.observe("agent", [item(U1, "k2")])
    # The entry is shipped during the sync; the writer, and readers here, see it after.
    assert during == [([1, 2], True, False)]
    store.close()


def test_a_merge_shown_before_its_sync_is_on_disk_after_sync_written(
    tmp_path: Path, synced: list[str]
):
    """A receiver merges a peer's batch unsynced, shows it, and syncs before acknowledging."""
    peer = Engine(Store(tmp_path / "peer", "support", fsync=False))
    peer.observe("agent", [item(U1, "k1")])
    store = Store(tmp_path / "db", "sales", fsync=True)
    engine = Engine(store)
    engine.merge_remote([Delta(peer.state(U1))], durable=False)
    assert [o.key for o in engine.state(U1).observations.values()] == ["k1"]  # shown at once
    assert synced == []
    store.sync_written()
    assert synced, "sync_written did not sync the WAL"
    count = len(synced)
    store.sync_written()  # nothing written since: nothing to sync
    assert len(synced) == count
    with pytest.raises(ValueError, match="must be durable"):
        engine.store.commit(
            [Change(None, engine.state(U1), Delta(engine.state(U1)))], durable=False
        )
    store.close()


def test_the_store_tracks_the_largest_causal_context_it_wrote(tmp_path: Path):
    """Exported as selfmodel_causal_context_entries_max: a start with a new actor adds one."""
    sales = Engine(Store(tmp_path / "sales", "sales"))
    assert sales.store.context_entries_max == 0
    sales.observe("agent", [item(U1, "plan")])
    assert sales.store.context_entries_max == 1
    for run in range(3):  # three runs of support write the subject, sales merges each
        support = Engine(Store(tmp_path / "support", "support"))
        support.merge_remote([Delta(sales.state(U1))])
        support.observe("agent", [item(U1, f"seats-{run}")])
        sales.merge_remote([Delta(support.state(U1))])
        support.store.close()
    assert len(sales.state(U1).context.vector) == 4
    assert sales.store.context_entries_max == 4
    sales.store.close()


def test_only_a_run_that_closed_cleanly_is_resumable_and_only_before_a_write(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")
    first_actor, first_run = store.actor, store.run
    assert store.resumable is None  # nothing ran before
    store.close()
    store = Store(tmp_path / "db", "sales")
    assert (store.previous_run, store.resumable) == (first_run, first_actor)
    assert store.actor != first_actor  # a new actor unless the node decides to resume
    store.resume_actor()
    assert store.actor == first_actor
    engine = Engine(store)
    assert engine.observe("agent", [item(U1, "k")]).written[0].observation_id == f"{first_actor}:1"
    with pytest.raises(StoreError, match="before the first write"):
        store.resume_actor()
    store.close()
    die_without_closing(tmp_path / "db")  # as after kill -9: the next run may not resume
    store = Store(tmp_path / "db", "sales")
    assert store.resumable is None
    with pytest.raises(StoreError, match="did not close cleanly"):
        store.resume_actor()
    store.close()


def test_a_peer_grants_one_claim_per_recorded_run_and_keeps_records_moving_forward(
    tmp_path: Path,
):
    store = Store(tmp_path / "peer", "support")
    assert store.claim_run("sales", 0, 11, 1) == (False, 0)  # a first run: recorded, no grant
    assert store.claim_run("sales", 11, 12, 2) == (True, 1)  # follows the recorded run
    assert store.claim_run("sales", 11, 13, 2) == (False, 2)  # a second copy of run 11...
    assert store.claim_run("sales", 0, 14, 1) == (False, 2)  # ...and a late call of an ended run
    assert store.claim_run("sales", 12, 15, 3) == (True, 2)  # ...left the record at run 12
    assert store.claim_run("billing", 15, 16, 3) == (False, 0)  # records are per node
    store.close()
    store = Store(tmp_path / "peer", "support")  # records are on disk
    assert store.claim_run("sales", 15, 17, 4) == (True, 3)
    store.close()


def test_a_node_counts_its_incarnations_on_from_what_its_peers_had_on_record(tmp_path: Path):
    store = Store(tmp_path / "db", "sales")  # an empty directory: incarnation 1...
    assert store.incarnation == 1
    store.note_incarnation(7)  # ...but a peer had run 7 of this node on record
    store.note_incarnation(5)
    assert store.incarnation == 1  # this run keeps its own
    store.close()
    store = Store(tmp_path / "db", "sales")
    assert store.incarnation == 8
    store.close()


def test_a_forget_and_a_retract_move_the_saved_clock_so_writes_after_a_restart_follow_them(
    tmp_path: Path,
):
    store = Store(tmp_path / "db", "sales")
    engine = Engine(store)
    engine.observe("agent", [item(U1, "k1", "before")])
    engine.forget(U1)
    erased_at = engine.state(U1).erased.hlc
    engine.retract(U1, "facts", "k2", "agent")
    (withdrawn_at,) = engine.state(U1).withdrawals.values()
    store.close()
    store = Store(tmp_path / "db", "sales")
    assert store.hlc_high_water >= max(erased_at, withdrawn_at)
    store.close()
