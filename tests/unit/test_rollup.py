"""Roll-ups (node.rollup): the incremental index always equals the from-scratch roll-up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.resolution import Belief
from node.rollup import (
    GroupRollup,
    Holder,
    RolledUp,
    RollupIndex,
    compute_rollup,
    select_rollup,
)
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import LAWS

T = "acme"
USERS = tuple(Subject(T, SubjectKind.USER, f"u{i}") for i in range(4))
TEAMS = tuple(Subject(T, SubjectKind.TEAM, f"t{i}") for i in range(3))
ORGS = tuple(Subject(T, SubjectKind.ORG, f"o{i}") for i in range(2))
SLOTS = (("budget", "amount"), ("channel", "pref"))
WORDINGS = ("ten thousand", "Ten thousand.", "fifty", "email")
CONFIDENCES = (0.3, 0.55, 0.8, 0.123457, 0.9)


def belief(context: str, key: str, statement: str, confidence: float, changed_ms: int) -> Belief:
    return Belief(
        context, key, statement, confidence, (), (), confidence < 0.5, changed_ms, "weighted"
    )


class Reference:
    """Membership and models as plain dictionaries: what compute_rollup reads."""

    def __init__(self) -> None:
        self.members: dict[Subject, set[Subject]] = {}
        self.models: dict[Subject, dict[tuple[str, str], Belief]] = {}

    def model(self, user: Subject) -> list[Belief]:
        return list(self.models.get(user, {}).values())

    def rollup(self, group: Subject) -> GroupRollup:
        return compute_rollup(
            group, self.members, {u: list(m.values()) for u, m in self.models.items()}
        )


# Each op: (kind, user, team, organization, slot, wording or none, confidence), by index.
KINDS = (
    *("join",) * 3,
    *("leave", "team joins", "team joins", "team leaves", "forget"),
    *("belief",) * 6,
)
Op = tuple[str, int, int, int, int, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, len(USERS) - 1),
        st.integers(0, len(TEAMS) - 1),
        st.integers(0, len(ORGS) - 1),
        st.integers(0, len(SLOTS) - 1),
        st.integers(0, len(WORDINGS)),
        st.integers(0, len(CONFIDENCES) - 1),
    ),
    min_size=20,
    max_size=60,
)


def _apply(index: RollupIndex, ref: Reference, op: Op, step: int) -> frozenset[Subject]:
    kind, u, t, o, s, w, c = op
    user, team, org = USERS[u], TEAMS[t], ORGS[o]
    match kind:
        case "join":
            ref.members.setdefault(team, set()).add(user)
            return index.add_member(team, user)
        case "leave":
            ref.members.setdefault(team, set()).discard(user)
            return index.remove_member(team, user)
        case "team joins":
            ref.members.setdefault(org, set()).add(team)
            return index.add_member(org, team)
        case "team leaves":
            ref.members.setdefault(org, set()).discard(team)
            return index.remove_member(org, team)
        case "forget":  # the user's model is forgotten with it
            for members in ref.members.values():
                members.discard(user)
            old = ref.model(user)
            ref.models.pop(user, None)
            return index.forget(user) | index.model_changed(user, old, [])
        case _:  # a belief changes, or goes
            context, key = SLOTS[s]
            old = ref.model(user)
            model = ref.models.setdefault(user, {})
            if w == len(WORDINGS):
                model.pop((context, key), None)
            else:
                model[context, key] = belief(context, key, WORDINGS[w], CONFIDENCES[c], step)
            return index.model_changed(user, old, ref.model(user))


@LAWS
@given(script=ops)
def test_the_incremental_rollup_always_equals_the_rollup_from_scratch(script: list[Op]) -> None:
    ref = Reference()
    index = RollupIndex(ref.model)
    for step, n in enumerate(script):
        before = {g: index.rollup(g) for g in (*TEAMS, *ORGS)}
        moved = _apply(index, ref, n, step)
        for group in (*TEAMS, *ORGS):
            expected = ref.rollup(group)
            assert index.rollup(group) == expected
            if expected != before[group]:
                assert group in moved  # a watch of every group whose roll-up moved fires
            for r in expected.beliefs:
                behind = index.holders(group, r.context, r.key, r.statement)
                assert len(behind) == r.holders
                assert all(
                    ref.models[h.user][r.context, r.key].confidence == h.confidence for h in behind
                )


T1, T2 = TEAMS[:2]
ORG = ORGS[0]
ANN, BOB, CID = USERS[:3]


def _index(models: dict[Subject, list[Belief]]) -> RollupIndex:
    return RollupIndex(lambda u: models.get(u, []))


def test_a_team_rollup_counts_holders_share_mean_confidence_and_newest_change() -> None:
    models = {
        ANN: [belief("budget", "amount", "Ten thousand.", 0.8, 100)],
        BOB: [belief("budget", "amount", "ten thousand", 0.6, 300)],
        CID: [belief("budget", "amount", "fifty", 0.9, 200)],
    }
    index = _index(models)
    for u in (ANN, BOB, CID, USERS[3]):
        index.add_member(T1, u)
    top, other = index.rollup(T1).beliefs
    assert (top.statement, top.holders, top.share, top.mean_confidence, top.changed_ms) == (
        "ten thousand",
        2,
        0.5,
        0.7,
        300,
    )
    assert (other.statement, other.holders, other.share) == ("fifty", 1, 0.25)
    assert index.holders(T1, "budget", "amount", "TEN THOUSAND") == (
        Holder(ANN, 0.8, 100),
        Holder(BOB, 0.6, 300),
    )


def test_a_reader_selects_rows_by_context_and_mean_confidence() -> None:
    models = {
        ANN: [
            belief("budget", "amount", "fifty", 0.8, 1),
            belief("channel", "pref", "email", 0.6, 1),
        ]
    }
    index = _index(models)
    index.add_member(T1, ANN)
    rollup = index.rollup(T1)
    assert [r.context for r in select_rollup(rollup, frozenset({"channel"})).beliefs] == ["channel"]
    assert [r.context for r in select_rollup(rollup, min_confidence=0.7).beliefs] == ["budget"]
    assert select_rollup(rollup).users == 1


def test_when_the_newest_holder_leaves_the_rollup_shows_the_next_newest() -> None:
    models = {
        ANN: [belief("budget", "amount", "Fifty", 0.8, 100)],
        BOB: [belief("budget", "amount", "fifty.", 0.6, 300)],
    }
    index = _index(models)
    index.add_member(T1, ANN)
    index.add_member(T1, BOB)
    assert (index.rollup(T1).beliefs[0].statement, index.rollup(T1).beliefs[0].changed_ms) == (
        "fifty.",
        300,
    )
    index.remove_member(T1, BOB)
    (only,) = index.rollup(T1).beliefs
    assert (only.statement, only.changed_ms, only.mean_confidence) == ("Fifty", 100, 0.8)


def test_an_uncertain_member_belief_is_not_rolled_up() -> None:
    index = _index({ANN: [belief("budget", "amount", "fifty", 0.4, 1)]})
    index.add_member(T1, ANN)
    assert index.rollup(T1).beliefs == ()
    assert index.rollup(T1).users == 1


def test_an_organization_counts_a_user_of_two_of_its_teams_once() -> None:
    index = _index({ANN: [belief("budget", "amount", "fifty", 0.8, 1)]})
    for team in (T1, T2):
        index.add_member(team, ANN)
        index.add_member(ORG, team)
    index.add_member(T2, BOB)
    rollup = index.rollup(ORG)
    assert rollup.users == 2
    assert [(r.holders, r.share) for r in rollup.beliefs] == [(1, 0.5)]
    assert index.remove_member(ORG, T1) == {ORG}  # ANN stays through T2: still counted
    assert index.rollup(ORG).beliefs[0].holders == 1


def test_a_belief_change_moves_every_group_of_the_user_and_no_other() -> None:
    models: dict[Subject, list[Belief]] = {}
    index = _index(models)
    index.add_member(T1, ANN)
    index.add_member(T2, BOB)
    index.add_member(ORG, T1)
    new = belief("budget", "amount", "fifty", 0.8, 5)
    assert index.slot_changed(ANN, "budget", "amount", new) == {T1, ORG}
    assert index.slot_changed(ANN, "budget", "amount", new) == frozenset()  # no move, no wake
    assert index.slot_changed(CID, "budget", "amount", new) == frozenset()  # in no group


def test_an_organization_takes_only_teams_and_a_team_only_users() -> None:
    index = _index({})
    with pytest.raises(ValueError, match="member: the members of a team are users"):
        index.add_member(T1, T2)
    with pytest.raises(ValueError, match="member: the members of an organization are teams"):
        index.add_member(ORG, ANN)


def test_the_roll_up_parts_kept_for_reads_stay_within_their_byte_bound() -> None:
    """A reader cycling filters (min_confidence 0.0001, 0.0002, ...) over a large roll-up keeps
    at most MAX_PART_BYTES of parts: the parts are a cache, never a reader's memory to grow."""
    from node.convert import Filter
    from node.groupreads import MAX_PART_BYTES, RollupReads

    team = TEAMS[0]
    rows = tuple(
        RolledUp("work", f"k{i}", f"s{i} " + "x" * 1900, 1, 1.0, 0.9, 1) for i in range(500)
    )
    rollup = GroupRollup(team, 1, rows)
    reads = RollupReads(lambda g: rollup, lambda *a: (), budget=1024 * 1024)
    size = len(reads.part(team, Filter()))
    assert size > 900_000
    for i in range(1, 2 * MAX_PART_BYTES // size + 2):
        assert len(reads.part(team, Filter(min_confidence=i / 10_000))) == size
    assert reads.kept_bytes() <= MAX_PART_BYTES
    assert reads.kept_bytes() >= MAX_PART_BYTES - size  # still a cache: the newest are kept
