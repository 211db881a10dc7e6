"""One delta-state CRDT per subject: ``(erase generation, causal context, observations)``.

Every event (observe, retract, erase) gets a fresh dot. An observe's delta carries its new
observation and, in its context, the dots it supersedes; a retract's delta carries only the dots
it removes (observed-remove: a concurrent new observation survives); an erase raises the
generation, and the higher generation wins a merge outright. A delta is itself a state, so
``merge`` is commutative, associative and idempotent.

``(generation, context)`` pins the observations down only when deltas are merged in causal order
(a delta after the deltas of the dots it removes): a replica that merged an observe delta but not
the delta of the dot it superseded holds that dot in its context while still showing what the
missing delta superseded. ``digest`` therefore also covers the observations' dots, so equal
digests mean equal states whatever the delivery order, and anti-entropy repairs such a replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from sync.causal import CausalContext, Dot
from sync.observation import Observation, Subject


class SubjectState(NamedTuple):
    """Immutable by convention: ``observations`` is never mutated after construction.

    The value types built on every write (this, Observation, Evidence, Delta and the engine's
    inputs and results) are tuples: one is built in C, where a frozen dataclass sets each
    field through ``object.__setattr__``, several times slower for the ten or so each write
    builds.
    """

    subject: Subject
    generation: int = 0
    context: CausalContext = CausalContext()
    observations: Mapping[Dot, Observation] = MappingProxyType({})

    def next_dot(self, actor: str) -> Dot:
        return Dot(actor, self.context.max_counter(actor) + 1)

    def covers(self, generation: int, context: CausalContext) -> bool:
        """True when this state has merged the position ``(generation, context)``."""
        if self.generation != generation:
            return self.generation > generation
        return self.context.includes(context)

    def digest(self) -> bytes:
        return digest(self.generation, self.context, self.observations)


def merge(a: SubjectState, b: SubjectState) -> SubjectState:
    if a.subject != b.subject:
        raise ValueError(f"cannot merge states of {a.subject} and {b.subject}")
    if a.generation != b.generation:
        return a if a.generation > b.generation else b
    a_obs, b_obs = a.observations, b.observations
    observations = {dot: obs for dot, obs in a_obs.items() if dot in b_obs or dot not in b.context}
    for dot, obs in b_obs.items():
        if dot not in a.context:
            observations[dot] = obs
    return SubjectState(a.subject, a.generation, a.context.join(b.context), observations)


def observe_delta(
    state: SubjectState, observation: Observation, supersedes: Iterable[Dot] = ()
) -> SubjectState:
    """The delta of a new observation (whose dot is ``state.next_dot(actor)``)."""
    dots = [observation.dot, *supersedes]
    return SubjectState(
        state.subject,
        state.generation,
        CausalContext.of(dots),
        {observation.dot: observation},
    )


def apply_observe(
    state: SubjectState, observation: Observation, supersedes: Iterable[Dot] = ()
) -> SubjectState:
    """``merge(state, observe_delta(state, observation, supersedes))``, without a general merge.

    For the replica making the observation: its dot is ``state.next_dot(actor)`` and every
    superseded dot one of ``state``'s observations. So the result is ``state`` without those,
    with the observation, and with its dot in the context.
    """
    observations = dict(state.observations)
    for dot in supersedes:
        del observations[dot]
    observations[observation.dot] = observation
    return SubjectState(
        state.subject, state.generation, state.context.add(observation.dot), observations
    )


def retract_delta(state: SubjectState, actor: str, removes: Iterable[Dot]) -> SubjectState:
    dots = [state.next_dot(actor), *removes]
    return SubjectState(state.subject, state.generation, CausalContext.of(dots), {})


def erase_delta(state: SubjectState, actor: str) -> SubjectState:
    """Forgets everything about the subject: a new generation holding only the erase's dot."""
    return SubjectState(state.subject, state.generation + 1, CausalContext.of([Dot(actor, 1)]), {})


def digest(generation: int, context: CausalContext, observed: Iterable[Dot] = ()) -> bytes:
    """An exact digest of a state: its generation, context and the dots of its observations."""
    h = hashlib.blake2b(digest_size=16)
    h.update(generation.to_bytes(8, "big"))
    for actor, counter in sorted(context.vector.items()):
        h.update(b"v%s\x00%d\x00" % (actor.encode(), counter))
    for dot in sorted(context.cloud):
        h.update(b"c%s\x00%d\x00" % (dot.actor.encode(), dot.counter))
    for dot in sorted(observed):
        h.update(b"o%s\x00%d\x00" % (dot.actor.encode(), dot.counter))
    return h.digest()


def slot_observations(state: SubjectState, context: str, key: str) -> list[Observation]:
    """A slot's observations, oldest first."""
    found = [o for o in state.observations.values() if o.context == context and o.key == key]
    found.sort(key=_age)
    return found


def _age(obs: Observation) -> tuple[int, Dot]:
    return obs.hlc, obs.dot


def slot_dots(state: SubjectState, context: str, key: str, source: str | None = None) -> list[Dot]:
    """The dots of a slot's observations, optionally of one source only, oldest first."""
    return [
        obs.dot
        for obs in slot_observations(state, context, key)
        if source is None or obs.source == source
    ]
