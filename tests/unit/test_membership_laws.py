"""The laws of group membership (sync.members: a view over the group subject's own state), over
random add, remove and forget sequences on 2-3 replicas, with deltas duplicated, reordered and
lost and full states merged: the subject CRDT's laws, seen through ``members``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.causal import Dot
from sync.crdt import SubjectState, erase_delta, merge, slot_dots
from sync.hlc import pack
from sync.members import (
    MEMBERS,
    add_delta,
    check_member,
    groups_of,
    members,
    remove_delta,
    users_of,
)
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import ACTORS, BASE_MS, LAWS, shuffles

T = "acme"
TEAMS = (Subject(T, SubjectKind.TEAM, "t1"), Subject(T, SubjectKind.TEAM, "t2"))
ORG = Subject(T, SubjectKind.ORG, "o1")
USERS = tuple(Subject(T, SubjectKind.USER, f"u{i}") for i in range(3))
GROUPS = (*TEAMS, ORG)
SOURCE = "operator"


def _member_for(group: Subject, n: int) -> Subject:
    return TEAMS[n % len(TEAMS)] if group.kind == SubjectKind.ORG else USERS[n % len(USERS)]


def _dots_of(state: SubjectState, member: Subject) -> list[Dot]:
    return slot_dots(state, MEMBERS, member.id)


@dataclass
class Run:
    replicas: list[dict[Subject, SubjectState]]
    deltas: list[SubjectState] = field(default_factory=list)
    history: list[SubjectState] = field(default_factory=list)
    # (group, dot) -> (member, hlc): dots are minted per group state
    adds: dict[tuple[Subject, Dot], tuple[Subject, int]] = field(default_factory=dict)
    removed: set[tuple[Subject, Dot]] = field(default_factory=set)
    forgets: dict[Subject, int] = field(default_factory=dict)

    def expected(self, group: Subject) -> frozenset[Subject]:
        """The reference: every add not removed (or replaced) by a replica that had seen it,
        not before a forget of its member or group."""
        return frozenset(
            m
            for (g, d), (m, hlc) in self.adds.items()
            if g == group
            and (g, d) not in self.removed
            and hlc >= self.forgets.get(m, 0)
            and hlc >= self.forgets.get(g, 0)
        )


_KINDS = ("add",) * 4 + ("remove",) * 2 + ("deliver",) * 4 + ("full",) + ("forget",) * 2


def simulate(n: int, script: list[int]) -> Run:
    actors = ACTORS[:n]
    run = Run([{g: SubjectState(g) for g in GROUPS} for _ in actors])
    for step, raw in enumerate(script):
        raw, kind = divmod(raw, len(_KINDS))
        raw, r = divmod(raw, n)
        raw, g = divmod(raw, len(GROUPS))
        group, actor, hlc = GROUPS[g], actors[r], pack(BASE_MS + step)
        replica = run.replicas[r]
        member = _member_for(group, raw)
        match _KINDS[kind]:
            case "add" | "remove":
                state = replica[group]
                run.removed.update((group, d) for d in _dots_of(state, member))
                if _KINDS[kind] == "add":
                    delta = add_delta(state, member, actor, hlc, SOURCE)
                    (dot,) = delta.observations
                    run.adds[group, dot] = (member, hlc)
                else:
                    delta = remove_delta(state, member, actor)
            case "forget":
                # a member's forget is its own erase bound (replicated with it); a group's
                # erases its state
                who = (*USERS, *GROUPS)[raw % (len(USERS) + len(GROUPS))]
                run.forgets[who] = max(run.forgets.get(who, 0), hlc)
                if who not in GROUPS:
                    continue
                delta = erase_delta(replica[who], actor, hlc)
            case "deliver":
                if run.deltas:
                    delta = run.deltas[raw % len(run.deltas)]
                    replica[delta.subject] = merge(replica[delta.subject], delta)
                    run.history.append(replica[delta.subject])
                continue
            case _:
                target = run.replicas[raw % n]
                target[group] = merge(target[group], replica[group])
                run.history.append(target[group])
                continue
        replica[delta.subject] = merge(replica[delta.subject], delta)
        run.deltas.append(delta)
        run.history.append(replica[delta.subject])
    return run


runs = st.builds(simulate, st.integers(2, 3), st.lists(st.integers(0, 2**20), max_size=30))


def _converge(run: Run, rnd: random.Random) -> list[dict[Subject, SubjectState]]:
    out = []
    for replica in run.replicas:
        deliveries = run.deltas + rnd.choices(run.deltas, k=len(run.deltas) // 2)
        rnd.shuffle(deliveries)
        states = dict(replica)
        for delta in deliveries:
            states[delta.subject] = merge(states[delta.subject], delta)
        out.append(states)
    return out


@LAWS
@given(run=runs, rnd=shuffles)
def test_replicas_converge_to_the_reference_whatever_the_delivery_order(
    run: Run, rnd: random.Random
) -> None:
    converged = _converge(run, rnd)
    for group in GROUPS:
        states = [c[group] for c in converged]
        assert all(s == states[0] for s in states)
        assert len({s.digest() for s in states}) == 1
        for s in states:
            assert members(s, run.forgets) == run.expected(group)


# --- add wins, remove, forget ----------------------------------------------------------------

TEAM, USER, OTHER = TEAMS[0], USERS[0], USERS[1]


def _add(state: SubjectState, member: Subject, actor: str, ms: int) -> SubjectState:
    return add_delta(state, member, actor, pack(ms), SOURCE)


def test_an_add_concurrent_with_a_remove_wins() -> None:
    base = merge(SubjectState(TEAM), _add(SubjectState(TEAM), USER, "a.1", BASE_MS))
    remove = remove_delta(base, USER, "a.1")  # replica a saw the first add
    again = _add(base, USER, "b.1", BASE_MS + 1)  # replica b re-adds concurrently
    for state in (merge(merge(base, remove), again), merge(merge(base, again), remove)):
        assert members(state) == {USER}
    # a remove after having seen the re-add removes it
    both = merge(merge(base, remove), again)
    assert members(merge(both, remove_delta(both, USER, "a.1"))) == frozenset()


def test_each_mutation_returns_a_delta_that_merges_to_its_effect() -> None:
    state = SubjectState(TEAM)
    for i, user in enumerate((USER, OTHER, USER)):
        state = merge(state, _add(state, user, "a.1", BASE_MS + i))
    assert members(state) == {USER, OTHER}
    assert len(_dots_of(state, USER)) == 1  # a re-add replaces the member's entry
    state = merge(state, remove_delta(state, USER, "a.1"))
    assert members(state) == {OTHER}
    assert state.context.max_counter("a.1") == 4  # the remove took a dot of its own


def test_forget_removes_a_user_from_every_group_even_adds_its_node_never_saw() -> None:
    t1, t2 = TEAMS
    seen = _add(SubjectState(t1), USER, "a.1", BASE_MS)
    unseen = _add(SubjectState(t2), USER, "b.1", BASE_MS + 1)  # on b, concurrently
    forgets = {USER: pack(BASE_MS + 2)}  # the user's erase bound, replicated with the user
    final = {t1: seen, t2: unseen}
    assert groups_of(final, USER, forgets) == frozenset()
    assert groups_of(final, USER) == {t1, t2}  # without the erase bound both adds count
    # an add after the forget (by hybrid clock) is a rejoin and stays
    rejoin = _add(final[t2], USER, "b.1", BASE_MS + 3)
    assert groups_of({**final, t2: merge(final[t2], rejoin)}, USER, forgets) == {t2}


def test_forgetting_a_group_empties_it_and_a_team_leaves_its_organizations() -> None:
    org = merge(SubjectState(ORG), _add(SubjectState(ORG), TEAM, "a.1", BASE_MS))
    team = _add(SubjectState(TEAM), USER, "a.1", BASE_MS)
    directory = {ORG: org, TEAM: team}
    assert users_of(directory, ORG) == {USER}
    assert users_of(directory, ORG, {TEAM: pack(BASE_MS + 1)}) == frozenset()
    assert members(org, {TEAM: pack(BASE_MS + 1)}) == frozenset()
    forgotten = merge(org, erase_delta(org, "a.1", pack(BASE_MS + 1)))
    assert members(forgotten) == frozenset()
    # an add concurrent with the group's forget, from before it, is erased where it arrives
    late = _add(SubjectState(ORG), TEAMS[1], "b.1", BASE_MS)
    assert members(merge(forgotten, late)) == frozenset()


def test_an_organization_counts_a_user_in_several_of_its_teams_once() -> None:
    t1, t2 = TEAMS
    directory: dict[Subject, SubjectState] = {}
    directory[ORG] = SubjectState(ORG)
    for team in TEAMS:
        directory[ORG] = merge(directory[ORG], _add(directory[ORG], team, "a.1", BASE_MS))
    directory[t1] = _add(SubjectState(t1), USER, "a.1", BASE_MS)
    directory[t2] = merge(
        _add(SubjectState(t2), USER, "a.1", BASE_MS),
        _add(SubjectState(t2), OTHER, "b.1", BASE_MS),
    )
    assert users_of(directory, ORG) == {USER, OTHER}
    assert groups_of(directory, USER) == {t1, t2}


def test_an_add_is_a_register_of_the_member_kind_and_id() -> None:
    delta = _add(SubjectState(ORG), TEAM, "a.1", BASE_MS)
    (obs,) = delta.observations.values()
    assert (obs.context, obs.key, obs.statement, obs.source) == (MEMBERS, "t1", "team:t1", SOURCE)


@pytest.mark.parametrize(
    ("group", "member", "says"),
    [
        (TEAM, TEAMS[1], "the members of a team are users"),
        (ORG, USER, "the members of an organization are teams"),
        (TEAM, Subject("other", SubjectKind.USER, "u0"), "of the group's tenant 'acme'"),
        (USER, OTHER, "group: must be a team or an organization"),
    ],
)
def test_a_member_of_the_wrong_kind_or_tenant_is_refused_naming_the_field(
    group: Subject, member: Subject, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        check_member(group, member)
    with pytest.raises(ValueError, match=says):
        add_delta(SubjectState(group), member, "a.1", 1, SOURCE)
