"""The engine's answers are a pure function of the subject's state, never of the read instant."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.engine import Engine
from node.policy import DAY_S, ContextPolicy, PolicyBook
from node.store import Store
from node.writes import ObservationInput
from sync.causal import CausalContext
from sync.crdt import NO_ERASE, SubjectState
from sync.delivery import Delta
from sync.hlc import wall_ms
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import VALUES, observation, shuffles

DAY_MS = 86_400_000
BOOK = PolicyBook(default=ContextPolicy(min_confidence=0.3, half_life_s=DAY_S))


class ReadClock:
    """The engine's reading clock, moved by the test."""

    def __init__(self) -> None:
        self.ms = wall_ms()

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, ReadClock]]:
    store = Store(tmp_path / "db", "sales", fsync=False)
    clock = ReadClock()
    yield Engine(store, BOOK, now_ms=clock), clock
    store.close()


def _stances(view_beliefs: tuple) -> list[tuple]:
    return [
        (b.context, b.key, b.statement, b.confidence, b.uncertain,
         [p.source for p in b.supporters], [p.source for p in b.dissenters])
        for b in view_beliefs
    ]  # fmt: skip


def test_one_source_at_0_8_against_two_at_0_52_reads_the_same_at_any_instant(engine) -> None:
    """Reading later used to scale every weight before the noisy-OR: the winner flipped."""
    engine, clock = engine
    u = Subject("acme", SubjectKind.USER, "u-flip")
    engine.observe("sales_agent", [ObservationInput(u, "size", "team", "ten people", 0.8)])
    engine.observe("support_agent", [ObservationInput(u, "size", "team", "twenty people", 0.52)])
    engine.observe("bot", [ObservationInput(u, "size", "team", "twenty people", 0.52)])
    start = clock.ms
    seen = []
    for later in (0, 3_600_000, 45_720_000, DAY_MS, 30 * DAY_MS):
        clock.ms = start + later
        view = engine.model(u)
        assert view.resolved_ms == clock.ms
        seen.append(_stances(view.beliefs))
        explanation, _ = engine.explain(u, "size", "team")
        assert explanation is not None
        seen_weights = [w.weight for w in explanation.observations]
        if later == 0:
            weights = seen_weights
        assert seen_weights == weights
    assert all(s == seen[0] for s in seen)
    assert seen[0][0][2] == "ten people"


_observations = st.lists(
    st.tuples(
        st.sampled_from(["sales_agent", "support_agent", "bot"]),
        st.sampled_from(["ten", "twenty", "thirty"]),
        st.sampled_from([0.3, 0.52, 0.8, 0.95]),
        st.integers(0, 3 * DAY_MS),
    ),
    min_size=1,
    max_size=6,
)


def test_any_merge_order_and_any_read_instant_give_the_same_answer() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "db", "sales", fsync=False)
        try:
            clock = ReadClock()
            eng = Engine(store, BOOK, now_ms=clock)
            _any_order_any_instant(eng, clock)
        finally:
            store.close()


def _any_order_any_instant(eng: Engine, clock: ReadClock) -> None:
    counter = iter(range(1_000_000))
    base = wall_ms() - 3 * DAY_MS

    @VALUES
    @given(
        written=_observations,
        rnd=shuffles,
        instants=st.lists(st.integers(0, 60 * DAY_MS), min_size=2, max_size=2),
    )
    def check(written: list, rnd: random.Random, instants: list[int]) -> None:
        n = next(counter)
        subjects = [Subject("acme", SubjectKind.USER, f"u-{n}-{side}") for side in "ab"]
        views = []
        for subject, instant in zip(subjects, instants, strict=True):
            deltas = []
            for i, (source, statement, confidence, age) in enumerate(written):
                obs = observation(
                    "peer.1.x",
                    i + 1,
                    context="size",
                    key="team",
                    source=source,
                    statement=statement,
                    confidence=confidence,
                    ms=base + age,
                )
                state = SubjectState(subject, NO_ERASE, CausalContext.of([obs.dot]), {obs.dot: obs})
                deltas.append(Delta(state, frozenset([obs.dot])))
            rnd.shuffle(deltas)
            for delta in deltas:
                eng.merge_remote([delta], durable=False)
            clock.ms = wall_ms() + instant
            views.append(_stances(eng.model(subject).beliefs))
        assert views[0] == views[1]

    check()
