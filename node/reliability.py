"""Learned reliability: how far to trust a source in a context, from how often it agrees.

A pure function of the replicated state, so every node computes the same weights from the same
state:

- an *outcome* is one source's current position in one slot of one subject (its newest
  observation there, as resolution counts it), judged against the slot's belief resolved under
  the configured policy book (never the learned one, so learning does not feed on itself). It
  agrees when its statement is that belief's (``normalize_statement``). Only a slot where at
  least two sources speak and whose belief is not uncertain judges: a source alone agrees with
  itself, and an uncertain belief is no consensus. (Judging against the belief of the *other*
  sources was rejected: in a slot of two agreeing sources and one stronger dissenter, each of the
  two would be judged against a split it loses, and found to disagree.) Where two sources
  contradict each other alone, the one resolution prefers is judged to agree;
- per (tenant, source, context), the newest ``window`` outcomes (by hybrid timestamp, then
  dot) count: ``agreed`` of ``judged``;
- the weight is the Beta posterior mean of agreeing, relative to the prior mean, kept within
  ``[floor, ceiling]``::

      weight = clamp(((agreed + a) / (judged + a + b)) / (a / (a + b)), floor, ceiling)

  with ``a``, ``b`` the prior's agreements and disagreements. A source never judged weighs
  ``min(1, ceiling)``; one agreeing as often as the prior expects weighs 1 (capped by the
  ceiling); each disagreement lowers it, never below the floor, so no source is silenced, and
  with a ceiling of at most 1 none outweighs an operator's full trust. Agreeing more never lowers
  the weight: an agreement in place of a disagreement raises the mean, and a newer agreement
  added to the window raises it or keeps it.

The weight multiplies the operator's reliability of the source in the context (``learned_book``).

Weights are per tenant: agent ids are (a token names one tenant, and two tenants may each have
an agent of the same id), so a tenant's beliefs resolve with the weights learned from its own
slots only (``Books``), and the functions below take one tenant's outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from node.policy import ContextPolicy, PolicyBook
from node.resolution import explain_slot, normalize_statement
from sync.causal import Dot
from sync.observation import Observation


@dataclass(frozen=True, slots=True)
class LearningSettings:
    window: int = 200  # outcomes counted per (source, context): the newest
    prior_agree: float = 4.0  # the Beta prior's agreements (a)
    prior_disagree: float = 1.0  # and disagreements (b)
    floor: float = 0.1
    ceiling: float = 1.0
    # Whether the node resolves with the learned weights (off: it neither tracks nor learns).
    enabled: bool = False
    # How often, at most, the weights are recomputed from the outcomes and put in force.
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"interval_s: must be a positive number, got {self.interval_s}")
        if self.window < 1:
            raise ValueError(f"window: must be at least 1, got {self.window}")
        if not (self.prior_agree > 0 and self.prior_disagree > 0):
            raise ValueError(
                "prior_agree, prior_disagree: must be positive, got "
                f"{self.prior_agree}, {self.prior_disagree}"
            )
        if not 0.0 < self.floor <= self.ceiling <= 1.0:
            raise ValueError(
                f"floor, ceiling: must satisfy 0 < floor <= ceiling <= 1, got {self.floor}, "
                f"{self.ceiling}"
            )


class Outcome(NamedTuple):
    source: str
    context: str
    agreed: bool
    hlc: int  # of the judged observation
    dot: Dot


@dataclass(frozen=True, slots=True)
class Learned:
    source: str
    context: str
    weight: float
    agreed: int
    judged: int


Weights = Mapping[tuple[str, str], Learned]  # one tenant's, by (source, context)


def outcomes_of_slot(
    observations: Sequence[Observation], policy: ContextPolicy, book: PolicyBook
) -> list[Outcome]:
    """Each source's current position in one slot (one subject's), judged against its belief."""
    newest: dict[str, Observation] = {}
    for o in observations:
        have = newest.get(o.source)
        if have is None or (o.hlc, o.dot) > (have.hlc, have.dot):
            newest[o.source] = o
    if len(newest) < 2:
        return []
    belief = explain_slot(observations, policy, book).belief
    if belief.uncertain:
        return []
    held = normalize_statement(belief.statement)
    return [
        Outcome(source, own.context, normalize_statement(own.statement) == held, own.hlc, own.dot)
        for source, own in sorted(newest.items())
    ]


def weight(agreed: int, judged: int, settings: LearningSettings) -> float:
    a, b = settings.prior_agree, settings.prior_disagree
    relative = (agreed + a) / (judged + a + b) * (a + b) / a
    return min(settings.ceiling, max(settings.floor, relative))


def learn(
    outcomes: Iterable[Outcome], settings: LearningSettings = LearningSettings()
) -> dict[tuple[str, str], Learned]:
    """Every (source, context)'s learned weight, from the newest ``window`` of its outcomes (of
    one tenant's slots)."""
    by_key: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        by_key.setdefault((o.source, o.context), []).append(o)
    learned = {}
    for key in sorted(by_key):
        kept = sorted(by_key[key], key=lambda o: (o.hlc, o.dot), reverse=True)[: settings.window]
        agreed = sum(o.agreed for o in kept)
        learned[key] = Learned(
            key[0], key[1], weight(agreed, len(kept), settings), agreed, len(kept)
        )
    return learned


def learned_book(book: PolicyBook, learned: Weights) -> PolicyBook:
    """``book`` with each learned source's reliability in its context multiplied by its weight
    (``learned``: one tenant's weights); ``book`` itself when there are none."""
    if not learned:
        return book
    reliability = dict(book.reliability)
    weights = {}
    for (source, context), found in learned.items():
        reliability[source, context] = book.reliability_of(source, context) * found.weight
        weights[source, context] = found.weight
    return PolicyBook(book.default, book.contexts, reliability, weights)


@dataclass(frozen=True, slots=True)
class Books:
    """The books in force: the operators', and per tenant with learned weights the operators'
    times them (``learned_book``). A tenant without weights resolves with the operators'."""

    operators: PolicyBook
    tenants: Mapping[str, PolicyBook] = field(default_factory=dict)

    def of(self, tenant: str) -> PolicyBook:
        return self.tenants.get(tenant, self.operators)


def books_of(operators: PolicyBook, learned: Mapping[str, Weights]) -> Books:
    """The books in force under ``operators`` with each tenant's ``learned`` weights."""
    return Books(operators, {t: learned_book(operators, w) for t, w in learned.items() if w})
