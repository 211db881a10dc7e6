"""Replicated governance: the register laws (sync.governance) and the book in force
(node.governance)."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.governance import (
    NO_SEED,
    Seed,
    check_setting,
    governed,
    reliability_write,
    setting_clear,
    setting_write,
)
from node.policy import DAY_S, ContextPolicy, PolicyBook
from node.resolution import explain_slot
from sync.governance import Governance, Register, merge, reliability_delta, setting_delta
from sync.observation import Evidence
from tests.unit.strategies import ACTORS, LAWS, observation

KEYS = (("budget", "policy"), ("budget", "min_confidence"), ("*", "min_confidence"))
VALUES = ("latest", "weighted", 0.2, 0.7, None)

registers = st.builds(
    Register,
    st.integers(1, 4),  # few timestamps: concurrent writes meet often
    st.sampled_from(ACTORS[:2]),
    st.sampled_from(VALUES),
    st.sampled_from(("ops", "admin")),
    st.booleans(),
)
states = st.builds(
    Governance,
    st.dictionaries(st.sampled_from(KEYS), registers, max_size=3),
    st.dictionaries(st.sampled_from((("bot", "*"), ("bot", "budget"))), registers, max_size=2),
)


@LAWS
@given(a=states, b=states, c=states)
def test_merge_is_commutative_associative_and_idempotent(
    a: Governance, b: Governance, c: Governance
) -> None:
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, b).digest() == merge(b, a).digest()


@LAWS
@given(writes=st.lists(st.tuples(st.sampled_from(KEYS), registers), max_size=8), data=st.data())
def test_every_merge_order_keeps_the_latest_write_of_each_setting(
    writes: list[tuple[tuple[str, str], Register]], data: st.DataObject
) -> None:
    deltas = [setting_delta(k[0], k[1], r) for k, r in writes]
    order = data.draw(st.permutations(deltas))
    state = reduce(merge, order, Governance())
    for key in {k for k, _ in writes}:
        latest = max((r for k, r in writes if k == key), key=Register.order)
        assert state.settings[key] == latest


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
    on_a, on_b = Governance(), Governance()
    assert _winner(governed(NO_SEED, on_a).book) == "ten thousand"  # weighted by default
    delta = setting_write("budget", "policy", "latest", 10, "a.1", "ops")
    on_a = merge(on_a, delta)
    on_b = merge(on_b, delta)
    for state in (on_a, on_b):
        assert _winner(governed(NO_SEED, state).book) == "fifty thousand"


def test_two_concurrent_policy_changes_resolve_the_same_way_everywhere() -> None:
    first = setting_write("budget", "policy", "latest", 10, "a.1", "ops")
    second = setting_write("budget", "policy", "weighted", 10, "b.1", "admin")  # same instant
    on_a = merge(merge(Governance(), first), second)
    on_b = merge(merge(Governance(), second), first)
    assert on_a == on_b
    assert on_a.settings["budget", "policy"].by == "admin"  # replica b.1 > a.1 breaks the tie
    assert _winner(governed(NO_SEED, on_a).book) == _winner(governed(NO_SEED, on_b).book)


def test_the_file_fills_what_was_never_replicated_and_disagreements_are_reported() -> None:
    raw = {
        "default": {"min_confidence": 0.6, "half_life_days": 0},
        "contexts": {"budget": {"min_confidence": 0.7, "max_observations": 8}},
        "reliability": {"bot": {"budget": 0.5}, "sales_agent": 0.9},
    }
    seed = Seed.from_config(raw)
    state = reduce(
        merge,
        [
            setting_write("budget", "min_confidence", 0.4, 5, "a.1", "ops"),
            setting_write("*", "evidence_discount", 0.3, 6, "a.1", "ops"),
            setting_write("chat", "policy", "latest", 7, "b.1", "ops"),
            reliability_write("bot", "budget", 0.2, 8, "b.1", "ops"),
        ],
    )
    result = governed(seed, state)
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
    assert not governed(NO_SEED, state).disagreements
    cleared = merge(state, setting_clear("budget", "min_confidence", 9, "b.1", "ops"))
    assert governed(seed, cleared).book.for_context("budget").min_confidence == 0.7
    assert len(governed(seed, cleared).disagreements) == 1


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
        ("budget", "policy", "newest", "policy: policy must be 'latest' or 'weighted'"),
        ("budget", "min_confidence", 1.5, "min_confidence: min_confidence must be within"),
        ("budget", "half_life_s", -1.0, "half_life_s: half_life_s must be positive"),
        ("budget", "max_observations", 0, "max_observations: max_observations must be at least"),
        ("budget", "evidence_discount", "x", "evidence_discount: could not convert"),
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
    assert ContextPolicy(max_observations=8) == ContextPolicy(max_observations=8)


def test_a_reliability_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"reliability: must be a number within \[0, 1\]"):
        reliability_write("bot", "budget", 1.2, 1, "a.1", "ops")
    with pytest.raises(ValueError, match="source: must name a source"):
        reliability_write("", "budget", 0.2, 1, "a.1", "ops")
    delta = reliability_write("bot", "", 0.2, 1, "a.1", "ops")
    assert delta == reliability_delta("bot", "*", Register(1, "a.1", 0.2, "ops"))
