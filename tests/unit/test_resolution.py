"""Resolution of a slot into one belief: deterministic, governed by policy, and explainable."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from node.policy import DAY_S, ContextPolicy, PolicyBook
from node.resolution import (
    Belief,
    Support,
    evidence_factor,
    explain_slot,
    normalize_statement,
    recency,
    resolve,
)
from sync.causal import CausalContext
from sync.hlc import physical_ms
from sync.observation import Evidence, Observation
from tests.unit.strategies import (
    VALUES,
    Run,
    fold,
    observation,
    runs,
    shuffles,
    subject_runs,
)

NOW = 1_700_000_000_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEIGHTED = PolicyBook()
NO_DECAY = PolicyBook(default=ContextPolicy(half_life_s=None))


def ev(n: int) -> tuple[Evidence, ...]:
    return tuple(Evidence("message", f"crm://msg/{i}") for i in range(n))


def belief_of(obs: list[Observation], book: PolicyBook = WEIGHTED) -> Belief:
    (belief,) = resolve(obs, book)
    return belief


# --- determinism ------------------------------------------------------------------------------

_statements = ["Ten.", "ten", "  TEN!", "twenty", "Twenty  thousand", "twenty thousand."]


@st.composite
def slot_observations(draw: st.DrawFn) -> list[Observation]:
    """Observations of up to four slots, with tied clocks and statements that differ in case."""
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        out.append(
            observation(
                draw(st.sampled_from(["a.1", "b.1", "c.1"])),
                i + 1,
                context=draw(st.sampled_from(["budget", "style"])),
                key=draw(st.sampled_from(["amount", "owner"])),
                source=draw(st.sampled_from(["sales_agent", "support_agent", "bot"])),
                statement=draw(st.sampled_from(_statements)),
                confidence=draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(0, 1)),
                ms=NOW - draw(st.sampled_from([0, HOUR_MS, 30 * DAY_MS]) | st.integers(0, DAY_MS)),
                logical=draw(st.integers(0, 2)),
                evidence=ev(draw(st.integers(0, 3))),
            )
        )
    return out


books = st.builds(
    PolicyBook,
    default=st.builds(
        ContextPolicy,
        policy=st.sampled_from(["latest", "weighted"]),
        min_confidence=st.sampled_from([0.0, 0.5, 0.9]),
        half_life_s=st.sampled_from([None, 7 * DAY_S]),
        max_observations=st.integers(1, 5),
    ),
    contexts=st.just({"style": ContextPolicy(policy="latest")}),
    reliability=st.sampled_from([{}, {("bot", "*"): 0.2, ("sales_agent", "budget"): 0.9}]),
)


@VALUES
@given(obs=slot_observations(), book=books, rnd=shuffles)
def test_any_permutation_of_the_same_observations_gives_the_same_beliefs(
    obs: list[Observation], book: PolicyBook, rnd: random.Random
) -> None:
    shuffled = list(obs)
    rnd.shuffle(shuffled)
    assert resolve(shuffled, book) == resolve(obs, book)
    slot = [o for o in obs if o.slot == obs[0].slot]
    shuffled_slot = [o for o in shuffled if o.slot == obs[0].slot]
    policy = book.for_context(obs[0].context)
    assert explain_slot(shuffled_slot, policy, book) == explain_slot(slot, policy, book)


@VALUES
@given(obs=slot_observations(), book=books)
def test_a_belief_accounts_for_each_kept_observation_once(
    obs: list[Observation], book: PolicyBook
) -> None:
    slot = [o for o in obs if o.slot == obs[0].slot]
    policy = book.for_context(obs[0].context)
    explanation = explain_slot(slot, policy, book)
    belief = explanation.belief
    newest_first = sorted(slot, key=lambda o: (o.hlc, o.dot), reverse=True)
    current = [
        o
        for i, o in enumerate(newest_first)
        if o.source not in {p.source for p in newest_first[:i]}
    ]
    kept = current[: policy.max_observations]
    counted = [w.observation for w in explanation.observations if not w.superseded]
    assert counted == kept
    assert [w.observation for w in explanation.observations if w.superseded] == [
        o for o in newest_first if o not in current
    ]
    positions = [Support(o.source, o.statement, o.confidence, physical_ms(o.hlc)) for o in kept]
    assert sorted([*belief.supporters, *belief.dissenters], key=repr) == sorted(positions, key=repr)
    winner = normalize_statement(belief.statement)
    assert all(normalize_statement(p.statement) == winner for p in belief.supporters)
    assert all(normalize_statement(p.statement) != winner for p in belief.dissenters)
    assert 0.0 <= belief.confidence <= 1.0
    if policy.policy == "weighted":
        best = max(c.support for c in explanation.candidates)
        assert math.isclose(explanation.candidates[0].support, best)
        assert belief.confidence == round(best, 6)


def _has_tie(run: Run) -> bool:
    """Two actors' observations at one timestamp, both still held once everything merged."""
    held = list(fold(run.deltas).observations.values())
    return any(a.hlc == b.hlc and a.dot.actor != b.dot.actor for a in held for b in held)


def test_the_random_runs_hold_ties_several_contexts_and_several_subjects() -> None:
    """What the properties below rely on the strategies to produce, found by hypothesis."""
    search = settings(VALUES, max_examples=1000, phases=[Phase.generate])
    assert _has_tie(find(runs, _has_tie, settings=search))
    find(
        runs,
        lambda r: len({o.context for o in fold(r.deltas).observations.values()}) > 1,
        settings=search,
    )
    several = find(subject_runs(), lambda rs: all(r.deltas for r in rs), settings=search)
    assert len({r.replicas[0].subject for r in several}) == len(several) >= 2


@VALUES
@given(several=subject_runs(), rnd=shuffles)
def test_each_subject_resolves_from_its_own_deltas_whatever_else_arrives(
    several: list[Run], rnd: random.Random
) -> None:
    deltas = [d for run in several for d in run.deltas]
    rnd.shuffle(deltas)
    for run in several:
        subject = run.replicas[0].subject
        mine = fold((d for d in deltas if d.subject == subject), subject)
        expected = resolve(fold(run.deltas, subject).observations.values(), WEIGHTED)
        assert resolve(mine.observations.values(), WEIGHTED) == expected


@VALUES
@given(run=runs, rnd=shuffles)
def test_merging_deltas_in_any_order_then_resolving_gives_the_same_beliefs(
    run: Run, rnd: random.Random
) -> None:
    book = PolicyBook(contexts={"budget": ContextPolicy(max_observations=2)})
    deltas = list(run.deltas)
    rnd.shuffle(deltas)
    expected = resolve(fold(run.deltas).observations.values(), book)
    assert resolve(fold(deltas).observations.values(), book) == expected
    for replica in run.replicas:  # a replica that then receives everything agrees too
        rnd.shuffle(deltas)
        assert resolve(fold([replica, *deltas]).observations.values(), book) == expected


# --- normalization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Motivated by quick time-to-value.", "motivated  by quick\ttime-to-value"),
        ("TEN!", " ten "),
        ("Yes. .", "yes"),
        ("Great! !", "great"),
    ],
)
def test_statements_differing_in_case_whitespace_and_final_stops_are_the_same(
    a: str, b: str
) -> None:
    assert normalize_statement(a) == normalize_statement(b)


def test_statements_differing_in_words_are_different() -> None:
    assert normalize_statement("ten seats") != normalize_statement("tenseats")
    assert normalize_statement("e.g. ten") == "e.g. ten"


@VALUES
@given(st.text(st.sampled_from("aB .!\t\n-ßİ"), max_size=12) | st.text(max_size=12))
def test_normalizing_a_normalized_statement_changes_nothing(statement: str) -> None:
    once = normalize_statement(statement)
    assert normalize_statement(once) == once
    assert normalize_statement(f"  {statement.upper()}  .") == normalize_statement(
        statement.upper()
    )


# --- the seed scenarios -----------------------------------------------------------------------


def test_the_newer_more_confident_better_evidenced_source_wins_and_the_loser_dissents() -> None:
    older = observation(
        "a.1",
        1,
        key="team_size",
        source="sales_agent",
        statement="10 people",
        confidence=0.6,
        ms=NOW - 2 * DAY_MS,
        evidence=(),
    )
    newer = observation(
        "b.1",
        1,
        key="team_size",
        source="support_agent",
        statement="25 people",
        confidence=0.85,
        ms=NOW - HOUR_MS,
        evidence=ev(2),
    )
    for obs in ([older, newer], [newer, older]):
        belief = belief_of(obs)
        assert belief.statement == "25 people"
        assert belief.key == "team_size"
        assert not belief.uncertain
        assert belief.supporters == (Support("support_agent", "25 people", 0.85, NOW - HOUR_MS),)
        assert belief.dissenters == (Support("sales_agent", "10 people", 0.6, NOW - 2 * DAY_MS),)
        discount = ContextPolicy().evidence_discount
        expected = 0.85 * evidence_factor(2, discount)  # the newest of its slot: no decay
        assert belief.confidence == pytest.approx(expected, abs=1e-6)
        assert belief.changed_ms == NOW - HOUR_MS
        assert belief.policy == "weighted"


def test_a_belief_below_the_minimum_confidence_is_uncertain() -> None:
    low = observation(confidence=0.3)
    belief = belief_of([low])
    assert belief.statement == low.statement
    assert belief.uncertain
    assert not belief_of([observation(confidence=0.9, evidence=ev(3))]).uncertain
    strict = PolicyBook(contexts={"budget": ContextPolicy(min_confidence=0.95)})
    assert belief_of([observation(confidence=0.9, evidence=ev(3))], strict).uncertain
    assert "uncertain" in explain_slot([low], ContextPolicy(), WEIGHTED).reason


def test_a_belief_whose_weighted_support_falls_below_the_minimum_is_uncertain() -> None:
    """Each observation is above the minimum, but without evidence their support is not."""
    book = PolicyBook(default=ContextPolicy(min_confidence=0.5, half_life_s=None))
    bare = observation(confidence=0.52, evidence=())
    belief = belief_of([bare], book)
    assert belief.confidence < 0.5
    assert belief.uncertain
    latest = PolicyBook(default=ContextPolicy(policy="latest", min_confidence=0.5))
    # One definition under every policy: the same confidence, the same test against the minimum.
    assert belief_of([bare], latest).confidence == belief.confidence
    assert belief_of([bare], latest).uncertain


def test_an_observation_below_the_minimum_never_outweighs_one_above_it() -> None:
    """Kept for audit and shown as a dissenter, but not counted as fact."""
    sure = observation("a.1", 1, statement="ten", confidence=0.6, ms=NOW - DAY_MS)
    many_unsure = [
        observation("b.1", n, source=f"agent_{n}", statement="twenty", confidence=0.45, ms=NOW)
        for n in range(1, 6)
    ]
    for book in (WEIGHTED, PolicyBook(default=ContextPolicy(policy="latest"))):
        belief = belief_of([sure, *many_unsure], book)
        assert belief.statement == "ten"
        assert not belief.uncertain
        assert len(belief.dissenters) == 5


def test_latest_picks_the_newest_by_hybrid_clock() -> None:
    book = PolicyBook(contexts={"budget": ContextPolicy(policy="latest")})
    old = observation(
        "z.1", 9, source="bot", statement="10k", confidence=0.95, ms=NOW - DAY_MS, evidence=ev(3)
    )
    new = observation("a.1", 1, statement="20k", confidence=0.6, ms=NOW, evidence=())
    belief = belief_of([new, old], book)
    # Its confidence is its support, as under 'weighted': 0.6 without evidence.
    expected = round(0.6 * evidence_factor(0, ContextPolicy().evidence_discount), 6)
    assert (belief.statement, belief.confidence, belief.policy) == ("20k", expected, "latest")
    assert [p.source for p in belief.dissenters] == ["bot"]
    # Within one millisecond the logical counter orders them.
    first = observation("z.1", 9, statement="first", ms=NOW, logical=0)
    second = observation("a.1", 1, statement="second", ms=NOW, logical=1)
    assert belief_of([second, first], book).statement == "second"
    reason = explain_slot([new, old], book.for_context("budget"), book).reason
    assert "latest" in reason and "sales_agent" in reason


def test_a_tie_goes_to_the_newer_statement() -> None:
    old = observation("a.1", 2, source="sales_agent", statement="alpha", ms=NOW - DAY_MS)
    new = observation("b.1", 1, source="support_agent", statement="beta", ms=NOW)
    explanation = explain_slot([old, new], NO_DECAY.default, NO_DECAY)
    assert explanation.belief.statement == "beta"
    assert explanation.candidates[0].support == explanation.candidates[1].support
    assert "newer" in explanation.reason


@pytest.mark.parametrize("alpha_counter", [1, 2])
def test_a_tie_at_the_same_time_goes_to_the_lexically_smaller_statement(
    alpha_counter: int,
) -> None:
    # Compared as normalized: "alpha" < "beta", though "Beta" < "alpha" as raw strings.
    alpha = observation("a.1", alpha_counter, source="sales_agent", statement="alpha")
    beta = observation("a.1", 3 - alpha_counter, source="support_agent", statement="Beta")
    for obs in ([alpha, beta], [beta, alpha]):
        explanation = explain_slot(obs, NO_DECAY.default, NO_DECAY)
        assert explanation.belief.statement == "alpha"
        assert "lexically smaller" in explanation.reason


def test_recency_decay_lets_a_newer_contradiction_win() -> None:
    decaying = ContextPolicy(half_life_s=7 * DAY_S, min_confidence=0.3)  # both count
    book = PolicyBook(contexts={"budget": decaying})
    old = observation(
        "a.1", 1, source="sales_agent", statement="ten", confidence=0.7, ms=NOW - 7 * DAY_MS
    )
    new = observation("b.1", 1, source="bot", statement="twenty", confidence=0.7, ms=NOW)
    explanation = explain_slot([old, new], book.for_context("budget"), book)
    weights = {w.observation.statement: w for w in explanation.observations}
    assert weights["ten"].recency == pytest.approx(0.5)
    assert weights["twenty"].recency == 1.0
    assert weights["ten"].weight == pytest.approx(weights["twenty"].weight / 2)
    assert explanation.belief.statement == "twenty"
    assert explanation.candidates[0].support > explanation.candidates[1].support
    # Decay is what decides: a more confident old observation wins without it, loses with it.
    surer_old = observation("a.1", 1, statement="ten", confidence=0.8, ms=NOW - 30 * DAY_MS)
    assert belief_of([surer_old, new], NO_DECAY).statement == "ten"
    assert belief_of([surer_old, new], book).statement == "twenty"


def test_recency_never_rewards_a_timestamp_from_the_future() -> None:
    assert recency(-DAY_MS, 7 * DAY_S) == 1.0
    assert recency(0, 7 * DAY_S) == 1.0
    assert recency(14 * DAY_MS, 7 * DAY_S) == pytest.approx(0.25)
    assert recency(10**9, None) == 1.0


def test_evidence_raises_an_observations_weight() -> None:
    assert evidence_factor(0, 0.25) == 0.75
    assert evidence_factor(1, 0.25) == 0.875
    assert evidence_factor(0, 0.0) == 1.0
    bare = observation("a.1", 1, statement="ten", confidence=0.7, evidence=())
    backed = observation(
        "b.1", 1, source="bot", statement="twenty", confidence=0.7, ms=NOW - 1, evidence=ev(2)
    )
    assert belief_of([bare, backed], NO_DECAY).statement == "twenty"


def test_reliability_from_the_policy_book_lowers_a_sources_weight() -> None:
    bot = observation("a.1", 1, source="bot", statement="enterprise", confidence=0.9)
    human = observation("b.1", 1, source="sales_agent", statement="startup", confidence=0.6)
    assert belief_of([bot, human]).statement == "enterprise"
    for reliability in ({("bot", "budget"): 0.2}, {("bot", "*"): 0.2}):
        book = PolicyBook(reliability=reliability)
        explanation = explain_slot([bot, human], book.default, book)
        (weighted_bot,) = (w for w in explanation.observations if w.observation.source == "bot")
        assert weighted_bot.reliability == 0.2
        expected = 0.9 * 0.2 * weighted_bot.recency * weighted_bot.evidence_factor
        assert weighted_bot.weight == pytest.approx(expected)
        assert explanation.belief.statement == "startup"
    # A context's own reliability overrides the source's default one.
    book = PolicyBook(reliability={("bot", "*"): 0.2, ("bot", "budget"): 1.0})
    assert belief_of([bot, human], book).statement == "enterprise"


def test_only_the_newest_observations_of_a_slot_count() -> None:
    oldest = observation(
        "a.1",
        1,
        source="bot",
        statement="huge",
        confidence=0.99,
        ms=NOW - 3 * HOUR_MS,
        evidence=ev(3),
    )
    middle = observation(
        "b.1", 1, source="sales_agent", statement="small", confidence=0.6, ms=NOW - 2 * HOUR_MS
    )
    newest = observation(
        "c.1", 1, source="support_agent", statement="medium", confidence=0.55, ms=NOW - HOUR_MS
    )
    assert belief_of([oldest, middle, newest]).statement == "huge"
    book = PolicyBook(contexts={"budget": ContextPolicy(max_observations=2)})
    explanation = explain_slot([oldest, newest, middle], book.for_context("budget"), book)
    assert [w.observation for w in explanation.observations] == [newest, middle]
    belief = explanation.belief
    assert belief.statement == "small"
    assert "bot" not in {p.source for p in (*belief.supporters, *belief.dissenters)}


def test_the_explanation_lists_every_observation_its_weight_and_why_the_winner_won() -> None:
    obs = [
        observation(
            "a.1",
            1,
            source="sales_agent",
            statement="Quick time-to-value",
            confidence=0.8,
            ms=NOW - 10 * DAY_MS,
            evidence=ev(1),
            origin="sales",
        ),
        observation(
            "b.1",
            4,
            source="support_agent",
            statement="quick time-to-value.",
            confidence=0.7,
            ms=NOW - DAY_MS,
            evidence=ev(0),
            origin="support",
        ),
        observation(
            "c.1",
            2,
            source="bot",
            statement="Lowest price",
            confidence=0.9,
            ms=NOW - 2 * DAY_MS,
            evidence=ev(2),
            origin="billing",
        ),
    ]
    explanation = explain_slot(obs, ContextPolicy(), WEIGHTED)
    assert {w.observation.dot for w in explanation.observations} == {o.dot for o in obs}
    for w in explanation.observations:
        o = w.observation
        assert w.reliability == 1.0
        # relative to the slot's newest observation (support_agent's, a day before NOW)
        assert w.recency == pytest.approx(recency(NOW - DAY_MS - physical_ms(o.hlc), 90 * DAY_S))
        assert w.evidence_factor == evidence_factor(
            len(o.evidence), ContextPolicy().evidence_discount
        )
        assert w.weight == pytest.approx(o.confidence * w.recency * w.evidence_factor)
        assert not w.below_minimum
    belief = explanation.belief
    assert belief.statement == "quick time-to-value."  # the newest wording of the winner
    assert [p.source for p in belief.supporters] == ["support_agent", "sales_agent"]
    assert [p.source for p in belief.dissenters] == ["bot"]
    top, runner = explanation.candidates
    assert top.sources == ("sales_agent", "support_agent")
    weights = [w.weight for w in explanation.observations if w.observation.source != "bot"]
    assert top.support == pytest.approx(1 - (1 - weights[0]) * (1 - weights[1]))
    assert runner.statement == "Lowest price"
    assert "'quick time-to-value.'" in explanation.reason
    assert "sales_agent, support_agent" in explanation.reason
    assert "'Lowest price'" in explanation.reason


def test_explaining_an_empty_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one observation"):
        explain_slot([], ContextPolicy(), WEIGHTED)


def test_resolve_orders_beliefs_by_context_then_key() -> None:
    obs = [
        observation("a.1", 1, context="style", key="tone"),
        observation("a.1", 2, context="budget", key="owner"),
        observation("a.1", 3, context="budget", key="amount"),
    ]
    assert [(b.context, b.key) for b in resolve(obs, WEIGHTED)] == [
        ("budget", "amount"),
        ("budget", "owner"),
        ("style", "tone"),
    ]
    assert resolve([], WEIGHTED) == []


# --- the policy book --------------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "default": {"min_confidence": 0.4},
    "contexts": {"budget": {"policy": "latest", "half_life_days": 7}},
    "reliability": {"sales_agent": 0.9, "bot": {"budget": 0.2}},
}


def test_a_policy_book_parses_from_config() -> None:
    book = PolicyBook.from_config(CONFIG)
    assert book.default == ContextPolicy(min_confidence=0.4)
    assert book.for_context("budget") == ContextPolicy(
        policy="latest", min_confidence=0.4, half_life_s=7 * DAY_S
    )
    assert book.for_context("communication_style") == book.default
    assert book.reliability_of("sales_agent", "budget") == 0.9
    assert book.reliability_of("sales_agent", "anything") == 0.9
    assert book.reliability_of("bot", "budget") == 0.2
    assert book.reliability_of("bot", "communication_style") == 1.0
    assert book.reliability_of("support_agent", "budget") == 1.0
    assert PolicyBook.from_config({}) == PolicyBook()


def test_a_policy_book_from_config_resolves_like_one_built_by_hand() -> None:
    obs = [
        observation("a.1", 1, source="support_agent", statement="x", confidence=0.6, ms=NOW),
        observation("b.1", 1, source="sales_agent", statement="y", ms=NOW - DAY_MS),
    ]
    book = PolicyBook.from_config(CONFIG)
    assert belief_of(obs, book).statement == "x"  # 'latest' in budget
    in_style = [o._replace(context="style") for o in obs]
    assert belief_of(in_style, book).statement == "y"  # weighted by default
    # bot's reliability in budget (0.2) puts its weight below the minimum (0.4), under 'latest'
    # too: one definition of the minimum for every policy.
    by_bot = [obs[0]._replace(source="bot"), obs[1]]
    assert belief_of(by_bot, book).statement == "y"


@pytest.mark.parametrize(
    "config",
    [
        {"default": {"min_confidense": 0.4}},
        {"contexts": {"budget": {"polcy": "latest"}}},
        {"contxts": {"budget": {"policy": "latest"}}},
        {"reliabilty": {"bot": 0.2}},
        {"contexts": {"budget": {"policy": "newest"}}},
        {"default": {"min_confidence": 1.5}},
        {"default": {"min_confidence": -0.1}},
        {"default": {"min_confidence": float("nan")}},
        {"default": {"min_confidence": "high"}},
        {"contexts": {"budget": {"half_life_days": -1}}},
        {"default": {"max_observations": 0}},
        {"default": {"evidence_discount": 1.0}},
        {"reliability": {"bot": 1.2}},
        {"reliability": {"bot": {"budget": -0.1}}},
        {"reliability": {"bot": float("nan")}},
    ],
)
def test_a_policy_book_refuses_unknown_fields_and_out_of_range_values(
    config: dict[str, Any],
) -> None:
    with pytest.raises(ValueError):
        PolicyBook.from_config(config)


def test_an_observation_below_the_minimum_is_flagged_in_the_explanation() -> None:
    policy = ContextPolicy(min_confidence=0.5)
    low = observation("a.1", 1, confidence=0.49)
    (weighted,) = explain_slot([low], policy, WEIGHTED).observations
    assert weighted.below_minimum


# --- a pure function of the state: no read instant, one definition of the minimum -----------


def _shifted(obs: list[Observation], by_ms: int) -> list[Observation]:
    return [o._replace(hlc=o.hlc + (by_ms << 16)) for o in obs]


def _without_times(beliefs: list[Belief]) -> list[tuple[Any, ...]]:
    def stances(ps: tuple[Support, ...]) -> tuple[tuple[str, str, float], ...]:
        return tuple((p.source, p.statement, p.confidence) for p in ps)

    return [
        (b.context, b.key, b.statement, b.confidence, b.uncertain, b.policy,
         stances(b.supporters), stances(b.dissenters))
        for b in beliefs
    ]  # fmt: skip


@VALUES
@given(obs=slot_observations(), book=books, rnd=shuffles, later=st.integers(0, 400 * DAY_MS))
def test_any_order_and_any_age_of_the_same_state_gives_the_same_answer(
    obs: list[Observation], book: PolicyBook, rnd: random.Random, later: int
) -> None:
    """Reading the same state later is reading it with every observation equally older: the
    winner, confidence, supporters and dissenters stay (only the times move with the state)."""
    shuffled = _shifted(obs, later)
    rnd.shuffle(shuffled)
    assert _without_times(resolve(shuffled, book)) == _without_times(resolve(obs, book))


@VALUES
@given(obs=slot_observations(), book=books)
def test_uncertain_means_the_reported_confidence_is_below_the_minimum_under_every_policy(
    obs: list[Observation], book: PolicyBook
) -> None:
    slot = [o for o in obs if o.slot == obs[0].slot]
    policy = book.for_context(obs[0].context)
    explanation = explain_slot(slot, policy, book)
    belief = explanation.belief
    assert belief.uncertain == (belief.confidence < policy.min_confidence)
    winner = normalize_statement(belief.statement)
    (support,) = (
        c.support for c in explanation.candidates if normalize_statement(c.statement) == winner
    )
    assert belief.confidence == round(support, 6)
    for w in explanation.observations:
        assert w.below_minimum == (w.weight < policy.min_confidence)


@pytest.mark.parametrize("policy", ["weighted", "latest"])
def test_one_source_at_0_8_against_two_at_0_52_never_flips_with_time(policy: str) -> None:
    """Decay scaled every weight by the reader's clock before the noisy-OR, which does not keep
    the ranking: 0.8 won when written and lost to two 0.52s half a day later."""
    book = PolicyBook(default=ContextPolicy(policy=policy, min_confidence=0.3, half_life_s=DAY_S))
    written = [
        observation("a.1", 1, source="sales_agent", statement="ten", confidence=0.8, ms=NOW),
        observation("b.1", 1, source="support_agent", statement="twenty", confidence=0.52, ms=NOW),
        observation("c.1", 1, source="bot", statement="twenty", confidence=0.52, ms=NOW, logical=0),
    ]
    first = belief_of(written, book)
    for later in (0, HOUR_MS, 12 * HOUR_MS + 42 * 60_000, DAY_MS, 30 * DAY_MS):
        belief = belief_of(_shifted(written, later), book)
        assert (belief.statement, belief.confidence) == (first.statement, first.confidence)
    assert first.statement == ("ten" if policy == "weighted" else "twenty")


# --- one source, one position per slot ---------------------------------------------------------


@VALUES
@given(obs=slot_observations(), book=books, rnd=shuffles)
def test_a_source_holds_one_position_per_slot_its_newest(
    obs: list[Observation], book: PolicyBook, rnd: random.Random
) -> None:
    """Whatever node each observation was written on: only the source's newest (by hybrid
    clock, then id) counts, so it is never both supporter and dissenter, and adding its older
    observations back changes nothing."""
    slot = [o for o in obs if o.slot == obs[0].slot]
    newest: dict[str, Observation] = {}
    for o in slot:
        if o.source not in newest or (o.hlc, o.dot) > (newest[o.source].hlc, newest[o.source].dot):
            newest[o.source] = o
    (belief,) = resolve(slot, book)
    stances = [p.source for p in (*belief.supporters, *belief.dissenters)]
    assert len(stances) == len(set(stances))
    only_newest = list(newest.values())
    rnd.shuffle(only_newest)
    assert resolve(only_newest, book) == [belief]


def test_an_agents_correction_on_another_node_wins_over_its_stale_statement() -> None:
    stale = observation("sales.1", 1, key="team_size", statement="50 people", ms=NOW)
    fixed = observation("support.1", 1, key="team_size", statement="solo", ms=NOW + 1_000)
    for book in (WEIGHTED, PolicyBook(default=ContextPolicy(policy="latest"))):
        belief = belief_of([stale, fixed], book)
        assert belief.statement == "solo"
        assert [p.statement for p in belief.supporters] == ["solo"]
        assert belief.dissenters == ()
        explanation = explain_slot([stale, fixed], book.default, book)
        assert [w.superseded for w in explanation.observations] == [False, True]


def test_the_same_agents_same_statement_on_two_nodes_counts_once() -> None:
    one = observation("sales.1", 1, statement="ten", confidence=0.6, ms=NOW, evidence=())
    again = observation("support.1", 1, statement="ten", confidence=0.6, ms=NOW + 1, evidence=())
    assert belief_of([one, again], NO_DECAY).confidence == belief_of([again], NO_DECAY).confidence


# --- independence: no echo chamber --------------------------------------------------------------


def _read(*obs: Observation) -> CausalContext:
    return CausalContext.of(o.dot for o in obs)


def test_agents_repeating_what_they_read_add_no_support() -> None:
    """0.54 stayed 0.54: agents reading a belief and writing it back, without new evidence."""
    first = observation("a.1", 1, source="a", statement="churn risk", confidence=0.6, evidence=())
    chain = [first]
    for n, source in enumerate(["b", "c", "d", "e"], start=2):
        echo = observation(
            "a.1", n, source=source, statement="churn risk", confidence=0.6, ms=NOW + n,
            evidence=(),
        )._replace(based_on=_read(*chain))  # fmt: skip
        chain.append(echo)
        assert belief_of(chain, NO_DECAY).confidence == pytest.approx(0.54)
    explanation = explain_slot(chain, NO_DECAY.default, NO_DECAY)
    flags = {w.observation.source: (w.independent, w.dependence) for w in explanation.observations}
    assert flags["a"] == (True, "")
    assert not flags["e"][0] and "re-asserts what its agent read from a, b, c, d" in flags["e"][1]
    assert len(explanation.belief.supporters) == 5  # all still shown as supporters


def test_a_re_assertion_with_new_evidence_is_independent() -> None:
    first = observation("a.1", 1, source="a", statement="x", confidence=0.6, evidence=())
    seen = observation(
        "a.1", 2, source="b", statement="x", confidence=0.6, evidence=ev(1), ms=NOW + 1
    )._replace(based_on=_read(first))
    assert belief_of([first, seen], NO_DECAY).confidence > belief_of([first], NO_DECAY).confidence


def test_a_source_replacing_its_own_statement_after_reading_it_still_counts() -> None:
    mine = observation("a.1", 1, source="a", statement="x", confidence=0.6, evidence=())
    again = observation(
        "a.1", 2, source="a", statement="x", confidence=0.9, evidence=(), ms=NOW + 1
    )._replace(based_on=_read(mine))
    assert belief_of([mine, again], NO_DECAY).confidence == pytest.approx(0.81)


def test_one_piece_of_evidence_counts_once() -> None:
    ticket = (Evidence("ticket", "zendesk://4411"),)
    a = observation("a.1", 1, source="a", statement="x", confidence=0.7, evidence=ticket)
    b = observation("b.1", 1, source="b", statement="x", confidence=0.6, evidence=ticket)
    explanation = explain_slot([a, b], NO_DECAY.default, NO_DECAY)
    flags = {w.observation.source: w for w in explanation.observations}
    assert flags["a"].independent and not flags["b"].independent
    assert "already counted (from a)" in flags["b"].dependence
    assert explanation.belief.confidence == round(flags["a"].weight, 6)
    # Other evidence, or a different statement, is independent.
    c = b._replace(evidence=(Evidence("call", "gong://1"),))
    assert belief_of([a, c], NO_DECAY).confidence > belief_of([a], NO_DECAY).confidence
