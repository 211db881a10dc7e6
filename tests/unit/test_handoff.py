"""Which handoff positions a node refuses at once, and how many waits it holds (node.handoff)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import ResourceExhausted
from node.handoff import WaitSlots, implausible, node_of
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


def test_a_position_a_peer_may_yet_deliver_is_waited_for() -> None:
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


def test_waits_are_bounded_per_principal_and_per_node_and_released() -> None:
    slots = WaitSlots("sales", per_node=3, per_principal=2)
    a1, a2 = slots.acquire("token a"), slots.acquire("token a")
    with pytest.raises(ResourceExhausted, match="max_handoff_waits_per_principal = 2"):
        slots.acquire("token a")
    b1 = slots.acquire("token b")
    with pytest.raises(ResourceExhausted, match=r"\(setting max_handoff_waits = 3\)"):
        slots.acquire("token c")
    assert slots.held == 3
    a1()
    c1 = slots.acquire("token c")
    for release in (a2, b1, c1):
        release()
    assert slots.held == 0
    slots.acquire("token a"), slots.acquire("token a")
