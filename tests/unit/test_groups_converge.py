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
from sync.membership import GroupState, add_delta, forget_deltas, members, remove_delta
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
        self.groups = Groups(self.model)

    def user(self, user: Subject) -> SubjectState:
        return self.users.get(user) or SubjectState(user)

    def model(self, user: Subject) -> list[Belief]:
        return resolve(self.user(user).observations.values(), BOOK)

    def apply_user(self, delta: SubjectState) -> None:
        """What a node does after merging a user's delta."""
        user = delta.subject
        old = self.user(user)
        new = self.users[user] = merge_subject(old, delta)
        if new.erased.hlc > old.erased.hlc:
            self.groups.erased(user, new.erased.hlc)
        old_model = resolve(old.observations.values(), BOOK)
        self.groups.model_changed(user, old_model, self.model(user))

    def apply(self, delta: SubjectState | GroupState) -> None:
        if isinstance(delta, GroupState):
            self.groups.merge_group(delta)
        else:
            self.apply_user(delta)


_KINDS = (
    *("join",) * 3,
    *("leave", "team joins", "team leaves", "forget"),
    *("observe",) * 4,
    *("deliver",) * 4,
)


def simulate(
    n: int, script: list[tuple[int, ...]]
) -> tuple[list[Replica], list[SubjectState | GroupState]]:
    replicas = [Replica(a) for a in ACTORS[:n]]
    deltas: list[SubjectState | GroupState] = []
    for step, (kind, r, u, t, s, w, c) in enumerate(script):
        replica = replicas[r % n]
        actor, hlc = replica.actor, pack(BASE_MS + step)
        user, team = USERS[u % len(USERS)], TEAMS[t % len(TEAMS)]
        new: list[SubjectState | GroupState] = []
        match _KINDS[kind % len(_KINDS)]:
            case "join":
                new = [add_delta(replica.groups.state(team), user, actor, hlc)]
            case "leave":
                new = [remove_delta(replica.groups.state(team), user, actor)]
            case "team joins":
                new = [add_delta(replica.groups.state(ORG), team, actor, hlc)]
            case "team leaves":
                new = [remove_delta(replica.groups.state(ORG), team, actor)]
            case "forget":
                new = [erase_delta(replica.user(user), actor, hlc)]
                new += forget_deltas(replica.groups.states, user, actor)
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
    forgets = {u: first.user(u).erased.hlc for u in USERS}
    direct = {g: members(first.groups.state(g), forgets) for g in (*TEAMS, ORG)}
    models = {u: first.model(u) for u in USERS}
    for group in (*TEAMS, ORG):
        expected = compute_rollup(group, direct, models)
        for replica in replicas:
            assert replica.groups.rollup(group) == expected
            assert replica.groups.state(group) == first.groups.state(group)


def test_a_forget_merged_before_the_add_it_erases_keeps_the_user_out() -> None:
    a, b = Replica("a.1"), Replica("b.1")
    user, team = USERS[0], TEAMS[0]
    a.apply_user(observe_delta(a.user(user), observation("a.1", 1, ms=BASE_MS)))
    add = add_delta(b.groups.state(team), user, "b.1", pack(BASE_MS + 1))  # b, concurrently
    b.apply(add)
    forget = erase_delta(a.user(user), "a.1", pack(BASE_MS + 2))
    a.apply(forget)
    a.apply(add)  # the add arrives after the forget, on the node that forgot
    b.apply(forget)
    for replica in (a, b):
        assert replica.groups.rollup(team).users == 0
    rejoin = add_delta(b.groups.state(team), user, "b.1", pack(BASE_MS + 3))
    for replica in (a, b):
        replica.apply(rejoin)
        assert replica.groups.rollup(team).users == 1


def test_forgetting_a_team_empties_it_and_takes_it_out_of_its_organization() -> None:
    groups = Groups(
        lambda u: [Belief("budget", "amount", "fifty", 0.9, (), (), False, 1, "weighted")]
    )
    team = TEAMS[0]
    groups.merge_group(add_delta(GroupState(team), USERS[0], "a.1", pack(BASE_MS)))
    groups.merge_group(add_delta(GroupState(ORG), team, "a.1", pack(BASE_MS)))
    assert groups.rollup(ORG).users == 1
    assert groups.erased(team, pack(BASE_MS + 1)) == {team, ORG}
    assert (groups.rollup(ORG).users, groups.rollup(team).users) == (0, 0)
    assert groups.erased(team, pack(BASE_MS)) == frozenset()  # an older bound moves nothing
