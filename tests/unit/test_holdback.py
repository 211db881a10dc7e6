"""Holding back too-new observations of a whole state (sync.holdback): the rest merges now,
and the full state merged later gives what merging it at once would have."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync.causal import CausalContext, Dot
from sync.crdt import NO_ERASE, SubjectState, merge
from sync.hlc import pack
from sync.holdback import MAX_SPLIT, too_new, without
from sync.observation import Observation, Subject, SubjectKind
from tests.unit.strategies import LAWS, Run, runs

T0 = 1_700_000_000_000
U = Subject("acme", SubjectKind.USER, "u")


def obs(actor: str, counter: int, at_ms: int) -> Observation:
    return Observation(
        Dot(actor, counter), "facts", f"k{counter}", "agent", "s", 0.9, (), pack(at_ms), "n"
    )


def test_a_state_without_its_too_new_observation_keeps_the_rest_and_forgets_the_dot() -> None:
    held = [obs("a", 1, T0), obs("a", 2, T0 + 600_000), obs("a", 3, T0)]
    state = SubjectState(U, NO_ERASE, CausalContext({"a": 4}), {o.dot: o for o in held})
    assert too_new(state, T0 + 60_000) == [held[1]]
    rest = without(state, too_new(state, T0 + 60_000))
    assert rest is not None
    assert set(rest.observations) == {Dot("a", 1), Dot("a", 3)}
    assert Dot("a", 2) not in rest.context
    assert all(Dot("a", c) in rest.context for c in (1, 3, 4))  # dot 4: superseded, kept seen
    assert merge(rest, state) == state


def test_a_split_that_would_spell_out_too_many_dots_is_refused() -> None:
    early = obs("a", 1, T0 + 600_000)
    state = SubjectState(U, NO_ERASE, CausalContext({"a": MAX_SPLIT + 2}), {early.dot: early})
    assert without(state, [early]) is None


@LAWS
@given(run=runs, pick=st.integers(0, 2**16))
def test_merging_a_held_back_state_then_the_full_one_equals_merging_the_full_one(
    run: Run, pick: int
) -> None:
    """For any replica state and any of its observations held back, and any receiver."""
    sender, receiver = run.replicas[0], run.replicas[-1]
    observations = sorted(sender.observations.values(), key=lambda o: o.dot)
    if not observations:
        return
    held = [observations[pick % len(observations)]]
    rest = without(sender, held)
    assert rest is not None
    partial = merge(receiver, rest)
    assert held[0].dot not in partial.observations or held[0].dot in receiver.observations
    assert merge(partial, sender) == merge(receiver, sender)
