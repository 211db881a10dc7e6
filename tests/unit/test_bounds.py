"""Subject limits and split states: sizes are upper bounds, parts merge back to the whole."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from node.config import NodeConfig
from node.convert import snapshot
from node.policy import PolicyBook
from node.resolution import resolve
from sync.bounds import (
    OWN_SLOT_BYTES,
    Footprint,
    Footprints,
    SubjectLimits,
    dot_bytes,
    excess,
    grown_excess,
    observation_bytes,
    split,
    state_bytes,
)
from sync.causal import CausalContext, Dot
from sync.codec import encode_state, encode_token
from sync.crdt import NO_ERASE, SubjectState, apply_observe, merge
from sync.members import MEMBERS
from sync.observation import Evidence, Observation
from tests.unit.strategies import LAWS, SUBJECT, VALUES, Run, random_states, runs, shuffles

# Every field at its maximum (node.validation.Limits), of 4-byte UTF-8 characters where the
# rules allow any character (statement, evidence ref and quote; the key of a keyless slot is
# the normalized statement), of the longest ids otherwise.
_WIDE = "\U0001f600"


def _largest_observation(counter: int, slot: int) -> Observation:
    statement = f"{slot:06d}" + _WIDE * 1994
    evidence = tuple(
        Evidence("document", _WIDE * 1024, _WIDE * 2000, 253402300799000) for _ in range(16)
    )
    return Observation(
        dot=Dot("n" * 128, counter),
        context="c" * 64,
        key=statement,
        source="s" * 128,
        statement=statement,
        confidence=0.5,
        evidence=evidence,
        hlc=2**63 - 1,
        origin="o" * 128,
        request_key="r" * 128,
        request_index=2**32 - 1,
    )


def _filled(limits: SubjectLimits, make: object) -> SubjectState:
    """A subject written to until its next observation would pass ``limits``."""
    state = SubjectState(SUBJECT)
    footprint = Footprint.of(state)
    for i in range(1, limits.max_observations + 2):
        obs = make(i)  # type: ignore[operator]
        after = apply_observe(state, obs)
        grown = footprint.changed((), [obs])
        if excess(after, grown, limits) is not None:
            return state
        state, footprint = after, grown
    raise AssertionError("the limits never refused an observation")


@given(random_states())
@VALUES
def test_state_bytes_is_an_upper_bound_of_the_encoding(state: SubjectState) -> None:
    assert state_bytes(state) >= len(encode_state(state))


def test_a_largest_observation_encodes_within_its_estimate() -> None:
    obs = _largest_observation(1, 0)
    state = SubjectState(SUBJECT, NO_ERASE, CausalContext.of([obs.dot]), {obs.dot: obs})
    assert len(encode_state(state)) <= state_bytes(state)
    assert observation_bytes(obs) > 200_000  # why counts alone cannot bound a subject's size


def test_an_idempotency_key_adds_to_the_estimate_at_least_what_it_adds_to_the_encoding() -> None:
    def encoded(obs: Observation) -> int:
        return len(encode_state(SubjectState(SUBJECT, observations={obs.dot: obs})))

    plain = _largest_observation(1, 0)._replace(request_key="", request_index=0)
    keyed = plain._replace(request_key="r" * 128, request_index=2**32 - 1)
    grown = encoded(keyed) - encoded(plain)
    assert grown > 128
    assert observation_bytes(keyed) - observation_bytes(plain) >= grown


def test_a_subject_at_the_default_limits_is_well_under_the_message_limit() -> None:
    limits, message = SubjectLimits(), NodeConfig().max_message_bytes
    assert message == 4 * 1024 * 1024
    for make in (
        lambda i: _largest_observation(i, i),  # each in a slot of its own
        lambda i: _largest_observation(i, 0)._replace(source=f"s{i}"),  # one slot
        lambda i: _largest_observation(i, i)._replace(evidence=(), statement="x" * 2000),
        lambda i: _largest_observation(i, i)._replace(evidence=(), statement=str(i)),
    ):
        state = _filled(limits, make)
        assert len(encode_state(state)) <= limits.max_bytes <= message // 4
        beliefs = resolve(state.observations.values(), PolicyBook())
        token = encode_token({SUBJECT: state.context})
        reply = snapshot(SUBJECT, beliefs, token, 0, "n" * 128)
        assert reply.ByteSize() <= message // 2, (len(state.observations), reply.ByteSize())


def test_footprint_changed_equals_footprint_of_the_state_after() -> None:
    rnd = random.Random(7)
    state = SubjectState(SUBJECT)
    footprint = Footprint.of(state)
    for i in range(1, 200):
        obs = _largest_observation(i, rnd.randrange(20))._replace(
            source=f"s{rnd.randrange(5)}",
            evidence=(),
            statement="x" * rnd.randrange(1, 50),
            context=rnd.choice(["c" * 64, MEMBERS]),  # the node's own slots counted apart
        )
        mine = [
            o for o in state.observations.values() if o.slot == obs.slot and o.source == obs.source
        ]
        state_after = apply_observe(state, obs, [o.dot for o in mine])
        footprint = footprint.changed(mine, [obs])
        state = state_after
        assert footprint == Footprint.of(state)


def _split_small(state: SubjectState, rnd: random.Random) -> list[SubjectState]:
    parts = split(state, rnd.choice([1, 300, 600, 2000]))
    rnd.shuffle(parts)
    return parts


@given(runs, shuffles)
@LAWS
def test_merging_the_parts_of_a_state_in_any_order_equals_merging_the_whole(
    run: Run, rnd: random.Random
) -> None:
    for state in [*run.replicas, *run.history[-6:]]:
        for replica in run.replicas:
            whole = merge(replica, state)
            acc = replica
            for part in _split_small(state, rnd):
                acc = merge(acc, part)
            assert acc == whole


@given(runs, shuffles)
@LAWS
def test_every_part_is_within_its_size_unless_one_observation_is_larger(
    run: Run, rnd: random.Random
) -> None:
    for state in run.replicas:
        budget = rnd.choice([300, 600, 2000])
        for part in split(state, budget):
            assert state_bytes(part) <= budget or len(part.observations) == 1
            # A part's context holds the dots it carries, or only dots the state removed.
            carried = set(part.observations)
            for dot in part.context.dots():
                assert dot in carried or (dot in state.context and dot not in state.observations)


def test_a_part_never_names_an_observation_it_does_not_carry() -> None:
    obs = [_largest_observation(i, i)._replace(evidence=()) for i in range(1, 6)]
    # Dots 1..5 observed, 6..9 removed (superseded or retracted), 10 observed.
    last = obs[0]._replace(dot=Dot(obs[0].dot.actor, 10))
    held = {o.dot: o for o in [*obs, last]}
    state = SubjectState(SUBJECT, NO_ERASE, CausalContext({obs[0].dot.actor: 10}), held)
    parts = split(state, 9000)
    assert len(parts) > 2
    receiver = SubjectState(SUBJECT, NO_ERASE, CausalContext.of([obs[0].dot]), {obs[0].dot: obs[0]})
    for part in parts:
        receiver = merge(receiver, part)
        assert obs[0].dot in receiver.observations  # no part removes what another carries
    assert receiver == merge(SubjectState(SUBJECT), state)


def test_a_state_with_too_many_removed_dots_to_spell_is_not_split() -> None:
    obs = _largest_observation(1, 0)
    state = SubjectState(SUBJECT, NO_ERASE, CausalContext({obs.dot.actor: 2**40}), {obs.dot: obs})
    assert split(state, 1000) == [state]


@given(st.integers(1, 50))
@VALUES
def test_the_excess_names_the_limit_and_its_setting(n: int) -> None:
    limits = SubjectLimits(max_observations=n)
    state = _filled(limits, lambda i: _largest_observation(i, i)._replace(evidence=()))
    assert len(state.observations) == n
    obs = _largest_observation(n + 1, n + 1)._replace(evidence=())
    found = excess(apply_observe(state, obs), Footprint.of(state).changed((), [obs]), limits)
    assert found is not None and found.limit == "observations"
    assert "max_subject_observations" in found.describe() and str(n) in found.describe()


def test_kept_footprints_are_bounded_by_their_slots_and_found_by_position() -> None:
    kept = Footprints(max_slots=30)
    states = []
    for i in range(10):
        subject = SUBJECT._replace(id=f"u-{i}")
        held = {Dot("a.1", c): _largest_observation(c, c)._replace(evidence=()) for c in (1, 2, 3)}
        states.append(SubjectState(subject, NO_ERASE, CausalContext.of(held), held))
        assert kept.of(states[-1]) == Footprint.of(states[-1])
    assert len(kept) == 10  # 30 slots in all
    grown = apply_observe(states[0], _largest_observation(4, 4)._replace(evidence=()))
    assert kept.of(grown) == Footprint.of(grown)  # a new position: counted anew
    assert len(kept) == 9  # 31 slots: the least recently kept (u-1) dropped
    other = states[0]._replace(observations={})  # the same position, fewer observations
    assert kept.of(other) == Footprint.of(other)


def _member(counter: int, member: int) -> Observation:
    """A group member's register as Engine.put writes it, every id of the longest."""
    return Observation(
        dot=Dot("n" * 128, counter),
        context=MEMBERS,
        key=f"{member:06d}" + "u" * 122,
        source="s" * 128,
        statement="user:" + f"{member:06d}" + "u" * 122,
        confidence=1.0,
        evidence=(),
        hlc=2**63 - 1,
        origin="o" * 128,
    )


def test_members_do_not_count_against_the_agents_limits_but_against_their_own() -> None:
    limits = SubjectLimits(max_slots=3, max_members=5)
    state = _filled(limits, lambda i: _largest_observation(i, i)._replace(evidence=()))
    assert len(state.observations) == 3  # the agents' slots are full
    footprint = Footprint.of(state)
    for m in range(5):
        obs = _member(10 + m, m)
        state, footprint = apply_observe(state, obs), footprint.changed((), [obs])
        assert excess(state, footprint, limits) is None
    obs = _member(20, 5)
    found = excess(apply_observe(state, obs), footprint.changed((), [obs]), limits)
    assert found is not None and found.limit == "members" and found.value == 6
    assert "max_group_members" in found.describe() and "6 members" in found.describe()
    agents = _largest_observation(30, 30)._replace(evidence=())
    found = excess(apply_observe(state, agents), footprint.changed((), [agents]), limits)
    assert found is not None and found.limit == "slots" and found.value == 4


def test_a_member_fits_its_share_and_a_full_group_stays_under_half_a_message() -> None:
    """A subject's whole state is within max_bytes plus OWN_SLOT_BYTES per member: with the
    agents' contexts at their limits and max_members members, under half a message."""
    limits, message = SubjectLimits(), NodeConfig().max_message_bytes
    state = _filled(limits, lambda i: _largest_observation(i, i))
    footprint = Footprint.of(state)
    for m in range(limits.max_members):
        obs = _member(10_000 + m, m)
        assert observation_bytes(obs) + dot_bytes(obs.dot) <= OWN_SLOT_BYTES
        state, footprint = apply_observe(state, obs), footprint.changed((), [obs])
    assert excess(state, footprint, limits) is None and footprint == Footprint.of(state)
    size = len(encode_state(state))
    assert size <= limits.max_bytes + limits.max_members * OWN_SLOT_BYTES <= message // 2, size


def test_a_subject_past_one_of_its_limits_still_takes_what_the_other_counts() -> None:
    """Limits lowered since a subject grew: past the agents' slots, a member is still added;
    past the members, a belief still is; what grows the passed limit is refused."""
    filled = SubjectLimits(max_slots=3)
    state = _filled(filled, lambda i: _largest_observation(i, i)._replace(evidence=()))
    for m in range(3):
        state = apply_observe(state, _member(10_000 + m, m))
    before = Footprint.of(state)
    lowered = SubjectLimits(max_slots=1, max_members=1)
    assert excess(state, before, lowered) is not None
    for obs, limit in (
        (_member(20_000, 7), "members"),
        (_largest_observation(20_001, 20_001)._replace(evidence=()), "slots"),
    ):
        after = before.changed((), [obs])
        found = grown_excess(apply_observe(state, obs), before, after, lowered)
        assert found is not None and found.limit == limit
        others = SubjectLimits(max_slots=1) if limit == "members" else SubjectLimits(max_members=1)
        assert grown_excess(apply_observe(state, obs), before, after, others) is None
