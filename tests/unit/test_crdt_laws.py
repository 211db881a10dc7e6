"""The laws of the per-subject delta CRDT, over random event sequences on 2-4 replicas.

Deltas are duplicated, reordered and lost (``Deliver`` picks any delta already produced, some are
never picked) and full states are merged (``FullState``); see ``strategies.simulate``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.causal import CausalContext, Dot
from sync.crdt import (
    SubjectState,
    apply_observe,
    digest,
    erase_delta,
    merge,
    observe_delta,
    retract_delta,
    slot_dots,
)
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import (
    LAWS,
    SUBJECT,
    Run,
    causal_runs,
    fold,
    observation,
    runs,
    shuffles,
    subject_runs,
)


def _pool(run: Run, kind: str) -> list[SubjectState]:
    pool = run.deltas if kind == "deltas" else [*run.history, *run.replicas]
    return pool or [SubjectState(SUBJECT)]


def _converged(run: Run, rnd: random.Random) -> list[SubjectState]:
    """Every replica, after receiving every delta once more in its own random order, some twice."""
    out = []
    for state in run.replicas:
        deliveries = list(run.deltas)
        if deliveries:
            deliveries += rnd.choices(run.deltas, k=len(run.deltas) // 2)
        rnd.shuffle(deliveries)
        for delta in deliveries:
            state = merge(state, delta)
        out.append(state)
    return out


# --- merge is a join: commutative, associative, idempotent -----------------------------------


@LAWS
@given(run=runs, data=st.data())
def test_merge_is_commutative_associative_and_idempotent(run: Run, data: st.DataObject) -> None:
    for pool in (_pool(run, "deltas"), _pool(run, "states")):
        a, b, c = (data.draw(st.sampled_from(pool)) for _ in range(3))
        assert merge(a, b) == merge(b, a)
        assert merge(merge(a, b), c) == merge(a, merge(b, c))
        assert merge(a, a) == a
        assert merge(a, merge(a, b)) == merge(a, b)


@LAWS
@given(run=runs, data=st.data())
def test_observing_locally_is_merging_the_observe_delta(run: Run, data: st.DataObject) -> None:
    """The engine's fast path for its own writes (apply_observe) is exactly the merge."""
    state = data.draw(st.sampled_from(_pool(run, "states")))
    actor = data.draw(st.sampled_from(run.actors))
    held = sorted(state.observations)
    supersedes = data.draw(st.lists(st.sampled_from(held), unique=True) if held else st.just([]))
    obs = observation(actor, state.next_dot(actor).counter, statement="new")
    delta = observe_delta(state, obs, supersedes)
    assert apply_observe(state, obs, supersedes) == merge(state, delta)


def test_merge_refuses_states_of_different_subjects() -> None:
    other = Subject(SUBJECT.tenant, SubjectKind.TEAM, SUBJECT.id)
    with pytest.raises(ValueError, match="cannot merge"):
        merge(SubjectState(SUBJECT), SubjectState(other))


# --- convergence ----------------------------------------------------------------------------


@LAWS
@given(run=runs, rnd=shuffles)
def test_replicas_converge_once_every_delta_is_delivered_in_any_order(
    run: Run, rnd: random.Random
) -> None:
    converged = _converged(run, rnd)
    assert all(state == converged[0] for state in converged)
    assert converged[0] == fold(run.deltas)
    assert dict(converged[0].observations) == run.expected_observations()


@LAWS
@given(several=subject_runs(), rnd=shuffles)
def test_deltas_of_subjects_alike_but_for_tenant_or_kind_converge_each_to_its_own_state(
    several: list[Run], rnd: random.Random
) -> None:
    """A node holds many subjects: deltas of all of them arrive interleaved, and each lands in
    its own subject's state, which ends as if that subject's deltas had come alone."""
    deltas = [d for run in several for d in run.deltas]
    rnd.shuffle(deltas)
    held: dict[Subject, SubjectState] = {}
    for delta in deltas:
        held[delta.subject] = merge(held.get(delta.subject, SubjectState(delta.subject)), delta)
    for run in several:
        subject = run.replicas[0].subject
        alone = fold(run.deltas, subject)
        assert held.get(subject, SubjectState(subject)) == alone
        assert dict(alone.observations) == run.expected_observations()


@LAWS
@given(run=runs, rnd=shuffles)
def test_replicas_converge_by_full_state_exchange_alone(run: Run, rnd: random.Random) -> None:
    """Anti-entropy heals whatever the delta stream lost: each replica merges all the others."""
    snapshots = list(run.replicas)
    converged = []
    for state in snapshots:
        others = list(snapshots)
        rnd.shuffle(others)
        for other in others:
            state = merge(state, other)
        converged.append(state)
    assert all(state == converged[0] for state in converged)
    assert converged[0] == fold(run.deltas)
    assert dict(converged[0].observations) == run.expected_observations()


# --- digest -----------------------------------------------------------------------------------


@LAWS
@given(run=runs, rnd=shuffles)
def test_equal_digests_mean_equal_states(run: Run, rnd: random.Random) -> None:
    """Whatever the delivery order, so anti-entropy misses no difference."""
    seen = [*run.history, *run.deltas, *run.replicas, *_converged(run, rnd)]
    for _ in range(20):
        seen.append(merge(rnd.choice(seen), rnd.choice(seen)))
    by_digest: dict[bytes, SubjectState] = {}
    for state in seen:
        assert by_digest.setdefault(state.digest(), state) == state


@LAWS
@given(run=causal_runs, rnd=shuffles)
def test_under_causal_delivery_generation_and_context_pin_the_observations_down(
    run: Run, rnd: random.Random
) -> None:
    """What handoff tokens rely on: a replica at a (generation, context) shows what the writer
    showed there, once every delta is merged after the deltas of the dots it removes."""
    seen = [*run.history, *run.replicas]
    for _ in range(20):
        seen.append(merge(rnd.choice(seen), rnd.choice(seen)))
    by_position: dict[bytes, SubjectState] = {}
    for state in seen:
        first = by_position.setdefault(digest(state.generation, state.context), state)
        assert first.observations == state.observations


def _out_of_causal_order() -> tuple[SubjectState, SubjectState]:
    """One source writes through c, then a, then c again; b hears c but not a (link a-b down)."""
    a, b, c = (SubjectState(SUBJECT) for _ in range(3))
    c1 = observe_delta(c, observation("c.1", 1, statement="ten", ms=1))
    c = merge(c, c1)
    a = merge(a, c1)
    supersedes = slot_dots(a, "budget", "amount", "sales_agent")
    a1 = observe_delta(a, observation("a.1", 1, statement="twenty", ms=2), supersedes)
    a = merge(a, a1)
    c = merge(c, a1)
    supersedes = slot_dots(c, "budget", "amount", "sales_agent")
    c2 = observe_delta(c, observation("c.1", 2, statement="thirty", ms=3), supersedes)
    c = merge(c, c2)
    b = merge(merge(b, c1), c2)  # a1 (which superseded c1) never reaches b
    return b, c


def test_a_replica_that_missed_a_superseding_delta_has_a_different_digest() -> None:
    b, c = _out_of_causal_order()
    assert [o.statement for o in c.observations.values()] == ["thirty"]
    assert sorted(o.statement for o in b.observations.values()) == ["ten", "thirty"]
    assert (b.generation, b.context) == (c.generation, c.context)
    assert b.digest() != c.digest()  # so anti-entropy ships the states ...
    assert merge(b, c) == c  # ... and that repairs b


def test_digest_tells_apart_generation_context_and_observations() -> None:
    ctx = CausalContext.of([Dot("a.1", 1), Dot("a.1", 3)])
    assert digest(0, ctx) != digest(1, ctx)
    assert digest(0, ctx) != digest(0, ctx.join(CausalContext.of([Dot("a.1", 2)])))
    assert digest(0, ctx) != digest(0, CausalContext.of([Dot("b.1", 1), Dot("a.1", 3)]))
    assert digest(0, ctx, [Dot("a.1", 1)]) != digest(0, ctx, [Dot("a.1", 3)])
    assert digest(0, ctx, [Dot("a.1", 1), Dot("a.1", 3)]) == digest(
        0, ctx, [Dot("a.1", 3), Dot("a.1", 1)]
    )
    assert digest(0, CausalContext.of([Dot("a.1", 2), Dot("a.1", 1)])) == digest(
        0, CausalContext({"a.1": 2})
    )


# --- erase: the higher generation wins outright -----------------------------------------------


@LAWS
@given(run=runs, rnd=shuffles)
def test_erase_removes_everything_observed_before_it(run: Run, rnd: random.Random) -> None:
    final = _converged(run, rnd)[0]
    kept = set(final.observations.values())
    issued = {(i.generation, i.observation) for i in run.issued}
    for erasure in run.erasures:
        assert final.generation >= erasure.generation
        assert not kept & erasure.erased
    # Nothing issued at an older generation survives, whoever issued it and when it arrives.
    assert all((final.generation, o) in issued for o in kept)
    for delta in run.observe_deltas:
        if delta.generation < final.generation:
            assert merge(final, delta) == final
            assert merge(delta, final) == final


@LAWS
@given(run=runs)
def test_observe_at_an_older_generation_never_comes_back_after_an_erase(run: Run) -> None:
    for erasure in run.erasures:
        for delta in run.observe_deltas:
            if delta.generation < erasure.generation:
                assert merge(erasure.delta, delta) == erasure.delta
                assert merge(delta, erasure.delta) == erasure.delta


def test_forgotten_subject_never_returns_when_a_concurrent_write_arrives_late() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    first = observe_delta(a, observation("a.1", 1))
    a, b = merge(a, first), merge(b, first)
    # b writes at generation 0 while a erases; then they exchange in both directions.
    late = observe_delta(b, observation("b.1", 1, source="bot"))
    b = merge(b, late)
    erase = erase_delta(a, "a.1")
    a = merge(a, erase)
    assert a.generation == 1 and not a.observations
    a, b = merge(a, late), merge(b, erase)
    assert a == b
    assert not a.observations
    # A write after the erase lives in the new generation.
    new = observation("a.1", a.next_dot("a.1").counter, statement="new")
    assert dict(merge(merge(b, late), observe_delta(a, new)).observations) == {new.dot: new}


# --- observed-remove ----------------------------------------------------------------------


@LAWS
@given(run=runs)
def test_a_retract_removes_only_what_it_saw(run: Run) -> None:
    """A retract never removes an observation it did not see (a concurrent one survives)."""
    for retraction in run.retractions:
        assert all(dot in retraction.seen for dot in retraction.removes)
        for delta in run.observe_deltas:
            if delta.generation != retraction.generation:
                continue
            ((dot, obs),) = delta.observations.items()
            merged = merge(delta, retraction.delta)
            assert merged == merge(retraction.delta, delta)
            if dot in retraction.seen:
                assert (dot in retraction.removes) == (dot not in merged.observations)
            else:
                assert merged.observations.get(dot) == obs


def test_a_concurrent_observation_survives_a_retract() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    old = observe_delta(a, observation("a.1", 1, statement="ten"))
    a, b = merge(a, old), merge(b, old)
    # a's source observes again (superseding its old dot) while b retracts what it saw.
    new = observe_delta(
        a,
        observation("a.1", 2, statement="twenty"),
        slot_dots(a, "budget", "amount", "sales_agent"),
    )
    retract = retract_delta(b, "b.1", slot_dots(b, "budget", "amount", "sales_agent"))
    a, b = merge(merge(a, new), retract), merge(merge(b, retract), new)
    assert a == b
    assert [o.statement for o in a.observations.values()] == ["twenty"]


def test_a_retract_delivered_before_the_observation_it_removes_still_removes_it() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    obs = observe_delta(a, observation("a.1", 1))
    a = merge(a, obs)
    retract = retract_delta(a, "a.1", [Dot("a.1", 1)])
    b = merge(merge(b, retract), obs)  # out of order
    assert not b.observations
    assert b == merge(a, retract)


# --- covers --------------------------------------------------------------------------------


@LAWS
@given(run=runs, data=st.data())
def test_a_state_covers_every_position_it_merged(run: Run, data: st.DataObject) -> None:
    pool = [*run.history, *run.deltas, *run.replicas]
    x = data.draw(st.sampled_from(pool))
    y = data.draw(st.sampled_from(pool))
    merged = merge(y, x)
    assert merged.covers(x.generation, x.context)
    assert merged.covers(y.generation, y.context)
    assert y.covers(y.generation, y.context)


@LAWS
@given(run=causal_runs, data=st.data())
def test_under_causal_delivery_a_state_covers_exactly_what_it_merged(
    run: Run, data: st.DataObject
) -> None:
    """y covers x's position exactly when merging x into y would change nothing."""
    x = data.draw(st.sampled_from([*run.history, *run.deltas, *run.replicas]))
    y = data.draw(st.sampled_from([*run.history, *run.replicas]))
    assert y.covers(x.generation, x.context) == (merge(y, x) == y)


def test_merging_out_of_causal_order_claims_a_position_it_does_not_hold() -> None:
    """Why deltas go through sync.delivery: a plain merge can cover c yet show what c removed."""
    b, c = _out_of_causal_order()
    assert b.covers(c.generation, c.context)
    assert b.observations != c.observations


def test_covers_compares_generations_first() -> None:
    state = SubjectState(SUBJECT, 2, CausalContext.of([Dot("a.1", 1)]))
    assert state.covers(1, CausalContext.of([Dot("z.1", 99)]))
    assert not state.covers(3, CausalContext())
    assert state.covers(2, CausalContext.of([Dot("a.1", 1)]))
    assert not state.covers(2, CausalContext.of([Dot("a.1", 2)]))


def test_next_dot_never_reuses_a_counter_seen_beyond_the_vector() -> None:
    state = SubjectState(SUBJECT, 0, CausalContext.of([Dot("a.1", 1), Dot("a.1", 5)]))
    assert state.next_dot("a.1") == Dot("a.1", 6)
    assert state.next_dot("b.1") == Dot("b.1", 1)


def test_slot_dots_are_one_slot_of_one_source_oldest_first() -> None:
    obs = [
        observation("a.1", 3, ms=30),
        observation("a.1", 1, ms=10),
        observation("a.1", 2, ms=20, source="bot"),
        observation("a.1", 4, ms=40, key="owner"),
    ]
    state = SubjectState(SUBJECT, 0, CausalContext.of(o.dot for o in obs), {o.dot: o for o in obs})
    assert slot_dots(state, "budget", "amount", "sales_agent") == [Dot("a.1", 1), Dot("a.1", 3)]
    assert slot_dots(state, "budget", "amount") == [Dot("a.1", n) for n in (1, 2, 3)]
    assert slot_dots(state, "budget", "missing") == []
