"""A snapshot advanced from another equals one resolved from scratch; a kept encoding spliced
from another equals the state's encoding and digest (node.snapshots, sync.codec)."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given

from node.policy import PolicyBook
from node.resolution import resolve
from node.snapshots import (
    Slot,
    Snapshots,
    advance,
    advance_index,
    after_write,
    index_of,
    resolve_snapshot,
    touched,
)
from sync.codec import encode_state, encode_state_reusing
from sync.crdt import SubjectState, apply_observe, digest_with, merge, observed_change
from sync.observation import Observation, Subject, SubjectKind
from tests.unit.strategies import LAWS, SUBJECT, Run, observation, runs

BOOK = PolicyBook()


@LAWS
@given(run=runs)
def test_a_snapshot_advanced_through_any_states_of_a_subject_equals_one_resolved_afresh(
    run: Run,
) -> None:
    history = run.history or run.replicas
    snapshot = resolve_snapshot(history[0], BOOK)
    for state in [*history, *run.replicas]:  # states of every replica, in any order
        index = advance_index(snapshot.index, state)
        assert by_dot(index.slots) == by_dot(index_of(state).slots)
        snapshot = advance(snapshot, index)
        assert snapshot.beliefs == tuple(resolve(state.observations.values(), BOOK))
        assert snapshot.beliefs == resolve_snapshot(state, BOOK).beliefs


@LAWS
@given(run=runs)
def test_an_encoding_spliced_from_the_previous_one_has_the_bytes_and_digest_of_the_state(
    run: Run,
) -> None:
    encoded = None
    for state in [*(run.history or run.replicas), *run.replicas]:
        raw, _, encoded = encode_state_reusing(state, encoded)
        assert raw == encode_state(state)
        part = encoded.digest_part()
        assert part is not None
        marks = (state.withdrawals, state.keyed_calls)
        assert digest_with(state.erased, state.context, part, *marks) == state.digest()
        assert sorted(encoded) == sorted(state.observations) == encoded.order


@LAWS
@given(run=runs)
def test_an_observe_s_own_change_is_the_difference_of_the_states_and_splices_alike(
    run: Run,
) -> None:
    """``observed_change`` (what a local write hands the encoder) equals the set difference of
    the states' dots, whenever it answers; the splice it drives has encode_state's bytes."""
    answered = 0
    for old in [*run.history, *run.replicas]:
        known = encode_state_reusing(old).observations
        for delta in run.observe_deltas:
            new = merge(old, delta)
            change = observed_change(old, new, delta)
            if change is None:
                continue
            answered += 1
            gone, added = change
            assert set(gone) == old.observations.keys() - new.observations.keys()
            assert set(added) == new.observations.keys() - old.observations.keys()
            assert encode_state_reusing(new, known, change).raw == encode_state(new)
    assert answered or not run.observe_deltas


def test_only_the_slots_whose_tuples_changed_are_touched() -> None:
    first = observation("a.1", 1, key="size")
    other = observation("a.1", 2, key="plan", statement="pro")
    state = apply_observe(apply_observe(index_of_empty(), first), other)
    index = index_of(state)
    newer = observation("a.1", 3, key="size", statement="twenty", ms=first.hlc + 5)
    written = apply_observe(state, newer, [first.dot])
    after = after_write(index, written, [first.dot], newer)
    assert by_dot(after.slots) == by_dot(index_of(written).slots)
    assert touched(index, after) == {(first.context, "size")}
    assert after.slots[(first.context, "plan")] is index.slots[(first.context, "plan")]


def test_snapshots_stay_within_their_budget_and_keep_the_newest() -> None:
    snapshots = Snapshots(budget_bytes=3 * 1024)
    states = []
    for i in range(10):
        obs = observation("a.1", i + 1, key=f"k{i}")
        states.append(apply_observe(index_of_empty(), obs)._replace(subject=SUBJECT))
    for i, state in enumerate(states):
        subject = Subject("acme", SubjectKind.USER, f"u-{i}")
        snapshots.resolve(state._replace(subject=subject), BOOK)
        assert snapshots.cost_bytes <= max(snapshots.budget_bytes, 3000)
    assert len(snapshots) < 10
    assert snapshots.get(Subject("acme", SubjectKind.USER, "u-9")) is not None


def index_of_empty() -> SubjectState:
    return SubjectState(SUBJECT)


def by_dot(slots: Mapping[Slot, tuple[Observation, ...]]) -> dict[Slot, list[Observation]]:
    """Each slot's observations in dot order (an index keeps them in any order)."""
    return {slot: sorted(found, key=lambda o: o.dot) for slot, found in slots.items()}
