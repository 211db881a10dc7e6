"""Dots and causal contexts: which events a replica has seen.

A dot ``(actor, counter)`` names one event. An actor is named with a random part when a run of a
node takes it, and a later run resumes it only when that is safe (node.store, Sync.ClaimRun), so
counters are never reused: not after a crash, nor by a node started afresh or from a backup. A
causal context is a version vector (every counter up to n) plus the dots seen beyond it; it is
kept compact, so two contexts holding the same dots are equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# The largest counter any replica accepts, from agents, peers and
# anti-entropy alike (node.validation), and so the largest any replica mints: a dot beyond it
# would be refused by every peer and jam the delta stream carrying it.
MAX_COUNTER = 2**62


def counter_in_range(counter: int) -> bool:
    """True for a counter every replica accepts: within [1, MAX_COUNTER]."""
    return 1 <= counter <= MAX_COUNTER


class Dot(NamedTuple):
    """A tuple, so that hashing, comparing and sorting dots (every merge, digest and encoding
    does, for each dot of a subject) run in C: four times faster than a dataclass's methods.
    """

    actor: str
    counter: int

    def __str__(self) -> str:
        return f"{self.actor}:{self.counter}"

    @classmethod
    def parse(cls, text: str) -> Dot:
        actor, _, counter = text.rpartition(":")
        if not actor or not counter.isdigit():
            raise ValueError(f"not a dot: {text!r}")
        return cls(actor, int(counter))


@dataclass(frozen=True, slots=True)
class CausalContext:
    """Immutable by convention: ``vector`` is never mutated after construction."""

    vector: Mapping[str, int] = field(default_factory=dict)
    cloud: frozenset[Dot] = frozenset()

    @classmethod
    def of(cls, dots: Iterable[Dot]) -> CausalContext:
        return _compact({}, set(dots))

    def __contains__(self, dot: object) -> bool:
        if not isinstance(dot, Dot):
            return False
        return dot.counter <= self.vector.get(dot.actor, 0) or dot in self.cloud

    def max_counter(self, actor: str) -> int:
        top = self.vector.get(actor, 0)
        for dot in self.cloud:
            if dot.actor == actor and dot.counter > top:
                top = dot.counter
        return top

    def join(self, other: CausalContext) -> CausalContext:
        if not other.vector and not other.cloud:
            return self
        vector = dict(self.vector)
        for actor, counter in other.vector.items():
            if counter > vector.get(actor, 0):
                vector[actor] = counter
        return _compact(vector, set(self.cloud) | set(other.cloud))

    def add(self, dot: Dot) -> CausalContext:
        """This context with ``dot``: ``self.join(CausalContext.of([dot]))``, cheaper."""
        if dot in self:
            return self
        if dot.counter != self.vector.get(dot.actor, 0) + 1:
            return CausalContext(self.vector, self.cloud | {dot})  # beyond a gap: compact still
        vector = dict(self.vector)
        vector[dot.actor] = dot.counter
        if any(d.actor == dot.actor for d in self.cloud):  # the gap it closes may join the cloud
            return _compact(vector, set(self.cloud))
        return CausalContext(vector, self.cloud)

    def includes(self, other: CausalContext) -> bool:
        """True when every dot of ``other`` is in this context."""
        for actor, counter in other.vector.items():
            have = self.vector.get(actor, 0)
            if counter > have and any(
                Dot(actor, c) not in self.cloud for c in range(have + 1, counter + 1)
            ):
                return False
        return all(dot in self for dot in other.cloud)

    def dots(self) -> frozenset[Dot]:
        """Every dot, the vector's ranges spelled out (for small contexts such as a delta's)."""
        spelled = {Dot(a, c) for a, top in self.vector.items() for c in range(1, top + 1)}
        return frozenset(spelled | self.cloud)

    def is_empty(self) -> bool:
        return not self.vector and not self.cloud


def _compact(vector: dict[str, int], cloud: set[Dot]) -> CausalContext:
    """The context of ``vector``'s ranges and ``cloud``'s dots, each cloud dot that extends (or
    falls within) its actor's range moved into it. One pass in dot order does it all: a dot that
    closes a gap comes before the dots beyond the gap."""
    beyond = []
    for dot in sorted(cloud):
        have = vector.get(dot.actor, 0)
        if dot.counter == have + 1:
            vector[dot.actor] = dot.counter
        elif dot.counter > have:
            beyond.append(dot)
    return CausalContext({a: c for a, c in vector.items() if c > 0}, frozenset(beyond))
