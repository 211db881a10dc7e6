"""Learned reliability (node.reliability): bounds, monotonicity, determinism, and a contradicted
source that stops winning."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.policy import PolicyBook
from node.reliability import (
    Learned,
    LearningSettings,
    Outcome,
    learn,
    learned_book,
    outcomes_of_slot,
    weight,
)
from node.resolution import explain_slot
from sync.causal import Dot
from sync.observation import Evidence, Observation
from tests.unit.strategies import BASE_MS, VALUES, observation, shuffles

settings_ = st.builds(
    LearningSettings,
    st.integers(1, 12),
    st.floats(0.1, 10),
    st.floats(0.1, 10),
    st.floats(0.01, 0.5),
    st.floats(0.5, 1.0),
)


@st.composite
def histories(draw: st.DrawFn) -> list[Outcome]:
    """One source's outcomes in one context, at distinct timestamps."""
    agreed = draw(st.lists(st.booleans(), max_size=20))
    return [
        Outcome("bot", "budget", a, 10 * (i + 1), Dot("a.1", i + 1)) for i, a in enumerate(agreed)
    ]


def _weight(outcomes: list[Outcome], settings: LearningSettings) -> float:
    found = learn(outcomes, settings)
    return found["bot", "budget"].weight if found else weight(0, 0, settings)


@VALUES
@given(agreed=st.integers(0, 1000), extra=st.integers(0, 1000), settings=settings_)
def test_a_weight_stays_within_floor_and_ceiling(
    agreed: int, extra: int, settings: LearningSettings
) -> None:
    w = weight(agreed, agreed + extra, settings)
    assert settings.floor <= w <= settings.ceiling


@VALUES
@given(history=histories(), settings=settings_, data=st.data())
def test_agreeing_more_never_lowers_the_weight(
    history: list[Outcome], settings: LearningSettings, data: st.DataObject
) -> None:
    before = _weight(history, settings)
    assert settings.floor <= before <= settings.ceiling
    if history:  # one disagreement turned into an agreement
        i = data.draw(st.integers(0, len(history) - 1))
        flipped = [*history[:i], history[i]._replace(agreed=True), *history[i + 1 :]]
        assert _weight(flipped, settings) >= before
    newest = 10 * (len(history) + 1)
    agree = Outcome("bot", "budget", True, newest, Dot("a.1", len(history) + 1))
    assert _weight([*history, agree], settings) >= before
    assert _weight([*history, agree._replace(agreed=False)], settings) <= before


@VALUES
@given(history=histories(), rnd=shuffles)
def test_the_weights_are_the_same_whatever_order_the_outcomes_come_in(
    history: list[Outcome], rnd: random.Random
) -> None:
    others = [o._replace(source="sales_agent", agreed=not o.agreed) for o in history]
    outcomes = history + others
    shuffled = list(outcomes)
    rnd.shuffle(shuffled)
    assert learn(outcomes, LearningSettings(window=5)) == learn(
        shuffled, LearningSettings(window=5)
    )


def test_the_formula() -> None:
    s = LearningSettings(window=10, prior_agree=4, prior_disagree=1, floor=0.1, ceiling=1.0)
    assert weight(0, 0, s) == 1.0  # never judged: full trust
    assert weight(0, 5, s) == pytest.approx((4 / 10) / 0.8)  # 0.5
    assert weight(0, 1000, s) == 0.1  # the floor
    assert weight(1000, 1000, s) == 1.0  # the ceiling
    found = learn([Outcome("bot", "budget", i % 4 == 0, i, Dot("a.1", i)) for i in range(1, 21)], s)
    # the newest 10 (11..20) hold 3 agreements (12, 16, 20)
    assert found["bot", "budget"] == Learned("bot", "budget", weight(3, 10, s), 3, 10)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"window": 0}, "window: must be at least 1"),
        ({"prior_agree": 0}, "prior_agree, prior_disagree: must be positive"),
        ({"floor": 0}, "floor, ceiling: must satisfy 0 < floor <= ceiling <= 1"),
        ({"floor": 0.5, "ceiling": 0.4}, "floor, ceiling"),
        ({"ceiling": 1.5}, "floor, ceiling"),
    ],
)
def test_bad_learning_settings_are_refused_naming_them(kwargs: dict[str, float], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        LearningSettings(**kwargs)  # type: ignore[arg-type]


def _slot(subject: int, bot_says: str) -> list[Observation]:
    """One subject's budget slot: two agreeing agents with their own evidence, and the bot."""
    base = 1_000 * subject
    return [
        observation(
            "a.1",
            3 * subject + 1,
            source="sales_agent",
            ms=base,
            evidence=[Evidence("m", f"s{subject}")],
        ),
        observation(
            "a.1",
            3 * subject + 2,
            source="support_agent",
            ms=base + 1,
            evidence=[Evidence("m", f"t{subject}")],
        ),
        observation(
            "a.1", 3 * subject + 3, source="bot", statement=bot_says, ms=base + 2, confidence=0.9
        ),
    ]


def test_a_source_contradicted_by_the_others_loses_weight_until_it_no_longer_wins() -> None:
    book = PolicyBook()
    policy = book.for_context("budget")
    # the bot, newest and surest, against one other source: it wins on trust alone
    contested = [
        observation("b.1", 1, source="sales_agent", confidence=0.7, ms=10**7),
        observation(
            "b.1", 2, source="bot", statement="fifty thousand", confidence=0.9, ms=10**7 + 1
        ),
    ]
    assert explain_slot(contested, policy, book).belief.statement == "fifty thousand"
    outcomes = [
        o for s in range(1, 40) for o in outcomes_of_slot(_slot(s, "fifty thousand"), policy, book)
    ]
    assert {(o.source, o.agreed) for o in outcomes} == {
        ("bot", False),
        ("sales_agent", True),
        ("support_agent", True),
    }
    settings = LearningSettings(window=20)
    found = learn(outcomes, settings)
    assert found["bot", "budget"].weight == weight(0, 20, settings)
    assert settings.floor < found["bot", "budget"].weight < 0.7  # lower, never zero
    assert found["sales_agent", "budget"].weight == 1.0
    learned = learned_book(book, found)
    assert explain_slot(contested, policy, learned).belief.statement == "ten thousand"
    # two nodes with the same outcomes (any order) learn the same weights
    assert learn(list(reversed(outcomes)), settings) == found


def test_a_slot_with_one_source_or_an_uncertain_consensus_judges_nothing() -> None:
    book = PolicyBook()
    policy = book.for_context("budget")
    assert outcomes_of_slot([observation(source="bot")], policy, book) == []
    weak = [
        observation("a.1", 1, source="sales_agent", confidence=0.3),
        observation(
            "a.1", 2, source="bot", statement="fifty thousand", confidence=0.4, ms=BASE_MS + 2
        ),
    ]
    assert outcomes_of_slot(weak, policy, book) == []
    sure = [weak[0], weak[1]._replace(confidence=0.9)]
    assert [(o.source, o.agreed) for o in outcomes_of_slot(sure, policy, book)] == [
        ("bot", True),
        ("sales_agent", False),
    ]


def test_the_learned_weight_multiplies_the_operators_reliability() -> None:
    book = PolicyBook(reliability={("bot", "*"): 0.5})
    learned = learned_book(book, {("bot", "budget"): Learned("bot", "budget", 0.4, 0, 9)})
    assert learned.reliability_of("bot", "budget") == pytest.approx(0.2)
    assert learned.reliability_of("bot", "chat") == 0.5
