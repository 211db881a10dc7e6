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
    MAX_KEYED_CALLS,
    NO_ERASE,
    EraseBound,
    KeyedCall,
    KeyedCalls,
    SubjectState,
    apply_observe,
    clear_delta,
    digest,
    erase_delta,
    join_keyed_calls,
    merge,
    observe_delta,
    retract_delta,
    slot_dots,
)
from sync.hlc import pack
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import (
    ACTORS,
    BASE_MS,
    KEYS,
    LAWS,
    SUBJECT,
    VALUES,
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
    # after every event of the run, as a replica's clock is past everything it merged
    obs = observation(actor, state.next_dot(actor).counter, statement="new", ms=BASE_MS + 100)
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
def test_under_causal_delivery_the_context_pins_the_bound_and_observations_down(
    run: Run, rnd: random.Random
) -> None:
    """What handoff tokens rely on: a replica at a context shows what the writer showed there
    (erases included), once every delta is merged after the deltas of the dots it removes."""
    seen = [*run.history, *run.replicas]
    for _ in range(20):
        seen.append(merge(rnd.choice(seen), rnd.choice(seen)))
    by_position: dict[bytes, SubjectState] = {}
    for state in seen:
        first = by_position.setdefault(digest(NO_ERASE, state.context), state)
        assert first.observations == state.observations
        assert first.erased == state.erased


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
    assert (b.erased, b.context) == (c.erased, c.context)
    assert b.digest() != c.digest()  # so anti-entropy ships the states ...
    assert merge(b, c) == c  # ... and that repairs b


def test_digest_tells_apart_bound_context_and_observations() -> None:
    ctx = CausalContext.of([Dot("a.1", 1), Dot("a.1", 3)])
    none = NO_ERASE
    assert digest(none, ctx) != digest(EraseBound(1), ctx)
    assert digest(EraseBound(1), ctx) != digest(EraseBound(2), ctx)
    assert digest(EraseBound(1), ctx) != digest(EraseBound(1, ctx), ctx)
    assert digest(EraseBound(1, CausalContext.of([Dot("a.1", 1)])), ctx) != digest(
        EraseBound(1, CausalContext.of([Dot("a.1", 3)])), ctx
    )
    assert digest(none, ctx) != digest(none, ctx.join(CausalContext.of([Dot("a.1", 2)])))
    assert digest(none, ctx) != digest(none, CausalContext.of([Dot("b.1", 1), Dot("a.1", 3)]))
    assert digest(none, ctx, [Dot("a.1", 1)]) != digest(none, ctx, [Dot("a.1", 3)])
    assert digest(none, ctx, [Dot("a.1", 1), Dot("a.1", 3)]) == digest(
        none, ctx, [Dot("a.1", 3), Dot("a.1", 1)]
    )
    assert digest(none, CausalContext.of([Dot("a.1", 2), Dot("a.1", 1)])) == digest(
        none, CausalContext({"a.1": 2})
    )


# --- erase: a bound in causal time ----------------------------------------------------------


@LAWS
@given(run=runs, rnd=shuffles)
def test_a_forget_always_erases_a_write_that_happened_before_it(
    run: Run, rnd: random.Random
) -> None:
    """Whatever the erasing replica had seen: what it held, and what was written anywhere
    before its timestamp and reached it only later (or never)."""
    final = _converged(run, rnd)[0]
    for erasure in run.erasures:
        assert final.erased.hlc >= erasure.hlc
        for obs in final.observations.values():
            assert obs.hlc > erasure.hlc
            assert obs not in erasure.erased
    for delta in run.observe_deltas:
        if any(o.hlc < final.erased.hlc for o in delta.observations.values()):
            assert merge(final, delta) == final
            assert merge(delta, final) == final


@LAWS
@given(run=runs, rnd=shuffles)
def test_a_forget_never_erases_a_write_that_happened_after_it(run: Run, rnd: random.Random) -> None:
    """Wherever written, and whether or not the writer had merged the forget: a write after it
    (by the total order of timestamps) survives unless its source replaced or withdrew it."""
    final = _converged(run, rnd)[0]
    last_erase = max((e.hlc for e in run.erasures), default=0)
    for issued in run.issued:
        obs = issued.observation
        if obs.hlc > last_erase and obs.dot not in run.removed and not run.withdrawn(obs):
            assert final.observations.get(obs.dot) == obs


@LAWS
@given(run=runs)
def test_an_erase_and_an_earlier_write_merge_to_the_erase_in_either_order(run: Run) -> None:
    for erasure in run.erasures:
        for delta in run.observe_deltas:
            ((obs),) = delta.observations.values()
            if obs.hlc < erasure.hlc:
                merged = merge(erasure.delta, delta)
                assert merged == merge(delta, erasure.delta)
                assert not merged.observations
                assert merged.context == erasure.delta.context.join(delta.context)


@LAWS
@given(run=runs)
def test_dots_are_never_reused_after_a_forget(run: Run) -> None:
    """An observation id names one observation for ever (finding: ids restarted at 1)."""
    events = run.events
    assert len(events) == len(set(events))
    ids = [i.observation.dot for i in run.issued]
    assert len(ids) == len(set(ids))


def test_a_write_after_a_forget_on_the_other_side_of_a_partition_survives() -> None:
    """a forgets while cut off from b; b writes a second later; both orders of healing keep it."""
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    first = observe_delta(a, observation("a.1", 1, ms=1_000))
    a, b = merge(a, first), merge(b, first)
    erase = erase_delta(a, "a.1", pack(2_000))
    a = merge(a, erase)
    assert not a.observations
    later = observe_delta(b, observation("b.1", 1, source="bot", ms=3_000))
    b = merge(b, later)
    a, b = merge(a, later), merge(b, erase)
    assert a == b
    assert [o.dot for o in a.observations.values()] == [Dot("b.1", 1)]


def test_a_second_forget_erases_a_write_made_before_it_that_it_had_not_seen() -> None:
    """forget on a, write on a, forget again on c (cut off, never saw the write): heal, gone."""
    a, c = SubjectState(SUBJECT), SubjectState(SUBJECT)
    first = erase_delta(a, "a.1", pack(1_000))
    a = merge(a, first)
    phone = observe_delta(a, observation("a.1", 2, key="phone", ms=2_000))
    a = merge(a, phone)
    second = erase_delta(c, "c.1", pack(3_000))
    c = merge(c, second)
    a, c = merge(a, second), merge(merge(c, first), phone)
    assert a == c
    assert not a.observations
    assert a.erased.hlc == pack(3_000)


def test_a_write_after_a_forget_gets_a_new_id() -> None:
    a = merge(SubjectState(SUBJECT), observe_delta(SubjectState(SUBJECT), observation("a.1", 1)))
    a = merge(a, erase_delta(a, "a.1", pack(BASE_MS + 1)))
    assert a.next_dot("a.1") == Dot("a.1", 3)  # 1: the observation, 2: the erase


def test_concurrent_forgets_compose_and_the_later_bound_wins() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    x = observe_delta(a, observation("a.1", 1, ms=1_000))
    a = merge(a, x)
    y = observe_delta(b, observation("b.1", 1, source="bot", ms=2_500))
    b = merge(b, y)
    early = erase_delta(a, "a.1", pack(2_000))  # saw x, not y, and y is after it
    late = erase_delta(b, "b.1", pack(3_000))  # saw y, not x, and x is before it
    merged = merge(merge(a, early), merge(b, late))
    assert merged.erased.hlc == pack(3_000)
    assert merged.erased.seen == a.context.join(b.context)
    assert not merged.observations


# --- retract: a withdrawal in causal time ---------------------------------------------------


@LAWS
@given(run=runs)
def test_a_retract_withdraws_its_source_in_the_slot_before_its_time_wherever_written(
    run: Run,
) -> None:
    """Seen or not by the retracting replica; and never an observation after the retract (the
    source's next statement, or a concurrent one made later elsewhere)."""
    for retraction in run.retractions:
        assert all(dot in retraction.seen for dot in retraction.removes)
        for delta in run.observe_deltas:
            ((dot, obs),) = delta.observations.items()
            merged = merge(delta, retraction.delta)
            assert merged == merge(retraction.delta, delta)
            slot = (retraction.context, retraction.key, retraction.source)
            hit = (obs.context, obs.key, obs.source) == slot
            if hit and obs.hlc < retraction.hlc:
                assert dot not in merged.observations
            elif dot not in retraction.seen:
                assert merged.observations.get(dot) == obs
            else:
                assert (dot in retraction.removes) == (dot not in merged.observations)


def test_an_observation_made_after_a_concurrent_retract_survives_it() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    old = observe_delta(a, observation("a.1", 1, statement="ten", ms=1_000))
    a, b = merge(a, old), merge(b, old)
    # b retracts what sales_agent said; then, on a, it says something new.
    retract = retract_delta(b, "b.1", "budget", "amount", "sales_agent", pack(2_000))
    new = observe_delta(
        a,
        observation("a.1", 2, statement="twenty", ms=3_000),
        slot_dots(a, "budget", "amount", "sales_agent"),
    )
    a, b = merge(merge(a, new), retract), merge(merge(b, retract), new)
    assert a == b
    assert [o.statement for o in a.observations.values()] == ["twenty"]


def test_a_retract_withdraws_an_observation_of_its_source_it_had_not_merged() -> None:
    """Written on a before the retract on b, which had not merged it: withdrawn everywhere."""
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    unseen = observe_delta(a, observation("a.1", 1, statement="fifty people", ms=1_000))
    a = merge(a, unseen)
    retract = retract_delta(b, "b.1", "budget", "amount", "sales_agent", pack(2_000))
    b = merge(b, retract)
    other = observe_delta(a, observation("a.1", 2, source="bot", ms=1_500))
    a = merge(a, other)
    a, b = merge(a, retract), merge(merge(b, other), unseen)
    assert a == b
    assert [o.source for o in a.observations.values()] == ["bot"]  # another source stays
    assert a.withdrawals == {("budget", "amount", "sales_agent"): pack(2_000)}


def test_a_retract_delivered_before_the_observation_it_removes_still_removes_it() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    obs = observe_delta(a, observation("a.1", 1))
    a = merge(a, obs)
    retract = retract_delta(a, "a.1", "budget", "amount", "sales_agent", pack(BASE_MS + 1))
    b = merge(merge(b, retract), obs)  # out of order
    assert not b.observations
    assert b == merge(a, retract)


def test_a_forget_makes_earlier_withdrawals_moot() -> None:
    """A withdrawal at or below the erase bound says nothing more: it is not kept."""
    a = SubjectState(SUBJECT)
    a = merge(a, retract_delta(a, "a.1", "budget", "amount", "bot", pack(1_000)))
    a = merge(a, retract_delta(a, "a.1", "budget", "owner", "bot", pack(3_000)))
    a = merge(a, erase_delta(a, "a.1", pack(2_000)))
    assert a.withdrawals == {("budget", "owner", "bot"): pack(3_000)}


# --- keyed calls: the greater per (agent, key), the MAX_KEYED_CALLS greatest kept -------------

# Few agents, keys and instants: keys meet, timestamps tie, and there are more than a state keeps.
_calls = st.dictionaries(
    st.tuples(st.sampled_from(("bot", "ops")), st.sampled_from([f"k{i}" for i in range(45)])),
    st.builds(
        KeyedCall,
        st.integers(1, 40),
        st.sampled_from(("retract", "forget")),
        st.sampled_from((b"a" * 16, b"b" * 16)),
        st.integers(0, 2),
    ),
    max_size=90,
).map(lambda calls: join_keyed_calls({}, calls))  # as a state holds them


@VALUES
@given(a=_calls, b=_calls, c=_calls)
def test_joining_keyed_calls_is_commutative_associative_and_idempotent(
    a: KeyedCalls, b: KeyedCalls, c: KeyedCalls
) -> None:
    assert join_keyed_calls(a, b) == join_keyed_calls(b, a)
    assert join_keyed_calls(join_keyed_calls(a, b), c) == join_keyed_calls(
        a, join_keyed_calls(b, c)
    )
    assert join_keyed_calls(a, a) == a
    assert len(join_keyed_calls(a, b)) <= MAX_KEYED_CALLS


@VALUES
@given(a=_calls, b=_calls)
def test_a_joined_call_is_the_greatest_of_its_key_and_none_kept_is_below_one_dropped(
    a: KeyedCalls, b: KeyedCalls
) -> None:
    joined = join_keyed_calls(a, b)
    union = {**a, **b}
    for who in union:
        best = max(c for c in (a.get(who), b.get(who)) if c is not None)
        if who in joined:
            assert joined[who] == best
        else:  # dropped for the MAX_KEYED_CALLS greater ones
            assert len(joined) == MAX_KEYED_CALLS
            assert all((c.hlc, k) > (best.hlc, who) for k, c in joined.items())


def test_a_retract_and_a_forget_carry_their_keyed_calls_to_every_replica() -> None:
    """A retry on a replica that merged the call finds it, the erase leaving it in place."""
    a = SubjectState(SUBJECT)
    withdrawn = KeyedCall(pack(1_000), "retract", b"r" * 16, 1)
    erased = KeyedCall(pack(2_000), "forget", b"f" * 16)
    step = retract_delta(
        a, "a.1", "budget", "amount", "bot", pack(1_000), {("bot", "r"): withdrawn}
    )
    a = merge(a, step)
    a = merge(a, erase_delta(a, "a.1", pack(2_000), {("ops", "f"): erased}))
    b = merge(SubjectState(SUBJECT), a)
    assert b.keyed_calls == {("bot", "r"): withdrawn, ("ops", "f"): erased}
    assert b.digest() == a.digest() != a._replace(keyed_calls={}).digest()


# --- covers --------------------------------------------------------------------------------


@LAWS
@given(run=runs, data=st.data())
def test_a_state_covers_every_position_it_merged(run: Run, data: st.DataObject) -> None:
    pool = [*run.history, *run.deltas, *run.replicas]
    x = data.draw(st.sampled_from(pool))
    y = data.draw(st.sampled_from(pool))
    merged = merge(y, x)
    assert merged.covers(x.context)
    assert merged.covers(y.context)
    assert y.covers(y.context)


@LAWS
@given(run=causal_runs, data=st.data())
def test_under_causal_delivery_a_state_covers_exactly_what_it_merged(
    run: Run, data: st.DataObject
) -> None:
    """y covers x's position exactly when merging x into y would change nothing."""
    x = data.draw(st.sampled_from([*run.history, *run.deltas, *run.replicas]))
    y = data.draw(st.sampled_from([*run.history, *run.replicas]))
    assert y.covers(x.context) == (merge(y, x) == y)


def test_merging_out_of_causal_order_claims_a_position_it_does_not_hold() -> None:
    """Why deltas go through sync.delivery: a plain merge can cover c yet show what c removed."""
    b, c = _out_of_causal_order()
    assert b.covers(c.context)
    assert b.observations != c.observations


def test_a_token_of_an_erased_write_is_covered_by_the_state_after_the_erase() -> None:
    """A reader holding the token of a write a later forget erased gets the state after the
    forget; a token of a write after the forget waits for that write."""
    a = SubjectState(SUBJECT)
    old = observe_delta(a, observation("a.1", 1, ms=1_000))
    a = merge(a, old)
    written_before = a.context
    a = merge(a, erase_delta(a, "a.1", pack(2_000)))
    assert a.covers(written_before) and not a.observations
    new = observe_delta(a, observation("a.1", 3, ms=3_000))
    assert not a.covers(merge(a, new).context)


def test_next_dot_never_reuses_a_counter_seen_beyond_the_vector() -> None:
    state = SubjectState(SUBJECT, NO_ERASE, CausalContext.of([Dot("a.1", 1), Dot("a.1", 5)]))
    assert state.next_dot("a.1") == Dot("a.1", 6)
    assert state.next_dot("b.1") == Dot("b.1", 1)


def test_slot_dots_are_one_slot_of_one_source_oldest_first() -> None:
    obs = [
        observation("a.1", 3, ms=30),
        observation("a.1", 1, ms=10),
        observation("a.1", 2, ms=20, source="bot"),
        observation("a.1", 4, ms=40, key="owner"),
    ]
    state = SubjectState(
        SUBJECT, NO_ERASE, CausalContext.of(o.dot for o in obs), {o.dot: o for o in obs}
    )
    assert slot_dots(state, "budget", "amount", "sales_agent") == [Dot("a.1", 1), Dot("a.1", 3)]
    assert slot_dots(state, "budget", "amount") == [Dot("a.1", n) for n in (1, 2, 3)]
    assert slot_dots(state, "budget", "missing") == []


# --- clear: an observed-remove of a slot (the registers in a node's own slots) ---------------


@LAWS
@given(run=runs, data=st.data())
def test_a_clear_removes_what_its_replica_held_of_the_slot_and_nothing_else(
    run: Run, data: st.DataObject
) -> None:
    """Wherever merged and in any order: the slot's observations the clearing replica held
    are gone; one it had not seen (written concurrently) survives; merge stays a join."""
    r = data.draw(st.integers(0, len(run.replicas) - 1))
    state, key = run.replicas[r], data.draw(st.sampled_from(KEYS))
    clear = clear_delta(state, ACTORS[r], "budget", key)
    held = set(slot_dots(state, "budget", key))
    for other in [*run.replicas, *run.deltas]:
        merged = merge(other, clear)
        assert merged == merge(clear, other) == merge(merged, clear)
        for dot, obs in other.observations.items():
            assert merged.observations.get(dot) == (None if dot in held else obs)


def test_a_put_concurrent_with_a_clear_survives_it() -> None:
    a, b = SubjectState(SUBJECT), SubjectState(SUBJECT)
    first = observe_delta(a, observation("a.1", 1, statement="weighted", ms=1_000))
    a, b = merge(a, first), merge(b, first)
    clear = clear_delta(b, "b.1", "budget", "amount")  # b held the first, not the next
    again = observe_delta(a, observation("a.1", 2, statement="latest", ms=2_000), [first_dot(a)])
    a, b = merge(merge(a, again), clear), merge(merge(b, clear), again)
    assert a == b
    assert [o.statement for o in a.observations.values()] == ["latest"]


def first_dot(state: SubjectState) -> Dot:
    return min(state.observations)
