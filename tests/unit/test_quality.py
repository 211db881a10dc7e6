"""Model quality (node.quality): the tallies kept incrementally, as snapshots are advanced,
replaced and dropped, equal the tallies of the snapshots kept computed afresh; a winner change
is counted once."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from node.policy import PolicyBook
from node.quality import Tally, moved
from node.resolution import resolve
from node.snapshots import Snapshots
from sync.crdt import SubjectState, apply_observe
from tests.unit.strategies import LAWS, SUBJECT, Run, observation, runs

BOOK = PolicyBook()


def fresh(states: list[SubjectState]) -> dict[str, Tally]:
    tallies, _ = moved(
        {}, [(None, b) for s in states for b in resolve(s.observations.values(), BOOK)]
    )
    return tallies


@LAWS
@given(run=runs, budget=st.sampled_from([1, 6_000, 1 << 30]), names=st.integers(1, 3))
def test_the_tallies_kept_equal_those_of_the_snapshots_kept_computed_afresh(
    run: Run, budget: int, names: int
) -> None:
    snapshots = Snapshots(budget)
    history = [*(run.history or run.replicas), *run.replicas]
    for i, state in enumerate(history):
        subject = SUBJECT._replace(id=f"u-{i % names}")  # states of a few subjects, interleaved
        snapshots.resolve(state._replace(subject=subject), BOOK)
    kept = [e.snapshot.state for e in snapshots._entries.values() if e.snapshot is not None]
    assert snapshots.quality.tallies() == fresh(kept)


def counted(context: str) -> float:
    value = REGISTRY.get_sample_value("selfmodel_belief_winner_changes_total", {"context": context})
    return value or 0.0


def test_a_winner_change_is_counted_once_and_a_contradiction_shows_in_the_tally():
    snapshots = Snapshots(1 << 30)
    context = "quality_probe"
    before = counted(context)
    one = observation("a.1", 1, context=context, source="a", statement="yes", confidence=0.6)
    state = apply_observe(SubjectState(SUBJECT), one)
    snapshots.resolve(state, BOOK)
    assert snapshots.quality.tallies()[context] == Tally(1, 0, 0, 1_700_000_000_000)
    two = observation("a.1", 2, context=context, source="b", statement="no", confidence=0.9)
    state = apply_observe(state, two)
    snapshots.resolve(state, BOOK)
    tally = snapshots.quality.tallies()[context]
    assert (tally.beliefs, tally.dissent, tally.uncertain) == (1, 1, 0)  # "no" wins, "yes" dissents
    assert counted(context) == before + 1
    snapshots.resolve(state, BOOK)  # the same state again: nothing moves
    assert counted(context) == before + 1


def test_the_dashboard_has_a_panel_for_each_model_quality_metric():
    board = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/selfmodel.json"
    panels = json.loads(board.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for name in (
        "selfmodel_belief_contradiction_ratio",
        "selfmodel_belief_winner_changes_total",
        "selfmodel_belief_uncertain_ratio",
        "selfmodel_belief_staleness_seconds",
    ):
        [expr] = [e for e in exprs if name in e]
        assert "by (context)" in expr, expr
    names = {f.name for f in REGISTRY.collect()}
    assert {"selfmodel_belief_contradiction_ratio", "selfmodel_belief_winner_changes"} <= names
