"""Per-context governance: how a context's beliefs are resolved and what is kept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, field
from typing import Any, Literal

PolicyName = Literal["latest", "weighted"]
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    policy: PolicyName = "weighted"
    # Beliefs below this are kept for audit and shown as uncertain, never as fact.
    min_confidence: float = 0.5
    # Recency decay: an observation's weight halves every half-life; None means no decay.
    half_life_s: float | None = 90 * DAY_S
    # At most this many observations are kept per slot; the oldest are superseded.
    max_observations: int = 32
    # Weight of an observation without evidence: 1 - discount; each piece halves the discount.
    evidence_discount: float = 0.1

    def __post_init__(self) -> None:
        if self.policy not in ("latest", "weighted"):
            raise ValueError(f"policy must be 'latest' or 'weighted', got {self.policy!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {self.min_confidence}")
        if self.half_life_s is not None and self.half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {self.half_life_s}")
        if self.max_observations < 1:
            raise ValueError(f"max_observations must be at least 1, got {self.max_observations}")
        if not 0.0 <= self.evidence_discount < 1.0:
            raise ValueError(
                f"evidence_discount must be within [0, 1), got {self.evidence_discount}"
            )


@dataclass(frozen=True, slots=True)
class PolicyBook:
    """The policies of every context and the reliability of sources (set by operators)."""

    default: ContextPolicy = field(default_factory=ContextPolicy)
    contexts: Mapping[str, ContextPolicy] = field(default_factory=dict)
    # (source, context) -> reliability in [0, 1]; context "*" applies to every context.
    reliability: Mapping[tuple[str, str], float] = field(default_factory=dict)
    # (source, context) -> the learned weight already multiplied into ``reliability``
    # (node.reliability.learned_book), shown beside it; 1 for a source not learned.
    learned: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def for_context(self, context: str) -> ContextPolicy:
        return self.contexts.get(context, self.default)

    def reliability_of(self, source: str, context: str) -> float:
        r = self.reliability
        if not r:
            return 1.0
        return r.get((source, context), r.get((source, "*"), 1.0))

    def learned_of(self, source: str, context: str) -> float:
        return self.learned.get((source, context), 1.0) if self.learned else 1.0

    def canonical(self) -> list[Any]:
        """The book as JSON-ready lists, equal exactly when the books are (for fingerprints of
        what was resolved or judged with it)."""
        return [
            astuple(self.default),
            sorted((name, astuple(p)) for name, p in self.contexts.items()),
            sorted([*k, v] for k, v in self.reliability.items()),
            sorted([*k, v] for k, v in self.learned.items()),
        ]

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> PolicyBook:
        """From the ``[policies]`` table of a node config.

        ``default = {...}``, ``contexts.<name> = {...}`` (fields of ContextPolicy, half_life in
        days as ``half_life_days``), ``reliability.<source> = 0.8`` or
        ``reliability.<source> = {<context> = 0.8, "*" = 0.9}``.
        """
        unknown = set(raw) - {"default", "contexts", "reliability"}
        if unknown:
            known = ["contexts", "default", "reliability"]
            raise ValueError(f"unknown policy sections {sorted(unknown)}; known: {known}")
        default = _policy(raw.get("default", {}), ContextPolicy())
        contexts = {name: _policy(v, default) for name, v in raw.get("contexts", {}).items()}
        reliability: dict[tuple[str, str], float] = {}
        for source, value in raw.get("reliability", {}).items():
            per_context = value if isinstance(value, Mapping) else {"*": value}
            for context, r in per_context.items():
                if not 0.0 <= float(r) <= 1.0:
                    raise ValueError(f"reliability of {source} in {context} must be within [0, 1]")
                reliability[(source, context)] = float(r)
        return cls(default, contexts, reliability)


def _policy(raw: Mapping[str, Any], base: ContextPolicy) -> ContextPolicy:
    known = {"policy", "min_confidence", "half_life_days", "max_observations", "evidence_discount"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown policy fields {sorted(unknown)}; known: {sorted(known)}")
    half_life = raw.get(
        "half_life_days", None if base.half_life_s is None else base.half_life_s / DAY_S
    )
    return ContextPolicy(
        policy=raw.get("policy", base.policy),
        min_confidence=float(raw.get("min_confidence", base.min_confidence)),
        half_life_s=None if half_life in (None, 0) else float(half_life) * DAY_S,
        max_observations=int(raw.get("max_observations", base.max_observations)),
        evidence_discount=float(raw.get("evidence_discount", base.evidence_discount)),
    )
