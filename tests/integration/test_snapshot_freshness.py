"""A snapshot is never served after a change it does not hold, on any engine, after any change.

Three engines (each over its own RocksDB) take random observes, retracts (of a source's own
observations, or withdrawals of another's by an operator), forgets and deliveries of each
other's deltas and whole states. After every step every engine is read (GetSelfModel's path:
``Engine.model`` and the reply kept with the snapshot); each read must equal a resolution from
scratch of the state the engine holds at that moment, and the summary read (counts only) and
the top-1 read must agree with the full one. Once everything is delivered every engine must show
what the reference model of docs/semantics.md (tests/faults/test_model_based.py) says.
"""

from __future__ import annotations

import gc
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from node import convert
from node.audit import AuditRecord
from node.engine import Engine
from node.policy import PolicyBook
from node.resolution import resolve
from node.store import Store
from node.writes import ObservationInput
from selfmodel.v1 import selfmodel_pb2
from sync.codec import decode_delta
from sync.delivery import Delta
from sync.hlc import wall_ms
from sync.observation import Subject, SubjectKind
from tests.faults.test_model_based import (
    CONFIDENCES,
    CTX,
    KEYS,
    SOURCES,
    STATEMENTS,
    SUBJECTS,
    Model,
    _after_this_millisecond,
)
from tests.nodes import NEVER_FADE
from tests.unit.strategies import LAWS

NODES = ("sales", "support", "billing")
BOOK = PolicyBook.from_config(NEVER_FADE)

node = st.sampled_from(NODES)
subject = st.sampled_from(SUBJECTS)
key = st.sampled_from(KEYS)
source = st.sampled_from(SOURCES)
step = st.one_of(
    st.tuples(
        st.just("observe"),
        node,
        source,
        subject,
        key,
        st.sampled_from(STATEMENTS),
        st.sampled_from(CONFIDENCES),
    ),
    st.tuples(st.just("retract"), node, source, subject, key),
    st.tuples(st.just("withdraw"), node, source, subject, key),  # an operator, for ``source``
    st.tuples(st.just("forget"), node, subject),
    st.tuples(st.just("deliver"), node, node),  # the deltas one engine wrote, to another
    st.tuples(st.just("repair"), node, node, subject),  # a whole state, as anti-entropy sends
)


def user_of(name: str) -> Subject:
    return Subject("acme", SubjectKind.USER, name)


@contextmanager
def engines() -> Iterator[dict[str, Engine]]:
    with tempfile.TemporaryDirectory() as tmp:
        stores = [Store(Path(tmp) / n, n, fsync=False, outbox=True) for n in NODES]
        try:
            # A small snapshot budget: snapshots are dropped and rebuilt on the way too.
            yield {s.node: Engine(s, BOOK, snapshot_cache_mb=0.004) for s in stores}
        finally:
            for s in stores:
                s.close()


class Cluster:
    def __init__(self, nodes: dict[str, Engine]) -> None:
        self.nodes = nodes
        self.model = Model()
        self.delivered = {(a, b): 0 for a in NODES for b in NODES}
        self.replies = {n: convert.SnapshotReplies(e.snapshots) for n, e in nodes.items()}

    def play(self, op: tuple) -> None:
        kind, at = op[0], self.nodes[op[1]]
        if kind == "observe":
            _, _, who, name, k, statement, conf = op
            at.observe(who, [ObservationInput(user_of(name), CTX, k, statement, conf)])
            self.model.observe(name, who, k, statement, conf)
        elif kind in ("retract", "withdraw"):
            _, _, who, name, k = op
            # A withdrawal: an operator retracts on ``who``'s behalf, audited in the same batch.
            audit = AuditRecord("op", "operator", "retract_on_behalf", user_of(name))
            at.retract(user_of(name), CTX, k, who, audit if kind == "withdraw" else None)
            self.model.retract(name, who, k)
        elif kind == "forget":
            at.forget(user_of(op[2]))
            self.model.forget(op[2])
        elif kind == "deliver":
            self.deliver(op[1], op[2])
            return
        else:
            _, origin, target, name = op
            whole = self.nodes[origin].state(user_of(name))
            self.nodes[target].merge_remote([Delta(whole)], source=origin)
            return
        _after_this_millisecond(wall_ms())  # the next event is later on every engine's clock

    def deliver(self, origin: str, target: str) -> None:
        if origin == target:
            return
        after = self.delivered[(origin, target)]
        entries = self.nodes[origin].store.outbox(after, 10_000)
        if entries:
            deltas = [decode_delta(e.delta) for e in entries]
            self.nodes[target].merge_remote(deltas, source=origin)
            self.delivered[(origin, target)] = entries[-1].seq

    def check_reads(self) -> None:
        """Every engine's read of every subject is its current state's, the summary agrees."""
        for name, engine in self.nodes.items():
            for subject_id in SUBJECTS:
                u = user_of(subject_id)
                view = engine.model(u)
                state = engine.state(u)
                assert view.state.covers(state.context), (name, subject_id)
                fresh = tuple(resolve(state.observations.values(), BOOK))
                assert view.beliefs == fresh, (name, subject_id)
                self.check_summary(name, u, view)

    def check_summary(self, name: str, u: Subject, view) -> None:
        replies = self.replies[name]
        read = {}
        for limit in (None, 0, 1):
            raw = replies.reply(
                u, view, convert.Filter(include_uncertain=True, max_positions=limit), name
            )
            read[limit] = selfmodel_pb2.GetSelfModelResponse.FromString(raw).snapshot
        full, summary, top = read[None], read[0], read[1]
        assert len(full.beliefs) == len(summary.beliefs) == len(top.beliefs) == len(view.beliefs)
        for f, s, t in zip(full.beliefs, summary.beliefs, top.beliefs, strict=True):
            same = (f.context, f.key, f.statement, f.confidence, f.uncertain, f.policy)
            assert (s.context, s.key, s.statement, s.confidence, s.uncertain, s.policy) == same
            assert (t.context, t.key, t.statement, t.confidence, t.uncertain, t.policy) == same
            counts = (len(f.supporters), len(f.dissenters))
            assert (f.supporter_count, f.dissenter_count) == counts
            assert (s.supporter_count, s.dissenter_count) == counts
            assert (t.supporter_count, t.dissenter_count) == counts
            assert not s.supporters and not s.dissenters
            assert list(t.supporters) == list(f.supporters)[:1]
            assert list(t.dissenters) == list(f.dissenters)[:1]
            assert summary.handoff_token == full.handoff_token == view.token

    def converge(self) -> None:
        for _ in range(2):  # a delta held back for a missing cause is released the second time
            for a in NODES:
                for b in NODES:
                    self.deliver(a, b)
        for name in SUBJECTS:
            u = user_of(name)
            for a in NODES:
                for b in NODES:
                    if a != b:
                        self.nodes[b].merge_remote([Delta(self.nodes[a].state(u))], source=a)

    def check_model(self) -> None:
        for name, engine in self.nodes.items():
            for subject_id in SUBJECTS:
                view = engine.model(user_of(subject_id))
                shown = {
                    b.key: (
                        b.statement,
                        frozenset((p.source, p.statement) for p in (*b.supporters, *b.dissenters)),
                    )
                    for b in view.beliefs
                }
                assert shown == self.model.beliefs(subject_id), (name, subject_id)


@settings(LAWS, max_examples=30)
@given(st.lists(step, min_size=1, max_size=25))
def test_every_read_on_every_engine_shows_every_change_it_holds_and_the_model_once_delivered(
    steps: list[tuple],
) -> None:
    with engines() as nodes:
        cluster = Cluster(nodes)
        cluster.check_reads()  # cold subjects: resolved on their first read
        for op in steps:
            cluster.play(op)
            cluster.check_reads()
        cluster.converge()
        cluster.check_reads()
        cluster.check_model()


def test_a_snapshot_is_kept_until_a_change_and_only_the_changed_slot_is_resolved_again() -> None:
    with engines() as nodes:
        engine = nodes["sales"]
        engine.snapshots.budget_bytes = 2**20
        u = user_of("m-1")
        for k in ("a", "b", "c"):
            engine.observe("agent_a", [ObservationInput(u, CTX, k, f"{k} holds", 0.8)])
        first = engine.model(u)
        assert engine.model(u).snapshot is first.snapshot  # unchanged: the same snapshot
        engine.observe("agent_b", [ObservationInput(u, CTX, "b", "b fails", 0.9)])
        second = engine.model(u)
        assert second.snapshot is not first.snapshot
        old, new = first.snapshot.by_slot, second.snapshot.by_slot
        assert new[(CTX, "a")] is old[(CTX, "a")] and new[(CTX, "c")] is old[(CTX, "c")]
        assert new[(CTX, "b")] is not old[(CTX, "b")]
        assert new[(CTX, "b")].statement == "b fails"


def test_a_snapshot_does_not_depend_on_the_read_instant() -> None:
    """Recency decays within a slot (docs/semantics.md): a snapshot kept for years reads as a
    resolution made at any instant, so nothing of it is recomputed per read."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "db", "sales", fsync=False)
        now = [wall_ms()]
        fading = PolicyBook.from_config({"default": {"half_life_days": 1}})
        engine = Engine(store, fading, now_ms=lambda: now[0])
        try:
            u = user_of("m-1")
            engine.observe("agent_a", [ObservationInput(u, CTX, "k", "one", 0.9)])
            _after_this_millisecond(wall_ms())
            engine.observe("agent_b", [ObservationInput(u, CTX, "k", "two", 0.6)])
            first = engine.model(u)
            now[0] += 1000 * 86_400_000
            later = engine.model(u)
            assert later.snapshot is first.snapshot
            assert later.resolved_ms == first.resolved_ms + 1000 * 86_400_000
            state = engine.state(u)
            assert later.beliefs == tuple(resolve(state.observations.values(), fading))
        finally:
            store.close()


def test_snapshot_memory_is_estimated_on_the_high_side() -> None:
    """What snapshot_cache_mb bounds: the snapshots, slot indexes and kept replies that reads
    add to what the state cache holds, measured with tracemalloc."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "db", "sales", fsync=False)
        engine = Engine(store, BOOK)
        replies = convert.SnapshotReplies(engine.snapshots)
        try:
            subjects = [user_of(f"mem-{i}") for i in range(10)]
            for u in subjects:
                for k in range(20):
                    for who in SOURCES:
                        item = ObservationInput(u, CTX, f"k{k}", f"{who} says {k}", 0.7)
                        engine.observe(who, [item])
            engine.snapshots = type(engine.snapshots)(engine.snapshots.budget_bytes)
            engine.reader.snapshots = replies.snapshots = engine.snapshots
            gc.collect()
            tracemalloc.start()
            try:
                for u in subjects:
                    view = engine.model(u)
                    for limit in (None, 0):
                        want = convert.Filter(include_uncertain=True, max_positions=limit)
                        replies.reply(u, view, want, "sales")
                gc.collect()
                used, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert 0 < used <= engine.snapshots.cost_bytes, (used, engine.snapshots.cost_bytes)
        finally:
            store.close()
