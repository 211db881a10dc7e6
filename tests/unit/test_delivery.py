"""Causal delivery: a replica that covers a writer's position shows nothing the writer removed."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.crdt import SubjectState, merge, observe_delta, retract_delta, slot_dots
from sync.delivery import CausalBuffer, Delta, ready
from sync.hlc import pack
from sync.observation import Observation, Subject, SubjectKind

SUBJECT = Subject("acme", SubjectKind.USER, "u-1")


def observe(state: SubjectState, actor: str, source: str, key: str, ms: int) -> Delta:
    dot = state.next_dot(actor)
    obs = Observation(dot, "budget", key, source, f"{source}@{ms}", 0.8, (), pack(ms), actor)
    return Delta(
        observe_delta(state, obs, slot_dots(state, "budget", key, source)), frozenset([dot])
    )


def retract(state: SubjectState, actor: str, source: str, key: str, ms: int) -> Delta | None:
    if not slot_dots(state, "budget", key, source):
        return None
    event = state.next_dot(actor)
    return Delta(retract_delta(state, actor, "budget", key, source, pack(ms)), frozenset([event]))


def test_a_delta_naming_an_unknown_superseded_dot_waits_for_it():
    a, b, c = (SubjectState(SUBJECT) for _ in range(3))
    c1 = observe(c, "c.1", "agent", "amount", 1)
    c = merge(c, c1.state)
    a = merge(a, c1.state)
    a1 = observe(a, "a.1", "agent", "amount", 2)  # supersedes c1
    a = merge(a, a1.state)
    c = merge(c, a1.state)
    c2 = observe(c, "c.1", "agent", "amount", 3)  # supersedes a1
    c = merge(c, c2.state)

    buffer = CausalBuffer()
    b = buffer.apply(b, [c1, c2])  # a1 has not arrived: c2 names it
    assert not ready(b, c2) and buffer.held == 1
    assert not b.covers(c.context)  # so a handoff read on b waits
    b = buffer.apply(b, [a1])
    assert buffer.held == 0
    assert b == c


def test_a_whole_state_is_always_ready_and_releases_what_was_held():
    a, b, c = (SubjectState(SUBJECT) for _ in range(3))
    c1 = observe(c, "c.1", "agent", "amount", 1)
    c = merge(c, c1.state)
    a = merge(a, c1.state)
    a1 = observe(a, "a.1", "agent", "amount", 2)
    a = merge(a, a1.state)
    c = merge(c, a1.state)
    c2 = observe(c, "c.1", "agent", "amount", 3)
    c = merge(c, c2.state)
    buffer = CausalBuffer()
    b = buffer.apply(b, [c2])
    assert buffer.held == 1
    b = buffer.apply(b, [Delta(c)])  # anti-entropy ships c's whole state
    assert b == c and buffer.held == 0


@settings(max_examples=150, derandomize=True, print_blob=True, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_whoever_covers_a_writers_position_shows_nothing_the_writer_removed(seed: int):
    rng = random.Random(seed)
    actors = ["a.1", "b.1", "c.1"]
    states = {x: SubjectState(SUBJECT) for x in actors}
    buffers = {x: CausalBuffer() for x in actors}
    inbox: dict[str, list[Delta]] = {x: [] for x in actors}
    snapshots: list[SubjectState] = []
    for step in range(40):
        actor = rng.choice(actors)
        if rng.random() < 0.6:
            # deliver some of this replica's inbox, in any order, sometimes twice
            rng.shuffle(inbox[actor])
            take = inbox[actor][: rng.randint(0, len(inbox[actor]))]
            inbox[actor] = inbox[actor][len(take) :] + [d for d in take if rng.random() < 0.2]
            states[actor] = buffers[actor].apply(states[actor], take)
        else:
            source, key = rng.choice(["s1", "s2"]), rng.choice(["amount", "owner"])
            state = states[actor]
            delta = (
                retract(state, actor, source, key, step)
                if rng.random() < 0.25
                else observe(state, actor, source, key, step)
            )
            if delta is None:
                continue
            states[actor] = merge(state, delta.state)
            snapshots.append(states[actor])
            for other in actors:
                if other != actor:
                    inbox[other].append(delta)
        for replica in states.values():
            for snap in snapshots:
                if replica.covers(snap.context):
                    shown = {d for d in replica.observations if d in snap.context}
                    assert shown <= set(snap.observations), (seed, step)
    for x in actors:  # deliver everything: all replicas converge
        states[x] = buffers[x].apply(states[x], inbox[x])
    assert states["a.1"] == states["b.1"] == states["c.1"], seed
