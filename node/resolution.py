"""Resolution of a slot's competing observations into one belief, and why it won.

A pure function of the replicated state: the same observations and policy give the same belief,
confidence and explanation on every node, whatever order the observations came in and whenever
it is read. Resolution happens at read time and is never replicated. One definition serves every
policy:

- one source holds one Support per slot: its newest observation by the cluster-wide total
  order (hybrid clock, then id); its older ones, wherever written, are shown as superseded and
  never counted (the same agent's correction wins over its stale statement on another node,
  and its same statement written on two nodes counts once);
- an observation's *weight* is confidence x source reliability x recency x evidence factor,
  where recency decays with the observation's age relative to the newest observation of its
  slot (never relative to the reader's clock: nodes reading at different instants agree);
- an observation is *below the minimum* when its weight is below the context's minimum
  confidence; those count only when every observation of the slot is below it;
- an observation is *independent* unless it re-asserts what another source said in the model
  its agent read (``based_on``) without new evidence, or cites only evidence an independent
  observation of the same statement already cites (one piece of evidence counts once); the
  strongest is counted first;
- a statement's *support* is the noisy-OR of the weights of its counted, independent
  observations (agents repeating each other do not make a belief surer);
- the winner is the strongest support (``weighted``) or the statement of the newest counted
  observation (``latest``), and the belief's *confidence* is the winner's support;
- a belief is *uncertain* exactly when its confidence is below the minimum;
- a tenant's withdrawals (``withdrawn``: source -> timestamp, an input of resolution like the
  policy book) leave out every observation of a withdrawn source from before its withdrawal, in
  the agents' contexts (names not beginning with ``_``); a slot left with none has no belief.

A belief's staleness is its age, reported beside its confidence: the reader's clock minus
``changed_ms`` (the newest observation's time), never folded into the confidence.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from node.policy import ContextPolicy, PolicyBook
from sync.causal import Dot
from sync.hlc import physical_ms
from sync.observation import Evidence, Observation

_SPACE = re.compile(r"\s+")

# A tenant's withdrawn sources: source -> the timestamp before which its observations are left
# out of resolution.
Withdrawn = Mapping[str, int]
NO_WITHDRAWN: Withdrawn = MappingProxyType({})


@functools.lru_cache(maxsize=2048)  # a slot's resolution compares each statement many times
def normalize_statement(statement: str) -> str:
    """The form under which statements are compared: case- and whitespace-insensitive.

    Idempotent: final stops and the spaces between them go at once ("Yes. ." is "yes").
    """
    return _SPACE.sub(" ", statement).rstrip(" .!").strip().casefold()


@dataclass(frozen=True, slots=True)
class Support:
    """One source's stance in a slot (its newest observation there): model.proto's Support, with
    the confidence it reported and what that weighs there.

    The weighing (``weight`` = confidence x reliability x recency x evidence_factor, and whether
    it counts in its statement's support) follows from the stance and its slot, so it takes no
    part in comparing supports.
    """

    source: str
    statement: str
    confidence: float
    observed_ms: int
    weight: float = field(default=0.0, compare=False)
    reliability: float = field(default=1.0, compare=False)
    recency: float = field(default=1.0, compare=False)
    evidence_factor: float = field(default=1.0, compare=False)
    counted: bool = field(default=True, compare=False)
    learned: float = field(default=1.0, compare=False)  # the part of reliability learned


@dataclass(frozen=True, slots=True)
class Belief:
    context: str
    key: str
    statement: str
    confidence: float
    supporters: tuple[Support, ...]
    dissenters: tuple[Support, ...]
    uncertain: bool
    changed_ms: int
    policy: str


@dataclass(frozen=True, slots=True)
class Weighted:
    observation: Observation
    weight: float
    reliability: float
    recency: float
    evidence_factor: float
    below_minimum: bool
    superseded: bool = False  # a newer observation of its source in the slot replaces it
    independent: bool = True
    dependence: str = ""  # why it is not independent
    learned: float = 1.0  # the part of reliability learned (node.reliability)


@dataclass(frozen=True, slots=True)
class Candidate:
    statement: str
    support: float
    sources: tuple[str, ...]
    newest_hlc: int


@dataclass(frozen=True, slots=True)
class Explanation:
    belief: Belief
    observations: tuple[Weighted, ...]
    candidates: tuple[Candidate, ...]
    reason: str


def recency(age_ms: int, half_life_s: float | None) -> float:
    if half_life_s is None or age_ms <= 0:
        return 1.0
    return math.pow(0.5, age_ms / 1000.0 / half_life_s)


def evidence_factor(count: int, discount: float) -> float:
    return 1.0 - discount * math.pow(0.5, count)


def explain_slot(
    observations: Sequence[Observation], policy: ContextPolicy, book: PolicyBook
) -> Explanation:
    """Resolves one slot (all observations share context and key; at least one)."""
    if not observations:
        raise ValueError("a slot to resolve needs at least one observation")
    first = observations[0]
    # Newest first, each source's newest only: a slot keeps at most max_observations; older
    # ones do not count.
    ordered = sorted(observations, key=lambda o: (o.hlc, o.dot), reverse=True)
    current: list[Observation] = []
    replaced: list[Observation] = []
    sources: set[str] = set()
    for o in ordered:
        (replaced if o.source in sources else current).append(o)
        sources.add(o.source)
    current = current[: policy.max_observations]
    newest_ms = physical_ms(current[0].hlc)
    weighted = _independence(tuple(_weigh(o, policy, book, newest_ms) for o in current), ordered)
    counted = [w for w in weighted if not w.below_minimum] or list(weighted)

    candidates = _candidates(counted)
    if policy.policy == "latest":
        winner_obs = counted[0].observation  # newest by (hlc, dot)
        winner_norm = normalize_statement(winner_obs.statement)
        winner = next(c for c in candidates if normalize_statement(c.statement) == winner_norm)
        reason = f"newest observation wins under 'latest' (from {winner_obs.source})"
    else:
        winner = candidates[0]
        winner_norm = normalize_statement(winner.statement)
        reason = _weighted_reason(candidates)
    confidence = round(winner.support, 6)  # as reported, and as compared with the minimum

    uncertain = confidence < policy.min_confidence
    if uncertain:
        reason += (
            f"; uncertain: confidence {confidence:.2f} is below the minimum "
            f"{policy.min_confidence:.2f}"
        )

    supporters: list[Support] = []
    dissenters: list[Support] = []
    in_support = {w.observation.dot for w in counted if w.independent}
    for w in weighted:
        o = w.observation
        p = Support(
            o.source,
            o.statement,
            o.confidence,
            physical_ms(o.hlc),
            weight=w.weight,
            reliability=w.reliability,
            recency=w.recency,
            evidence_factor=w.evidence_factor,
            counted=o.dot in in_support,
            learned=w.learned,
        )
        (supporters if normalize_statement(o.statement) == winner_norm else dissenters).append(p)
    superseded = tuple(
        dataclasses.replace(_weigh(o, policy, book, newest_ms), superseded=True) for o in replaced
    )
    belief = Belief(
        context=first.context,
        key=first.key,
        statement=winner.statement,
        confidence=confidence,
        supporters=tuple(supporters),
        dissenters=tuple(dissenters),
        uncertain=uncertain,
        changed_ms=physical_ms(max(o.hlc for o in observations)),
        policy=policy.policy,
    )
    return Explanation(belief, weighted + superseded, tuple(candidates), reason)


def counted(
    observations: Sequence[Observation], withdrawn: Withdrawn = NO_WITHDRAWN
) -> Sequence[Observation]:
    """``observations`` less those ``withdrawn`` leaves out: a withdrawn source's, from before
    its withdrawal, in an agents' context (the node's own, ``_``-named, are never left out)."""
    if not withdrawn:
        return observations
    return [
        o for o in observations if o.hlc >= withdrawn.get(o.source, 0) or o.context.startswith("_")
    ]


def resolve(
    observations: Iterable[Observation], book: PolicyBook, withdrawn: Withdrawn = NO_WITHDRAWN
) -> list[Belief]:
    """Every slot's belief, ordered by (context, key); a slot whose every observation is
    withdrawn has none."""
    slots: dict[tuple[str, str], list[Observation]] = {}
    for obs in counted(list(observations), withdrawn):
        slots.setdefault((obs.context, obs.key), []).append(obs)
    return [
        explain_slot(slots[slot], book.for_context(slot[0]), book).belief for slot in sorted(slots)
    ]


def _weigh(o: Observation, policy: ContextPolicy, book: PolicyBook, newest_ms: int) -> Weighted:
    """``o`` weighed within its slot, whose newest observation is from ``newest_ms``."""
    reliability = book.reliability_of(o.source, o.context)
    rec = recency(newest_ms - physical_ms(o.hlc), policy.half_life_s)
    ev = evidence_factor(len(o.evidence), policy.evidence_discount)
    weight = o.confidence * reliability * rec * ev
    return Weighted(
        observation=o,
        weight=weight,
        reliability=reliability,
        recency=rec,
        evidence_factor=ev,
        below_minimum=weight < policy.min_confidence,
        learned=book.learned_of(o.source, o.context),
    )


def _piece(evidence: Evidence) -> tuple[str, str]:
    """What makes two citations one piece of evidence: its kind and reference (or quote)."""
    return (evidence.kind, evidence.ref or evidence.quote)


def _independence(
    weighted: tuple[Weighted, ...], slot: Sequence[Observation]
) -> tuple[Weighted, ...]:
    """``weighted`` with each observation's independence (see the module docstring); ``slot``
    is every observation of the slot, for what an agent read."""
    cited: dict[str, dict[tuple[str, str], str]] = {}  # statement -> piece -> citing source
    judged: dict[Dot, Weighted] = {}
    for w in sorted(weighted, key=lambda w: (-w.weight, w.observation.hlc, w.observation.dot)):
        o = w.observation
        statement = normalize_statement(o.statement)
        pieces = {_piece(e) for e in o.evidence if e.ref or e.quote}
        reason = ""
        if o.based_on is not None:
            read = [p for p in slot if p.source != o.source and p.dot in o.based_on]
            echoed = sorted(
                {p.source for p in read if normalize_statement(p.statement) == statement}
            )
            if echoed and pieces <= {_piece(e) for p in read for e in p.evidence}:
                reason = (
                    f"re-asserts what its agent read from {', '.join(echoed)} without new evidence"
                )
        known = cited.setdefault(statement, {})
        if not reason and pieces and pieces <= known.keys():
            by = ", ".join(sorted({known[p] for p in pieces}))
            reason = f"cites only evidence already counted (from {by})"
        if not reason:
            for p in pieces:
                known.setdefault(p, o.source)
        judged[o.dot] = (
            dataclasses.replace(w, independent=False, dependence=reason) if reason else w
        )
    return tuple(judged[w.observation.dot] for w in weighted)


def _candidates(weighted: Sequence[Weighted]) -> list[Candidate]:
    """Distinct statements, strongest first; ties go to the newer, then the smaller statement."""
    groups: dict[str, list[Weighted]] = {}
    for w in weighted:  # newest first, so a group's first statement is its newest wording
        groups.setdefault(normalize_statement(w.observation.statement), []).append(w)
    candidates = []
    for members in groups.values():
        miss = 1.0
        for w in members:
            if w.independent:
                miss *= 1.0 - w.weight
        candidates.append(
            Candidate(
                statement=members[0].observation.statement,
                support=1.0 - miss,
                sources=tuple(sorted({w.observation.source for w in members})),
                newest_hlc=max(w.observation.hlc for w in members),
            )
        )
    candidates.sort(
        key=lambda c: (-round(c.support, 12), -c.newest_hlc, normalize_statement(c.statement))
    )
    return candidates


def _weighted_reason(candidates: Sequence[Candidate]) -> str:
    win = candidates[0]
    text = (
        f"{win.statement!r} has the highest support {win.support:.2f} from {', '.join(win.sources)}"
    )
    if len(candidates) > 1:
        runner = candidates[1]
        if round(runner.support, 12) == round(win.support, 12):
            tie = "newer" if runner.newest_hlc != win.newest_hlc else "lexically smaller"
            text += f"; tied with {runner.statement!r}, won as the {tie}"
        else:
            text += f" over {runner.statement!r} at {runner.support:.2f}"
    return text


class LeftOut(NamedTuple):
    """What a read of some contexts leaves out of them (``select``'s complement, counted)."""

    uncertain: int  # uncertain beliefs, when the reader did not ask for them
    below_min_confidence: int  # the others below the reader's own floor


def left_out(
    beliefs: Iterable[Belief],
    contexts: frozenset[str] = frozenset(),
    min_confidence: float = 0.0,
    include_uncertain: bool = False,
) -> LeftOut:
    uncertain = below = 0
    for b in beliefs:
        if contexts and b.context not in contexts:
            continue
        if b.uncertain and not include_uncertain:
            uncertain += 1
        elif b.confidence < min_confidence:
            below += 1
    return LeftOut(uncertain, below)


def select(
    beliefs: Iterable[Belief],
    contexts: frozenset[str] = frozenset(),
    min_confidence: float = 0.0,
    include_uncertain: bool = False,
) -> list[Belief]:
    """The beliefs a reader asked for: some contexts, a confidence floor, uncertain or not."""
    return [
        b
        for b in beliefs
        if (not contexts or b.context in contexts)
        and b.confidence >= min_confidence
        and (include_uncertain or not b.uncertain)
    ]
