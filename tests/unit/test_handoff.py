"""Which handoff positions a node refuses at once, which dot it names as pending, and how soon it
tells a pending read to ask again (node.handoff)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import HandoffPending, InvalidArgument, Reason
from node.handoff import (
    MAX_RETRY_S,
    MIN_RETRY_S,
    DeliveryDelays,
    Handoffs,
    Missing,
    implausible,
    missing,
    node_of,
)
from sync.causal import CausalContext, Dot
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

SUBJECT = Subject("acme", SubjectKind.USER, "u-1")
ME = "sales.3.aaaaaaaa"
PEER = "support.1.bbbbbbbb"
MEMBERS = {"sales", "support"}


def state(**counters: int) -> SubjectState:
    vector = {actor.replace("_", "."): n for actor, n in counters.items()}
    return SubjectState(SUBJECT, context=CausalContext(vector))


def judge(local: SubjectState, vector: dict[str, int], lead: int = 100) -> str:
    return implausible(local, CausalContext(vector), actor=ME, members=MEMBERS, lead=lead) or ""


def test_an_actor_is_named_by_its_node() -> None:
    assert node_of("sales.3.aaaaaaaa") == "sales"
    assert node_of("eu.sales.3.aaaaaaaa") == "eu.sales"
    assert node_of("sales") is None and node_of(".3.a") is None


def test_a_position_a_peer_may_yet_deliver_is_not_refused() -> None:
    local = state(**{"sales_3_aaaaaaaa": 5})
    assert judge(local, {ME: 5, PEER: 100}) == ""  # a peer's dots within the lead
    assert judge(local, {"sales.2.cccccccc": 7}) == ""  # an earlier run of this node
    assert judge(local, {PEER: 1}) == ""  # a peer's erase: one dot like any other event


def test_an_actor_of_no_node_of_the_cluster_is_refused_unless_already_seen() -> None:
    assert "of no node of this cluster" in judge(state(), {"mallory.1.00000000": 1})
    assert "of no node of this cluster" in judge(state(), {"no-dots-here": 1})
    seen = state(**{"gone_1_dddddddd": 4})  # a former member's actor, still in the context
    assert judge(seen, {"gone.1.dddddddd": 6}) == ""


def test_a_dot_of_this_runs_actor_beyond_its_own_writes_is_refused() -> None:
    local = state(**{"sales_3_aaaaaaaa": 5})
    assert "has issued only up to 5" in judge(local, {ME: 6})
    assert "has issued only up to 0" in judge(state(), {ME: 1})


def test_a_counter_far_past_what_the_node_holds_is_refused() -> None:
    local = state(**{"support_1_bbbbbbbb": 50})
    assert judge(local, {PEER: 150}) == ""
    assert "more than 100 past the 50" in judge(local, {PEER: 151})
    assert "max_handoff_lead" in judge(local, {PEER: 10**9})


def test_cloud_dots_count_as_the_actor_counters_they_are() -> None:
    local = SubjectState(SUBJECT, context=CausalContext({}, frozenset([Dot(PEER, 80)])))
    assert judge(local, {PEER: 180}) == ""
    far = CausalContext({}, frozenset([Dot(PEER, 181)]))
    assert implausible(local, far, actor=ME, members=MEMBERS, lead=100)


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_whatever_the_node_holds_is_never_refused(have: int, asked: int) -> None:
    local = state(**{"support_1_bbbbbbbb": have, "sales_3_aaaaaaaa": have})
    if asked <= have:
        assert judge(local, {PEER: asked, ME: asked}) == ""


def test_the_first_missing_dot_is_named_with_what_the_node_holds_of_its_actor() -> None:
    local = state(**{"sales_3_aaaaaaaa": 5, "support_1_bbbbbbbb": 7})
    assert missing(local, CausalContext({ME: 5, PEER: 7})) is None
    assert missing(local, CausalContext({ME: 4, PEER: 9})) == Missing(PEER, 9, 7)
    assert missing(local, CausalContext({"a.1.x": 1, PEER: 9})) == Missing("a.1.x", 1, 0)
    # A cloud dot beyond a gap is missing although the actor's top counter is higher.
    gap = SubjectState(SUBJECT, context=CausalContext({PEER: 3}, frozenset([Dot(PEER, 9)])))
    assert missing(gap, CausalContext({PEER: 9})) == Missing(PEER, 9, 9)
    assert missing(gap, CausalContext({}, frozenset([Dot(PEER, 9)]))) is None
    assert missing(gap, CausalContext({}, frozenset([Dot(PEER, 5)]))) == Missing(PEER, 5, 9)


@given(st.integers(0, 50), st.integers(0, 50))
def test_a_position_is_missing_exactly_when_the_state_does_not_cover_it(
    have: int, asked: int
) -> None:
    local = state(**{"support_1_bbbbbbbb": have})
    position = CausalContext({PEER: asked})
    assert (missing(local, position) is None) == local.covers(position)


def test_a_pending_read_is_told_to_wait_about_as_long_as_the_peers_deltas_take() -> None:
    delays = DeliveryDelays(weight=0.5)
    assert delays.retry_after_s(PEER) == 2 * MIN_RETRY_S  # never heard from
    delays.note("support", 0.040)
    assert delays.retry_after_s(PEER) == 0.040
    delays.note("support", 0.020)
    assert abs(delays.retry_after_s(PEER) - 0.030) < 1e-9  # a moving average
    delays.note("sales", 0.0)
    assert delays.retry_after_s(ME) == MIN_RETRY_S  # never below the floor
    delays.note("sales", 60.0)
    delays.note("sales", 60.0)
    assert delays.retry_after_s(ME) <= MAX_RETRY_S  # nor above the ceiling
    assert delays.retry_after_s("not-an-actor") == 2 * MIN_RETRY_S


# -- a read of a team or an organization (Handoffs.require_group) --------------------------

TEAM = Subject("acme", SubjectKind.TEAM, "t-1")
MEMBER = Subject("acme", SubjectKind.USER, "u-1")
STRANGER = Subject("acme", SubjectKind.USER, "u-9")
FOREIGN = Subject("globex", SubjectKind.USER, "u-1")


def of(subject: Subject, n: int) -> SubjectState:
    return SubjectState(subject, context=CausalContext({PEER: n} if n else {}))


def group_read(
    positions: dict[Subject, int], held: dict[Subject, int], members: frozenset[Subject]
) -> list[Subject]:
    """``require_group`` of TEAM on a node holding ``held`` (counters of PEER per subject),
    whose roll-up has ``members``; records each subject whose state it read."""
    loaded: list[Subject] = []

    def load(subject: Subject) -> SubjectState:
        loaded.append(subject)
        return of(subject, held.get(subject, 0))

    token = {s: CausalContext({PEER: n}) for s, n in positions.items()}
    checked = Handoffs("sales", frozenset(MEMBERS)).require_group(
        of(TEAM, held.get(TEAM, 0)), token, ME, lambda: members, load
    )
    assert set(loaded) <= members  # only members' states are read
    return checked


def test_a_group_read_waits_for_its_members_positions_and_its_own() -> None:
    members = frozenset({MEMBER})
    assert group_read({MEMBER: 2}, {MEMBER: 2}, members) == [MEMBER]
    assert group_read({TEAM: 1, MEMBER: 2}, {TEAM: 1, MEMBER: 3}, members) == [TEAM, MEMBER]
    with pytest.raises(HandoffPending) as pending:
        group_read({MEMBER: 3}, {MEMBER: 2}, members)
    assert pending.value.metadata["subject"] == str(MEMBER)
    assert pending.value.retry_after_s is not None
    with pytest.raises(HandoffPending) as pending:  # the group's position first: it may add
        group_read({TEAM: 2, MEMBER: 3}, {TEAM: 1}, frozenset())
    assert pending.value.metadata["subject"] == str(TEAM)


def test_a_group_read_ignores_other_subjects_and_refuses_a_token_of_none_of_its_own() -> None:
    members = frozenset({MEMBER})
    assert group_read({MEMBER: 1, STRANGER: 50, FOREIGN: 50}, {MEMBER: 1}, members) == [MEMBER]
    for token in ({STRANGER: 1}, {FOREIGN: 1}, {FOREIGN: 1, STRANGER: 1}):
        with pytest.raises(InvalidArgument) as refused:
            group_read(token, {MEMBER: 1}, members)
        assert refused.value.reason == Reason.HANDOFF_TOKEN_OTHER_SUBJECT
        assert "or of a member of it on this node" in str(refused.value)


def test_a_foreign_subject_is_refused_alike_whatever_the_node_holds_of_it() -> None:
    """A token naming only another tenant's subject gets the same answer whether or not the
    node holds it, or makes it a member (it cannot): nothing of it is read."""
    answers = set()
    for held, members in (({}, frozenset()), ({FOREIGN: 5}, frozenset({FOREIGN}))):
        with pytest.raises(InvalidArgument) as refused:
            group_read({FOREIGN: 3}, held, members)
        answers.add((str(refused.value), tuple(sorted(refused.value.metadata.items()))))
    assert len(answers) == 1


def test_a_subject_read_still_refuses_a_token_that_does_not_name_it() -> None:
    with pytest.raises(InvalidArgument) as refused:
        Handoffs("sales", frozenset(MEMBERS)).require(
            of(TEAM, 0), {MEMBER: CausalContext({PEER: 1})}, ME
        )
    assert refused.value.reason == Reason.HANDOFF_TOKEN_OTHER_SUBJECT
