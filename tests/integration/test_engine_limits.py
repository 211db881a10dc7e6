"""The engine's subject limits over a real store: the footprint it keeps is the state's, and a
refused request changes nothing, whichever subject of it passes a limit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from node.engine import Engine
from node.errors import ResourceExhausted
from node.store import Store
from node.writes import ObservationInput
from sync.bounds import Footprint, SubjectLimits, state_bytes
from sync.crdt import SubjectState
from sync.delivery import Delta
from sync.observation import Subject, SubjectKind

A = Subject("acme", SubjectKind.USER, "a")
B = Subject("acme", SubjectKind.USER, "b")


def test_the_kept_footprint_is_the_states_and_a_refused_request_writes_nothing(tmp_path: Path):
    limits = SubjectLimits(max_slots=12, max_observations=20, max_bytes=6000)
    engine = Engine(Store(tmp_path / "db", "n1", fsync=False), subject_limits=limits)
    rnd = random.Random(3)
    refused = taken = 0
    for _ in range(300):
        batch = [
            ObservationInput(
                rnd.choice([A, B]),
                "notes",
                rnd.choice(["", f"k{rnd.randrange(15)}"]),
                f"statement {rnd.randrange(30)} " + "x" * rnd.randrange(200),
                0.7,
            )
            for _ in range(rnd.randrange(1, 6))
        ]
        before = {s: engine.state(s) for s in (A, B)}
        try:
            engine.observe(f"agent-{rnd.randrange(3)}", batch)
            taken += 1
        except ResourceExhausted as exc:
            refused += 1
            assert "max_subject_" in str(exc)
            assert {s: engine.state(s) for s in (A, B)} == before  # nothing of it written
        for s in (A, B):
            state = engine.state(s)
            assert engine.footprint(state) == Footprint.of(state)
            assert len(Footprint.of(state).slots) <= limits.max_slots
            assert len(state.observations) <= limits.max_observations
    assert refused > 10 and taken > 10, (refused, taken)


def test_a_merge_that_takes_a_subject_past_the_limits_is_refused_with_its_reason(
    tmp_path: Path,
) -> None:
    big = Engine(Store(tmp_path / "big", "n1", fsync=False))
    big.observe("agent", [ObservationInput(A, "notes", "", f"s{i}", 0.7) for i in range(10)])
    big.observe("agent", [ObservationInput(B, "notes", "", "one", 0.7)])
    small = Engine(
        Store(tmp_path / "small", "n2", fsync=False),
        subject_limits=SubjectLimits(max_observations=5),
    )
    outcome = small.merge_remote([Delta(big.state(A)), Delta(big.state(B))])
    assert (outcome.merged, len(outcome.limited)) == (1, 1)
    ((subject, reason),) = outcome.reasons
    assert subject == A and "10 observations" in reason and "max_subject_observations" in reason
    assert small.state(A) == SubjectState(A)
    assert len(small.state(B).observations) == 1


@pytest.mark.parametrize("limit", ["max_slots", "max_observations", "max_bytes"])
def test_each_limit_refuses_on_its_own(tmp_path: Path, limit: str) -> None:
    values = {"max_slots": 3, "max_observations": 3, "max_bytes": 1200}
    wide = {"max_slots": 10**6, "max_observations": 10**6, "max_bytes": 10**9}
    engine = Engine(
        Store(tmp_path / "db", "n1", fsync=False),
        subject_limits=SubjectLimits(**{**wide, limit: values[limit]}),
    )
    setting = {"max_slots": "max_subject_slots", "max_observations": "max_subject_observations"}
    with pytest.raises(ResourceExhausted, match=setting.get(limit, "max_subject_bytes")):
        for i in range(50):
            engine.observe("agent", [ObservationInput(A, "notes", "", f"s{i} " + "y" * 300, 0.7)])


def test_withdrawals_count_towards_the_subject_size_and_a_retract_past_it_is_refused(
    tmp_path: Path,
):
    """A retract records its withdrawal even where nothing is withdrawn (it applies to what
    arrives later): without the size limit, retracts of made-up slots would grow a subject
    without bound."""
    limits = SubjectLimits(max_bytes=2000)
    engine = Engine(Store(tmp_path / "db", "n1", fsync=False), subject_limits=limits)
    engine.observe("agent", [ObservationInput(A, "notes", "k", "a fact", 0.7)])
    recorded = 0
    with pytest.raises(ResourceExhausted, match="max_subject_bytes") as refused:
        for n in range(200):
            before = engine.state(A)
            engine.retract(A, "notes", f"made-up-{n}" + "y" * 60, "agent")
            recorded += 1
    assert "retract was not recorded" in str(refused.value)
    assert engine.state(A) == before  # the refused retract changed nothing
    assert 0 < recorded == len(before.withdrawals)
    assert state_bytes(before) <= limits.max_bytes
    # Withdrawing what the subject holds shrinks it: still taken at the limit.
    assert engine.retract(A, "notes", "k", "agent")[0] == 1
