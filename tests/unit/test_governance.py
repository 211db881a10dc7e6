"""Replicated governance: the settings as registers of the governance subject (their laws are
the subject CRDT's: sync.governance) and the book in force (node.governance)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.governance import (
    NO_SEED,
    Seed,
    book_in_force,
    check_reliability,
    check_setting,
    governed,
    in_force,
    reliability_register,
    setting_cleared,
    setting_register,
)
from node.policy import DAY_S, ContextPolicy, PolicyBook
from node.resolution import explain_slot
from sync.crdt import SubjectState, clear_delta, merge, observe_delta, slot_dots
from sync.governance import GOVERNANCE, Governance, decode, view
from sync.observation import Evidence, Observation
from tests.unit.strategies import ACTORS, LAWS, observation


class Node:
    """One replica of the governance subject, writing as node.engine.Engine.put does: a put
    supersedes what the node holds of the slot, a clear removes it; its clock passes every
    timestamp it merged."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.state = SubjectState(GOVERNANCE)
        self.clock = 0

    def _tick(self) -> int:
        seen = max((o.hlc for o in self.state.observations.values()), default=0)
        self.clock = max(self.clock, seen) + 1
        return self.clock

    def put(self, context: str, key: str, statement: str, by: str = "ops") -> SubjectState:
        dot = self.state.next_dot(self.actor)
        held = slot_dots(self.state, context, key)
        obs = Observation(dot, context, key, by, statement, 1.0, (), self._tick(), self.actor)
        return self.apply(observe_delta(self.state, obs, held))

    def clear(self, context: str, key: str) -> SubjectState:
        self._tick()
        return self.apply(clear_delta(self.state, self.actor, context, key))

    def apply(self, delta: SubjectState) -> SubjectState:
        self.state = merge(self.state, delta)
        return delta

    def set(self, context: str, name: str, value: object) -> SubjectState:
        return self.put(*setting_register(context, name, value))  # type: ignore[arg-type]

    def unset(self, context: str, name: str) -> SubjectState:
        return self.clear(*setting_cleared(context, name))


SLOTS = (("budget", "policy"), ("budget", "min_confidence"), ("*", "min_confidence"))
VALUES = {"policy": ("latest", "weighted"), "min_confidence": (0.2, 0.7, 0.9)}

steps = st.lists(
    st.tuples(
        st.sampled_from(("set", "set", "clear", "sync")),
        st.integers(0, 2),  # the node
        st.integers(0, 2),  # the slot, or the node it syncs with
        st.integers(0, 2),  # the value
    ),
    max_size=14,
)


@LAWS
@given(steps=steps, seed=st.integers(0, 2**16))
def test_every_node_shows_the_newest_set_no_clear_or_set_had_seen(
    steps: list[tuple[str, int, int, int]], seed: int
) -> None:
    nodes = [Node(a) for a in ACTORS[:3]]
    deltas: list[SubjectState] = []
    for op, n, i, v in steps:
        node = nodes[n]
        if op == "sync":
            node.apply(nodes[i].state)
            continue
        context, name = SLOTS[i]
        if op == "set":
            values = VALUES[name]
            deltas.append(node.set(context, name, values[v % len(values)]))
        else:
            deltas.append(node.unset(context, name))
    for node in nodes:  # every delta, in an order of its own
        order = list(deltas)
        random.Random(seed + hash(node.actor)).shuffle(order)
        for delta in order:
            node.apply(delta)
    views = [view(node.state) for node in nodes]
    assert views[0] == views[1] == views[2]
    removed = {dot for d in deltas for dot in d.context.dots() if dot not in d.observations}
    for context, name in SLOTS:
        key = setting_cleared(context, name)
        puts = [
            o
            for d in deltas
            for o in d.observations.values()
            if o.slot == key and o.dot not in removed
        ]
        newest = max(puts, key=lambda o: (o.hlc, o.dot), default=None)
        shown = views[0].settings.get((context, name))
        if newest is None:
            assert shown is None
        else:
            assert shown is not None and shown.dot == newest.dot
            assert shown.value == decode(newest.statement)


def test_of_two_concurrent_sets_the_later_by_timestamp_then_dot_wins_on_every_node() -> None:
    a, b = Node("a.1"), Node("b.1")
    first = a.set("budget", "policy", "latest")
    second = b.set("budget", "policy", "weighted")  # the same timestamp: b.1's dot is later
    a.apply(second)
    b.apply(first)
    assert view(a.state) == view(b.state)
    assert view(a.state).settings["budget", "policy"].value == "weighted"
    b.set("budget", "policy", "latest")  # after both: replaces both on every node
    a.apply(b.state)
    assert len(a.state.observations) == 1
    assert view(a.state).settings["budget", "policy"].value == "latest"


def test_a_clear_hands_the_setting_back_to_the_file_and_a_set_it_had_not_seen_survives() -> None:
    seed = Seed.from_config({"contexts": {"budget": {"min_confidence": 0.7}}})
    a, b = Node("a.1"), Node("b.1")
    b.apply(a.set("budget", "min_confidence", 0.4))
    assert book_in_force(seed, b.state).book.for_context("budget").min_confidence == 0.4
    unseen = a.set("budget", "min_confidence", 0.3)  # not yet on b
    cleared = b.unset("budget", "min_confidence")  # removes 0.4 only
    a.apply(cleared)
    b.apply(unseen)
    for node in (a, b):
        assert book_in_force(seed, node.state).book.for_context("budget").min_confidence == 0.3
    a.apply(b.unset("budget", "min_confidence"))
    for node in (a, b):
        assert book_in_force(seed, node.state).book.for_context("budget").min_confidence == 0.7
        assert not view(node.state).settings


def test_the_view_reads_reliability_and_the_default_context_and_skips_what_no_node_writes() -> None:
    a = Node("a.1")
    a.put(*reliability_register("bot", "budget", 0.2))
    a.put(*reliability_register("bot", "", 0.5))
    a.set("*", "evidence_discount", 0.3)
    a.put("budget", "max_observations", "{not json")
    a.put("budget", "min_confidence", "7.5")  # a value, but none check_setting lets through
    seen = view(a.state)
    assert {k: r.value for k, r in seen.reliability.items()} == {
        ("bot", "budget"): 0.2,
        ("bot", "*"): 0.5,
    }
    assert {k: r.value for k, r in seen.settings.items()} == {
        ("*", "evidence_discount"): 0.3,
        ("budget", "min_confidence"): 7.5,
    }
    book = book_in_force(NO_SEED, a.state).book  # the faulty value is left out, not fatal
    assert book.for_context("budget").min_confidence == ContextPolicy().min_confidence
    assert book.reliability_of("bot", "budget") == 0.2
    assert book.reliability_of("bot", "chat") == 0.5
    assert book.default.evidence_discount == 0.3


BUDGET = [  # two independent sources against a newer third
    observation("a.1", 1, source="sales_agent", statement="ten thousand", ms=1_000),
    observation(
        "a.1",
        2,
        source="support_agent",
        statement="ten thousand",
        ms=2_000,
        evidence=[Evidence("call", "crm://call/7")],
    ),
    observation("b.1", 1, source="bot", statement="fifty thousand", ms=3_000),
]


def _winner(book: PolicyBook) -> str:
    return explain_slot(BUDGET, book.for_context("budget"), book).belief.statement


def test_a_policy_set_on_one_node_changes_the_slot_on_every_node() -> None:
    a, b = Node("a.1"), Node("b.1")
    assert _winner(book_in_force(NO_SEED, a.state).book) == "ten thousand"  # weighted
    b.apply(a.set("budget", "policy", "latest"))
    for node in (a, b):
        assert _winner(book_in_force(NO_SEED, node.state).book) == "fifty thousand"


def test_the_file_fills_what_was_never_replicated_and_disagreements_are_reported() -> None:
    raw = {
        "default": {"min_confidence": 0.6, "half_life_days": 0},
        "contexts": {"budget": {"min_confidence": 0.7, "max_observations": 8}},
        "reliability": {"bot": {"budget": 0.5}, "sales_agent": 0.9},
    }
    seed = Seed.from_config(raw)
    a = Node("a.1")
    a.set("budget", "min_confidence", 0.4)
    a.set("*", "evidence_discount", 0.3)
    a.set("chat", "policy", "latest")
    a.put(*reliability_register("bot", "budget", 0.2))
    result = book_in_force(seed, a.state)
    budget = result.book.for_context("budget")
    assert (budget.min_confidence, budget.max_observations) == (0.4, 8)
    assert budget.evidence_discount == 0.3  # the replicated default under the file's context
    assert budget.half_life_s is None  # the file's default, never replicated
    chat = result.book.for_context("chat")
    assert (chat.policy, chat.min_confidence) == ("latest", 0.6)
    assert result.book.reliability_of("bot", "budget") == 0.2
    assert result.book.reliability_of("sales_agent", "chat") == 0.9
    assert [(d.kind, d.scope, d.file_value) for d in result.disagreements] == [
        ("setting", ("budget", "min_confidence"), 0.7),
        ("reliability", ("bot", "budget"), 0.5),
    ]
    assert "set by ops on a.1" in str(result.disagreements[0])
    # a node whose file agrees reports nothing; a cleared setting goes back to the file
    assert not book_in_force(NO_SEED, a.state).disagreements
    a.unset("budget", "min_confidence")
    assert book_in_force(seed, a.state).book.for_context("budget").min_confidence == 0.7
    assert len(book_in_force(seed, a.state).disagreements) == 1


def test_in_force_says_where_each_setting_comes_from() -> None:
    seed = Seed.from_config({"contexts": {"budget": {"min_confidence": 0.7}}})
    a = Node("a.1")
    a.set("budget", "policy", "latest")
    a.set("*", "evidence_discount", 0.3)
    a.put(*reliability_register("bot", "", 0.5))
    settings, reliability = in_force(seed, view(a.state))
    found = {s.scope: (s.value, s.origin, s.inherited) for s in settings}
    assert found["*", "evidence_discount"] == (0.3, "replicated", False)
    assert found["*", "policy"] == ("weighted", "default", False)
    assert found["budget", "policy"] == ("latest", "replicated", False)
    assert found["budget", "min_confidence"] == (0.7, "file", False)
    assert found["budget", "evidence_discount"] == (0.3, "replicated", True)
    assert found["budget", "max_observations"] == (32, "default", True)
    assert len(settings) == 10  # the default's five fields, then budget's
    assert [(r.scope, r.value, r.origin) for r in reliability] == [
        (("bot", "*"), 0.5, "replicated")
    ]
    assert reliability[0].register is not None and reliability[0].register.by == "ops"
    # every value in force is the book's
    book = book_in_force(seed, a.state).book
    for s in settings:
        context, name = s.scope
        policy = book.default if context == "*" else book.for_context(context)
        assert getattr(policy, name) == s.value


def test_a_seed_alone_gives_the_book_the_file_gives() -> None:
    raw = {
        "default": {"policy": "latest", "half_life_days": 30},
        "contexts": {"budget": {"min_confidence": 0.7}},
        "reliability": {"bot": 0.5},
    }
    assert governed(Seed.from_config(raw), Governance()).book == PolicyBook.from_config(raw)
    assert governed(NO_SEED, Governance()).book == PolicyBook()
    assert Seed.from_config(raw).settings["*", "half_life_s"] == 30 * DAY_S


@pytest.mark.parametrize(
    ("context", "name", "value", "says"),
    [
        ("budget", "policy", "newest", "policy: must be 'latest' or 'weighted'"),
        ("budget", "policy", None, "policy: must be set"),
        ("budget", "min_confidence", 1.5, r"min_confidence: must be within \[0, 1\], got 1.5"),
        ("budget", "min_confidence", float("nan"), "min_confidence: must be a finite number"),
        ("budget", "half_life_s", -1.0, "half_life_s: must be positive"),
        ("budget", "half_life_s", float("inf"), "half_life_s: must be a finite number"),
        ("budget", "max_observations", 0, "max_observations: must be at least"),
        ("budget", "max_observations", 2.5, "max_observations: must be a whole number"),
        ("budget", "evidence_discount", "x", "evidence_discount: must be a finite number"),
        ("budget", "colour", 1, "field: must be one of policy, min_confidence"),
        ("", "policy", "latest", "context: must name a context"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_field(
    context: str, name: str, value: object, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        check_setting(context, name, value)  # type: ignore[arg-type]


def test_a_setting_is_stored_in_its_field_type() -> None:
    assert check_setting("budget", "min_confidence", 1) == 1.0
    assert check_setting("budget", "half_life_s", 0) is None  # no decay, as in the file
    assert check_setting("budget", "max_observations", 8.0) == 8
    assert decode(setting_register("budget", "max_observations", 8.0)[2]) == 8


def test_a_reliability_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"reliability: must be a number within \[0, 1\]"):
        check_reliability("bot", 1.2)
    with pytest.raises(ValueError, match="source: must name a source"):
        check_reliability("", 0.2)
    assert reliability_register("bot", "", 0.2) == ("_reliability", "bot/_default", "0.2")


def test_a_file_value_of_the_wrong_type_is_refused_naming_where_it_is() -> None:
    with pytest.raises(ValueError, match=r"contexts\.budget\.min_confidence: must be a finite"):
        Seed.from_config({"contexts": {"budget": {"min_confidence": True}}})
