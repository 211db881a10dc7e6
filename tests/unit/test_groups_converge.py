"""Membership, members' writes and forgets on several replicas, each following its merges with
node.groups.Groups: once every delta reached every replica, all replicas show the same team and
organization roll-ups, equal to the roll-up computed from scratch from the converged states."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from node.groups import Groups
from node.policy import PolicyBook
from node.resolution import Belief, resolve
from node.rollup import compute_rollup
from sync.crdt import SubjectState, erase_delta, observe_delta, slot_dots
from sync.crdt import merge as merge_subject
from sync.hlc import pack
from sync.members import add_delta, is_group, members, remove_delta
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import ACTORS, BASE_MS, LAWS, SOURCES, observation, shuffles

T = "acme"
USERS = tuple(Subject(T, SubjectKind.USER, f"u{i}") for i in range(3))
TEAMS = tuple(Subject(T, SubjectKind.TEAM, f"t{i}") for i in range(2))
ORG = Subject(T, SubjectKind.ORG, "o1")
SLOTS = (("budget", "amount"), ("channel", "pref"))
STATEMENTS = ("ten thousand", "Ten thousand.", "fifty")
BOOK = PolicyBook()


@dataclass
class Replica:
    actor: str
    users: dict[Subject, SubjectState] = field(default_factory=dict)
    groups: Groups = field(init=False)

    def __post_init__(self) -> None:
        self.groups = Groups(self.model, lambda s: self.user(s).erased.hlc)

    def user(self, user: Subject) -> SubjectState:
        """Any subject's state (users and groups alike)."""
        return self.users.get(user) or SubjectState(user)

    def model(self, user: Subject) -> list[Belief]:
        return resolve(self.user(user).observations.values(), BOOK)

    def apply(self, delta: SubjectState) -> None:
        """What a node does after merging a subject's delta."""
        subject = delta.subject
        old = self.user(subject)
        new = self.users[subject] = merge_subject(old, delta)
        if new.erased.hlc > old.erased.hlc:
            self.groups.erased(subject, new.erased.hlc)
        if is_group(subject):
            self.groups.group_changed(new)
        else:
            old_model = resolve(old.observations.values(), BOOK)
            self.groups.model_changed(subject, old_model, self.model(subject))


_KINDS = (
    *("join",) * 3,
    *("leave", "team joins", "team leaves", "forget"),
    *("observe",) * 4,
    *("deliver",) * 4,
)


def simulate(n: int, script: list[tuple[int, ...]]) -> tuple[list[Replica], list[SubjectState]]:
    replicas = [Replica(a) for a in ACTORS[:n]]
    deltas: list[SubjectState] = []
    for step, (kind, r, u, t, s, w, c) in enumerate(script):
        replica = replicas[r % n]
        actor, hlc = replica.actor, pack(BASE_MS + step)
        user, team = USERS[u % len(USERS)], TEAMS[t % len(TEAMS)]
        new: list[SubjectState] = []
        match _KINDS[kind % len(_KINDS)]:
            case "join":
                new = [add_delta(replica.user(team), user, actor, hlc, "op")]
            case "leave":
                new = [remove_delta(replica.user(team), user, actor)]
            case "team joins":
                new = [add_delta(replica.user(ORG), team, actor, hlc, "op")]
            case "team leaves":
                new = [remove_delta(replica.user(ORG), team, actor)]
            case "forget":
                who = (*USERS, *TEAMS)[(u + t) % (len(USERS) + len(TEAMS))]
                new = [erase_delta(replica.user(who), actor, hlc)]
            case "observe":
                state = replica.user(user)
                context, key = SLOTS[s % len(SLOTS)]
                source = SOURCES[w % len(SOURCES)]
                obs = observation(
                    actor,
                    state.next_dot(actor).counter,
                    context=context,
                    key=key,
                    source=source,
                    statement=STATEMENTS[c % len(STATEMENTS)],
                    confidence=(0.3, 0.6, 0.9)[(c + w) % 3],
                    ms=BASE_MS + step,
                )
                new = [observe_delta(state, obs, slot_dots(state, context, key, source))]
            case _:
                if deltas:
                    replica.apply(deltas[(u * 7 + t * 3 + s) % len(deltas)])
        for delta in new:
            replica.apply(delta)
            deltas.append(delta)
    return replicas, deltas


ops = st.lists(st.tuples(*[st.integers(0, 20)] * 7), min_size=10, max_size=50)


@LAWS
@given(n=st.integers(2, 3), script=ops, rnd=shuffles)
def test_every_replica_converges_to_the_same_rollups_equal_to_the_rollups_from_scratch(
    n: int, script: list[tuple[int, ...]], rnd: random.Random
) -> None:
    replicas, deltas = simulate(n, script)
    for replica in replicas:
        pending = list(deltas)
        rnd.shuffle(pending)
        for delta in pending:
            replica.apply(delta)
    first = replicas[0]
    forgets = {s: first.user(s).erased.hlc for s in (*USERS, *TEAMS)}
    direct = {g: members(first.user(g), forgets) for g in (*TEAMS, ORG)}
    models = {u: first.model(u) for u in USERS}
    for group in (*TEAMS, ORG):
        expected = compute_rollup(group, direct, models)
        for replica in replicas:
            assert replica.groups.rollup(group) == expected
            assert replica.user(group) == first.user(group)


def test_a_forget_merged_before_the_add_it_erases_keeps_the_user_out() -> None:
    a, b = Replica("a.1"), Replica("b.1")
    user, team = USERS[0], TEAMS[0]
    a.apply(observe_delta(a.user(user), observation("a.1", 1, ms=BASE_MS)))
    add = add_delta(b.user(team), user, "b.1", pack(BASE_MS + 1), "op")  # b, concurrently
    b.apply(add)
    forget = erase_delta(a.user(user), "a.1", pack(BASE_MS + 2))
    a.apply(forget)
    a.apply(add)  # the add arrives after the forget, on the node that forgot
    b.apply(forget)
    for replica in (a, b):
        assert replica.groups.rollup(team).users == 0
    rejoin = add_delta(b.user(team), user, "b.1", pack(BASE_MS + 3), "op")
    for replica in (a, b):
        replica.apply(rejoin)
        assert replica.groups.rollup(team).users == 1


def test_forgetting_a_team_empties_it_and_takes_it_out_of_its_organization() -> None:
    groups = Groups(
        lambda u: [Belief("budget", "amount", "fifty", 0.9, (), (), False, 1, "weighted")]
    )
    team = TEAMS[0]
    team_state = merge_subject(
        SubjectState(team), add_delta(SubjectState(team), USERS[0], "a.1", pack(BASE_MS), "op")
    )
    groups.group_changed(team_state)
    groups.group_changed(add_delta(SubjectState(ORG), team, "a.1", pack(BASE_MS), "op"))
    assert groups.rollup(ORG).users == 1
    forget = erase_delta(team_state, "a.1", pack(BASE_MS + 1))
    assert groups.erased(team, pack(BASE_MS + 1)) == {ORG}
    assert groups.group_changed(merge_subject(team_state, forget)) == {team}
    assert (groups.rollup(ORG).users, groups.rollup(team).users) == (0, 0)
    assert groups.erased(team, pack(BASE_MS)) == frozenset()  # an older bound moves nothing
