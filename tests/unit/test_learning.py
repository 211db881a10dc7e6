"""Learned reliability in a node (node.learning): the weights followed change by change equal
those learned from scratch from the state, tenant by tenant, on every node; one tenant's
weights never move another's beliefs; a book change re-resolves only the contexts it changes;
the cluster file's [cluster.learning] is checked."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from federation.cluster import ClusterFileError, parse
from node.engine import Engine
from node.learning import Learning, Outcomes, SlotId, judge
from node.policy import ContextPolicy, PolicyBook
from node.reliability import Learned, LearningSettings, Outcome, learn, learned_book
from node.resolution import counted
from node.snapshots import Snapshots, resolve_snapshot
from node.store import Store
from node.withdrawals import WITHDRAWN, sources_subject
from node.writes import ObservationInput
from sync.delivery import Delta
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import VALUES

# Few slots, so that sources meet in them and retracts and forgets find what they remove.
SUBJECTS = (Subject("acme", SubjectKind.USER, "u-1"), Subject("beta", SubjectKind.USER, "u-1"))
SOURCES = ("a", "b", "d")
CONTEXTS = ("budget", "channel")
KEYS = ("k1",)
STATEMENTS = ("yes", "no", "maybe")
SETTINGS = LearningSettings(window=3, enabled=True)
# Learning judges against the operators' book: here one that weighs "d" less.
BOOK = PolicyBook(reliability={("d", "*"): 0.5})


def operations_over(
    subjects: tuple[Subject, ...], contexts: tuple[str, ...], keys: tuple[str, ...]
) -> st.SearchStrategy:  # type: ignore[type-arg]
    """Random writes, retracts, erases, reads, merges, withdrawals and lifts on two nodes, of
    ``subjects``' slots of ``contexts`` and ``keys``."""
    observe = st.tuples(
        st.just("observe"),
        st.integers(0, 1),
        st.sampled_from(SOURCES),
        st.sampled_from(subjects),
        st.sampled_from(contexts),
        st.sampled_from(keys),
        st.sampled_from(STATEMENTS),
        st.sampled_from((0.6, 0.9)),
    )
    retract = st.tuples(
        st.just("retract"),
        st.integers(0, 1),
        st.sampled_from(SOURCES),
        st.sampled_from(subjects),
        st.sampled_from(contexts),
        st.sampled_from(keys),
    )
    forget = st.tuples(st.just("forget"), st.integers(0, 1), st.sampled_from(subjects))
    exchange = st.tuples(st.just("exchange"), st.sampled_from(subjects))
    read = st.tuples(st.just("read"), st.integers(0, 1), st.sampled_from(subjects))
    # A tenant-wide withdrawal of a source, and its lift (node.withdrawals).
    withdraw = st.tuples(
        st.sampled_from(("withdraw", "lift")),
        st.integers(0, 1),
        st.sampled_from(sorted({s.tenant for s in subjects})),
        st.sampled_from(SOURCES),
    )
    # Three steps in eight observe (one_of would pick each distinct branch alike), at least 20
    # steps: so that sources meet in slots often enough to be judged.
    step = st.sampled_from((observe, observe, observe, retract, forget, exchange, read, withdraw))
    return st.lists(step.flatmap(lambda kind: kind), min_size=20, max_size=60)


operations = operations_over(SUBJECTS, CONTEXTS, KEYS)

Weights = dict[tuple[str, str, str], Learned]  # by (tenant, source, context)


def from_scratch(
    engine: Engine, book: PolicyBook = BOOK, settings: LearningSettings = SETTINGS
) -> Weights:
    """The weights ``reliability.learn`` gives from judging every slot the node holds, each
    tenant's from its own slots without its withdrawn observations."""
    outcomes: dict[str, list[Outcome]] = {}
    for subject in engine.store.subjects():
        slots = engine.snapshots.index(engine.state(subject)).slots
        withdrawn = engine.withdrawals.of(subject.tenant)
        for slot in slots.values():
            outcomes.setdefault(subject.tenant, []).extend(judge(counted(slot, withdrawn), book))
    return {
        (tenant, *key): found
        for tenant, of_tenant in outcomes.items()
        for key, found in learn(of_tenant, settings).items()
    }


def listed(learning: Learning) -> Weights:
    return {(t, w.source, w.context): w for t in learning.tenants() for w in learning.weights(t)}


def tracked(learning: Learning) -> Weights:
    learning.refresh()
    return listed(learning)


def run(engines: list[Engine], ops: list[tuple]) -> None:  # type: ignore[type-arg]
    for op in ops:
        if op[0] == "observe":
            _, n, source, subject, context, key, statement, confidence = op
            item = ObservationInput(subject, context, key, statement, confidence)
            engines[n].observe(source, [item])
        elif op[0] == "retract":
            _, n, source, subject, context, key = op
            engines[n].retract(subject, context, key, source)
        elif op[0] == "forget":
            engines[n := op[1]].forget(op[2])
        elif op[0] == "read":  # keeps a snapshot, which later weights re-resolve in part
            engines[op[1]].model(op[2])
        elif op[0] in ("withdraw", "lift"):
            _, n, tenant, source = op
            value = "withdrawn" if op[0] == "withdraw" else None
            engines[n].put(sources_subject(tenant), WITHDRAWN, source, value, "op")
        else:
            a, b = engines
            for subject in (op[1], sources_subject(op[1].tenant)):
                a.merge_remote([Delta(b.state(subject))])
                b.merge_remote([Delta(a.state(subject))])


@VALUES
@given(ops=operations)
def test_the_weights_followed_change_by_change_equal_those_learned_from_the_state(
    ops: list[tuple],  # type: ignore[type-arg]
) -> None:
    with tempfile.TemporaryDirectory() as root:
        engines, learnings = [], []
        for name in ("n1", "n2"):
            engine = Engine(Store(Path(root) / name, name, fsync=False), BOOK)
            learning = Learning(engine, SETTINGS)
            engine.listeners.append(learning.follow)
            engines.append(engine)
            learnings.append(learning)
        try:
            run(engines, ops)
            for engine, learning in zip(engines, learnings, strict=True):
                assert tracked(learning) == from_scratch(engine)
            run(engines, [("exchange", s) for s in SUBJECTS])
            assert tracked(learnings[0]) == tracked(learnings[1]) == from_scratch(engines[0])
            # A node started on the same state learns the same weights from it at start.
            fresh = Learning(engines[1], SETTINGS)
            fresh.load(engines[1].store.subjects())
            assert listed(fresh) == tracked(learnings[0])
            # Each subject resolves with its own tenant's weights, and only those.
            expected = from_scratch(engines[0])
            for engine in engines:
                for subject in SUBJECTS:
                    weights = {
                        (s, c): w for (t, s, c), w in expected.items() if t == subject.tenant
                    }
                    book = learned_book(BOOK, weights)
                    withdrawn = engine.withdrawals.of(subject.tenant)
                    again = resolve_snapshot(engine.state(subject), book, withdrawn)
                    assert engine.model(subject).beliefs == again.beliefs
        finally:
            for engine in engines:
                engine.store.close()


# More slots per (tenant, source, context) than a window of 1 or 2 and a margin of 0 or 1 hold.
MANY_SUBJECTS = (*SUBJECTS, *(Subject("acme", SubjectKind.USER, f"u-{i}") for i in (2, 3)))


def rebuilds_counted() -> float:
    return REGISTRY.get_sample_value("selfmodel_learning_rebuilds_total") or 0.0


def test_weights_from_outcomes_kept_within_window_and_margin_equal_those_of_the_state() -> None:
    """Two nodes keeping at most ``window + margin`` outcomes per (tenant, source, context),
    through writes, retracts, erases, merges, withdrawals and lifts: after every step each
    node's weights equal those learned from scratch from its state (keys whose newest outcomes
    went are read again from the store, which some runs do), and its memory stays in bound."""
    before = rebuilds_counted()

    @VALUES
    @given(
        ops=operations_over(MANY_SUBJECTS, ("budget",), ("k1", "k2")),
        window=st.integers(1, 2),
        margin=st.integers(0, 1),
    )
    def check(ops: list[tuple], window: int, margin: int) -> None:  # type: ignore[type-arg]
        settings = LearningSettings(window=window, enabled=True)
        with tempfile.TemporaryDirectory() as root:
            engines, learnings = [], []
            for name in ("n1", "n2"):
                engine = Engine(Store(Path(root) / name, name, fsync=False), BOOK)
                learning = Learning(engine, settings, margin)
                engine.listeners.append(learning.follow)
                engines.append(engine)
                learnings.append(learning)
            try:
                for op in ops:
                    run(engines, [op])
                    for engine, learning in zip(engines, learnings, strict=True):
                        expected = from_scratch(engine, BOOK, settings)
                        assert tracked(learning) == expected
                        assert learning.kept() <= (window + margin) * len(expected)
            finally:
                for engine in engines:
                    engine.store.close()

    check()
    assert rebuilds_counted() > before


# Slots enough for a key's outcomes to outgrow a small window and margin.
MANY_KEYS = ("k1", "k2", "k3", "k4", "k5")


def bounded_outcomes_equal_every_outcome(
    steps: list[tuple[Subject, str, list[tuple[str, str]]]], window: int, margin: int
) -> int:
    """Plays ``steps`` (each sets a slot's positions) on ``Outcomes(window, margin)``, rebuilding
    a stale key from every outcome held (as a node does from its store), and checks after each
    step the weights against ``learn`` over every outcome and the memory against its bound;
    the rebuilds it took."""
    from tests.unit.strategies import observation

    settings = LearningSettings(window=window, enabled=True)
    outcomes, last, counter, rebuilds = Outcomes(window, margin), {}, 0, 0
    for subject, key, positions in steps:
        slot = []
        for source, statement in positions:
            counter += 1
            slot.append(observation("a.1", counter, key=key, source=source, statement=statement))
        found = judge(slot, BOOK)
        outcomes.replace(SlotId(subject, "budget", key), found)
        last[subject, key] = found
        every: dict[tuple[str, str, str], list[tuple[SlotId, Outcome]]] = {}
        for (s, k), held in last.items():
            for o in held:
                every.setdefault((s.tenant, o.source, o.context), []).append(
                    (SlotId(s, "budget", k), o)
                )
        for tenant_key in list(outcomes.keys()):
            if outcomes.stale(tenant_key):  # what a node reads again from its store
                newest = sorted(every.get(tenant_key, []), key=lambda f: (f[1].hlc, f[1].dot, f[0]))
                capacity = window + margin
                outcomes.rebuilt(tenant_key, newest[-capacity:], len(newest) <= capacity)
                rebuilds += 1
        for tenant in {subject.tenant for subject in SUBJECTS}:
            of_tenant = [o for (s, _), held in last.items() if s.tenant == tenant for o in held]
            expected = learn(of_tenant, settings)
            assert {k: outcomes.learned((tenant, *k), settings) for k in expected} == expected
        assert set(outcomes.keys()) == set(every)
        assert len(outcomes) <= (window + margin) * len(every)
    return rebuilds


slot_steps = st.lists(
    st.tuples(
        st.sampled_from(SUBJECTS),
        st.sampled_from(MANY_KEYS),
        st.lists(st.tuples(st.sampled_from(SOURCES), st.sampled_from(STATEMENTS)), max_size=4),
    ),
    max_size=40,
)


def test_outcomes_kept_within_window_and_margin_give_the_weights_of_every_outcome() -> None:
    """Bounded to ``window + margin`` per key, rebuilt when removals leave fewer than the
    window: the weights equal those of every outcome after every step, and some runs rebuild."""
    rebuilds = []

    @VALUES
    @given(steps=slot_steps, window=st.integers(1, 3), margin=st.integers(0, 2))
    def check(
        steps: list[tuple[Subject, str, list[tuple[str, str]]]], window: int, margin: int
    ) -> None:
        rebuilds.append(bounded_outcomes_equal_every_outcome(steps, window, margin))

    check()
    assert sum(rebuilds) > 0


def test_outcomes_unbounded_by_their_margin_equal_those_of_the_last_slots() -> None:
    """With room for every outcome no key is ever stale."""

    @VALUES
    @given(steps=slot_steps)
    def check(steps: list[tuple[Subject, str, list[tuple[str, str]]]]) -> None:
        assert bounded_outcomes_equal_every_outcome(steps, 3, 10_000) == 0

    check()


def test_memory_for_learning_stays_within_twice_the_window_over_many_slots(
    tmp_path: Path,
) -> None:
    """A node learning with a window of 5 over 600 slots of three sources keeps 2 x 5 outcomes
    per (tenant, source, context), as selfmodel_learned_outcomes shows, where it once kept
    every one; when the newest go (retracts, erases) it reads the newest left again from its
    store, and its weights stay those learned from its state."""
    from node.config import NodeConfig
    from node.server import start_learning

    settings = LearningSettings(window=5, enabled=True)
    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    learning = start_learning(NodeConfig(learning=settings), engine, engine.store)
    assert learning is not None
    before = rebuilds_counted()
    subjects = [Subject("acme", SubjectKind.USER, f"u-{i:03}") for i in range(200)]
    keys = ("k1", "k2", "k3")
    try:
        for n, subject in enumerate(subjects):  # the liar agrees in the older half only
            for key in keys:
                for source in ("a", "b", "liar"):
                    said = "no" if source == "liar" and n >= 100 else "yes"
                    engine.observe(source, [ObservationInput(subject, "budget", key, said, 0.8)])
        learning.refresh()
        bound = 3 * 2 * settings.window  # three sources in one context
        assert REGISTRY.get_sample_value("selfmodel_learned_outcomes") == bound
        assert learning.kept() == bound
        assert listed(learning) == from_scratch(engine, PolicyBook(), settings)
        assert listed(learning)["acme", "liar", "budget"].agreed == 0
        for n, subject in reversed(list(enumerate(subjects))):  # the liar's newest retracted
            if n < 95:
                break
            for key in keys:
                engine.retract(subject, "budget", key, "liar")
            if n >= 100 and n % 2:
                engine.forget(subjects[n - 100])  # and older slots of its erased, some
            learning.refresh()
            assert learning.kept() <= bound
            assert listed(learning) == from_scratch(engine, PolicyBook(), settings)
        assert rebuilds_counted() > before
        # Its newest five left are of the older half, where it agreed.
        liar = listed(learning)["acme", "liar", "budget"]
        assert (liar.agreed, liar.judged) == (5, 5)
        assert REGISTRY.get_sample_value("selfmodel_learned_outcomes") == learning.kept()
    finally:
        engine.store.close()


def test_a_contradicted_source_loses_weight_until_its_contradiction_no_longer_wins(
    tmp_path: Path,
) -> None:
    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    learning = Learning(engine, LearningSettings(window=5, enabled=True))
    engine.listeners.append(learning.follow)
    try:
        for i in range(6):
            subject = Subject("acme", SubjectKind.USER, f"u-{i}")
            engine.observe("liar", [ObservationInput(subject, "budget", "k", "no", 0.9)])
            for source in ("a", "b"):
                engine.observe(source, [ObservationInput(subject, "budget", "k", "yes", 0.8)])
        assert learning.refresh() == {"budget"}
        liar = {w.source: w for w in learning.weights("acme")}["liar"]
        assert (liar.agreed, liar.judged) == (0, 5) and liar.weight == pytest.approx(0.5)
        # Another tenant has none of these weights.
        assert learning.tenants() == ["acme"] and learning.weights("beta") == []
        # A later slot where it speaks against one source: before learning it would win.
        subject = Subject("acme", SubjectKind.USER, "later")
        engine.observe("a", [ObservationInput(subject, "budget", "k", "yes", 0.8)])
        engine.observe("liar", [ObservationInput(subject, "budget", "k", "no", 0.9)])
        explained, _ = engine.explain(subject, "budget", "k")
        assert explained is not None and explained.belief.statement == "yes"
        by_source = {s.source: s for s in explained.belief.dissenters}
        assert by_source["liar"].learned == pytest.approx(0.5)
        assert by_source["liar"].reliability == pytest.approx(0.5)
        # The operators then trust the two others far less: judged again under that book, the
        # liar won every slot, and the weights and beliefs follow at once.
        distrust = PolicyBook(reliability={("a", "*"): 0.3, ("b", "*"): 0.3})
        engine.book_listeners.append(learning.reconfigure)
        engine.use_policies(distrust)
        learning.refresh()
        found = listed(learning)
        assert found == from_scratch(engine, distrust, learning.settings)
        assert found["acme", "liar", "budget"].agreed == 5
        explained, _ = engine.explain(subject, "budget", "k")
        assert explained is not None and explained.belief.statement == "no"
    finally:
        engine.store.close()


def _learning(path: Path) -> tuple[Engine, Learning]:
    engine = Engine(Store(path, path.name, fsync=False))
    learning = Learning(engine, LearningSettings(window=5, enabled=True))
    engine.listeners.append(learning.follow)
    return engine, learning


def _speak(engine: Engine, positions: list[tuple[str, str, float]], subjects: int) -> None:
    for i in range(subjects):
        subject = Subject("acme", SubjectKind.USER, f"u-{i}")
        for source, statement, confidence in positions:
            item = ObservationInput(subject, "budget", "k", statement, confidence)
            engine.observe(source, [item])


def test_a_withdrawn_source_is_judged_as_if_it_never_spoke(tmp_path: Path) -> None:
    """A liar that contradicted the consensus and lost weight is withdrawn across its tenant:
    its outcomes are gone, and the weights are those of a node where it never spoke; a lift
    brings them back."""
    engine, learning = _learning(tmp_path / "n1")
    silent, never = _learning(tmp_path / "n2")
    try:
        _speak(engine, [("liar", "no", 0.9), ("a", "yes", 0.8), ("b", "yes", 0.8)], 6)
        _speak(silent, [("a", "yes", 0.8), ("b", "yes", 0.8)], 6)
        learning.refresh()
        never.refresh()
        liar = listed(learning)["acme", "liar", "budget"]
        assert (liar.agreed, liar.judged, liar.weight) == (0, 5, pytest.approx(0.5))
        engine.put(sources_subject("acme"), WITHDRAWN, "liar", "withdrawn", "op")
        assert learning.refresh() == {"budget"}
        expected = from_scratch(engine, PolicyBook(), learning.settings)
        assert listed(learning) == listed(never) == expected
        assert ("acme", "liar", "budget") not in listed(learning)
        engine.put(sources_subject("acme"), WITHDRAWN, "liar", None, "op")
        assert learning.refresh() == {"budget"}
        assert listed(learning)["acme", "liar", "budget"] == liar
    finally:
        engine.store.close()
        silent.store.close()


def test_a_withdrawn_source_no_longer_judges_the_others(tmp_path: Path) -> None:
    """With ``w`` beside it, ``a``'s "yes" outweighs ``b``'s "no" and ``b`` is judged to
    disagree; once ``w`` is withdrawn, ``b``'s "no" wins each slot, so ``b`` agrees and ``a``
    does not: ``w`` no longer judges them."""
    engine, learning = _learning(tmp_path / "n1")
    try:
        _speak(engine, [("w", "yes", 0.8), ("a", "yes", 0.6), ("b", "no", 0.9)], 5)
        learning.refresh()
        before = {s: (w.agreed, w.judged) for (_, s, _), w in listed(learning).items()}
        assert before == {"w": (5, 5), "a": (5, 5), "b": (0, 5)}
        engine.put(sources_subject("acme"), WITHDRAWN, "w", "withdrawn", "op")
        learning.refresh()
        after = {s: (w.agreed, w.judged) for (_, s, _), w in listed(learning).items()}
        assert after == {"a": (0, 5), "b": (5, 5)}
        assert listed(learning) == from_scratch(engine, PolicyBook(), learning.settings)
    finally:
        engine.store.close()


def test_a_source_contradicted_in_one_tenant_keeps_its_weight_in_another(tmp_path: Path) -> None:
    """Agent ids are per tenant: globex's consensus against its ``sales_agent`` leaves acme's
    ``sales_agent`` (another agent, the same id) at weight 1, its beliefs and its snapshots
    as they were; globex's own snapshots are re-resolved in the context that moved only."""
    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    learning = Learning(engine, LearningSettings(window=5, enabled=True))
    engine.listeners.append(learning.follow)
    try:
        mine = Subject("acme", SubjectKind.USER, "u-1")
        engine.observe("a", [ObservationInput(mine, "budget", "k", "yes", 0.8)])
        engine.observe("sales_agent", [ObservationInput(mine, "budget", "k", "no", 0.9)])
        same_id = Subject("globex", SubjectKind.USER, "u-1")  # globex's, of the same id
        engine.observe("a", [ObservationInput(same_id, "budget", "k", "yes", 0.8)])
        engine.observe("sales_agent", [ObservationInput(same_id, "budget", "k", "no", 0.9)])
        engine.observe("a", [ObservationInput(same_id, "channel", "k", "email", 0.8)])
        learning.refresh()
        before = engine.model(mine).snapshot
        assert before.by_slot["budget", "k"].statement == "no"
        theirs_before = engine.model(same_id).snapshot
        for i in range(2, 8):
            theirs = Subject("globex", SubjectKind.USER, f"u-{i}")
            engine.observe("sales_agent", [ObservationInput(theirs, "budget", "k", "no", 0.9)])
            for source in ("a", "b"):
                engine.observe(source, [ObservationInput(theirs, "budget", "k", "yes", 0.8)])
        assert learning.refresh() == {"budget"}
        globex = {w.source: w for w in learning.weights("globex")}
        assert (globex["sales_agent"].agreed, globex["sales_agent"].judged) == (0, 5)
        assert globex["sales_agent"].weight == pytest.approx(0.5)
        # acme's slot still says "no", resolved with acme's weights only.
        explained, _ = engine.explain(mine, "budget", "k")
        assert explained is not None and explained.belief.statement == "no"
        (dissenter,) = explained.belief.dissenters
        assert dissenter.source == "a" and dissenter.learned == pytest.approx(4 / 6 / 0.8)
        (supporter,) = explained.belief.supporters
        assert supporter.source == "sales_agent" and supporter.learned == 1.0
        # acme's subject was not resolved again: its book did not move. globex's was, in the
        # context whose weights moved only: there its sales_agent no longer wins.
        assert engine.model(mine).snapshot is before
        theirs_after = engine.model(same_id).snapshot
        assert theirs_after.by_slot["budget", "k"].statement == "yes"
        assert theirs_after.by_slot["channel", "k"] is theirs_before.by_slot["channel", "k"]
        # acme's weights count acme's slot only: its sales_agent won it, a lost it.
        acme = {w.source: (w.agreed, w.judged, w.weight) for w in learning.weights("acme")}
        assert acme == {"a": (0, 1, pytest.approx(4 / 6 / 0.8)), "sales_agent": (1, 1, 1.0)}
    finally:
        engine.store.close()


@pytest.mark.parametrize(
    ("role", "token_tenant", "asked", "listed"),
    [
        ("operator", None, "", ["acme", "globex"]),  # the development principal: every tenant
        ("operator", None, "globex", ["globex"]),
        ("operator", "acme", "", ["acme"]),
        ("operator", "acme", "acme", ["acme"]),
        ("operator", "acme", "globex", None),  # refused
        ("cluster_operator", "acme", "", ["acme"]),
        ("cluster_operator", "acme", "globex", None),  # its tenant's too, however privileged
    ],
)
def test_an_operator_lists_its_own_tenants_weights_only(
    tmp_path: Path, role: str, token_tenant: str | None, asked: str, listed: list[str] | None
) -> None:
    from node.adminservice import AdminServicer
    from node.auth import Principal
    from node.errors import PermissionDenied
    from selfmodel.admin.v1 import admin_pb2

    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    learning = Learning(engine, LearningSettings(enabled=True))
    engine.listeners.append(learning.follow)
    try:
        for tenant in ("acme", "globex"):
            subject = Subject(tenant, SubjectKind.USER, "u-1")
            for source, statement in (("a", "yes"), ("sales_agent", "no")):
                engine.observe(source, [ObservationInput(subject, "budget", "k", statement, 0.8)])
        learning.refresh()
        who = Principal("ops", role, token_tenant)
        admin = AdminServicer(
            engine, admin_pb2.GetStatusResponse, lambda *_: who, None, None, learning
        )
        call = AdminServicer.ListSourceWeights.__wrapped__  # type: ignore[attr-defined]
        request = admin_pb2.ListSourceWeightsRequest(tenant=asked)
        if listed is None:
            with pytest.raises(PermissionDenied, match="tenant 'globex'"):
                call(admin, request, None)
            return
        reply = call(admin, request, None)
        assert [(w.tenant, w.source) for w in reply.weights] == [
            (t, s) for t in listed for s in ("a", "sales_agent")
        ]
        # Each tenant's counts are of its own slot.
        assert all(w.judged == 1 for w in reply.weights)
    finally:
        engine.store.close()


def test_a_book_change_re_resolves_only_the_contexts_it_changes() -> None:
    from tests.unit.strategies import observation

    state_obs = [
        observation("a.1", 1, context="budget", key="k", source="x", statement="yes"),
        observation("a.1", 2, context="budget", key="k", source="y", statement="no"),
        observation("a.1", 3, context="channel", key="k", source="x", statement="email"),
    ]
    from sync.crdt import SubjectState, apply_observe

    state = SubjectState(Subject("acme", SubjectKind.USER, "u-1"))
    for o in state_obs:
        state = apply_observe(state, o, [])
    before = PolicyBook(ContextPolicy())
    weights = {("x", "budget"): Learned("x", "budget", 0.2, 0, 4)}
    after = learned_book(before, weights)
    snapshots = Snapshots(2**20)
    first, _ = snapshots.resolve(state, before)
    snapshots.rebooked("acme", before, after, frozenset({"budget"}))
    second, incremental = snapshots.resolve(state, after)
    assert incremental and second.policies is after
    assert second.by_slot == resolve_snapshot(state, after).by_slot
    assert second.by_slot["channel", "k"] is first.by_slot["channel", "k"]  # kept
    assert [p.learned for p in second.by_slot["budget", "k"].dissenters] == [0.2]
    # Under a book it knows nothing of, or one that may change any context, a snapshot is
    # resolved whole.
    other = PolicyBook(ContextPolicy(min_confidence=0.1))
    third, incremental = snapshots.resolve(state, other)
    assert not incremental and third.by_slot == resolve_snapshot(state, other).by_slot
    snapshots.rebooked("acme", other, before, None)
    fourth, incremental = snapshots.resolve(state, before)
    assert not incremental and fourth.by_slot == first.by_slot


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("enabled = 1", "enabled must be true or false"),
        ("window = 0", "window must be a whole number of at least 1"),
        ("floor = 0", "floor must be a number above 0"),
        ("floor = 0.5\nceiling = 0.4", "floor, ceiling: must satisfy"),
        ("ceiling = 1.5", "floor, ceiling: must satisfy"),
        ("interval_s = 0", "interval_s must be a number above 0"),
        ("rate = 1", "unknown [cluster.learning] keys ['rate']"),
    ],
)
def test_a_bad_learning_setting_is_refused_naming_it(table: str, message: str) -> None:
    raw = tomllib.loads(f'[cluster.learning]\n{table}\n[[node]]\nname = "a"\naddress = "x:1"\n')
    with pytest.raises(ClusterFileError, match=r"\[cluster\.learning\]") as found:
        parse(raw, Path("."), None)
    assert message in str(found.value)


def test_learning_is_off_unless_enabled_and_takes_its_settings() -> None:
    node = '[[node]]\nname = "a"\naddress = "x:1"\n'
    assert not parse(tomllib.loads(node), Path("."), None).learning.enabled
    raw = tomllib.loads(f"[cluster.learning]\nenabled = true\nwindow = 7\nfloor = 0.2\n{node}")
    learning = parse(raw, Path("."), None).learning
    assert (learning.enabled, learning.window, learning.floor) == (True, 7, 0.2)


def test_a_node_learns_nothing_unless_its_cluster_file_enables_it(tmp_path: Path) -> None:
    from node.config import NodeConfig
    from node.server import start_learning

    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    own = list(engine.listeners)  # the engine's own (withdrawals, kept snapshots)
    try:
        assert start_learning(NodeConfig(), engine, engine.store) is None
        assert engine.listeners == own
        on = NodeConfig(learning=LearningSettings(enabled=True))
        assert start_learning(on, engine, engine.store) is not None
        assert len(engine.listeners) == len(own) + 1
    finally:
        engine.store.close()


def test_outcomes_saved_are_read_back_only_for_the_state_and_book_they_were_judged_from(
    tmp_path: Path,
) -> None:
    """A node's saved outcomes give a node started on the same state, under the same book,
    the weights judging every slot gives; once the state or the book differs they are not
    read back (and judging every slot gives that state's weights)."""
    settings = LearningSettings(window=3, enabled=True)
    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    learning = Learning(engine, settings)
    engine.listeners.append(learning.follow)
    try:
        _speak(engine, [("liar", "no", 0.9), ("a", "yes", 0.8), ("b", "yes", 0.8)], 10)
        assert learning.save()
        expected = from_scratch(engine, PolicyBook(), settings)
        assert listed(learning) == expected and expected["acme", "liar", "budget"].agreed == 0
        again = Learning(engine, settings)
        assert again.restore() and listed(again) == expected
        assert again.kept() == learning.kept() == 3 * 6
        # Under another book, or another window: judged again.
        assert not Learning(engine, LearningSettings(window=4, enabled=True)).restore()
        engine.use_policies(PolicyBook(reliability={("liar", "*"): 0.5}))
        assert not Learning(engine, settings).restore()
        engine.use_policies(PolicyBook())
        assert Learning(engine, settings).restore()
        # A write after the save: the state is no longer the one they were judged from.
        engine.observe("liar", [ObservationInput(SUBJECTS[0], "budget", "k", "yes", 0.9)])
        assert not Learning(engine, settings).restore()
        fresh = Learning(engine, settings)
        fresh.load(engine.store.subjects())
        assert listed(fresh) == from_scratch(engine, PolicyBook(), settings) != expected
    finally:
        engine.store.close()
