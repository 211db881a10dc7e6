"""Holding back what a replica's clock refuses: a state without its too-new observations.

A whole state (anti-entropy) may hold observations whose timestamps are further ahead than the
receiver's clock allows. Refusing the whole state would block the repair of everything else in
the subject, so the receiver merges the state without those observations and without their
dots. The digests then still differ, so a later round ships the subject again and merges the
held-back part once the clock allows it; ``merge`` of the full state adds it, since its dots were
never recorded as seen. What a held-back observation superseded (the same source's earlier
observation in its slot) stays in the context, so it is removed at once: until the held-back
part merges, that source has no observation in the slot on the receiver.
"""

from __future__ import annotations

from collections.abc import Sequence

from sync.causal import CausalContext, Dot
from sync.crdt import SubjectState
from sync.hlc import physical_ms
from sync.observation import Observation

# The most dots ``without`` moves from a version vector to the cloud to take a dot out.
MAX_SPLIT = 10_000


def too_new(state: SubjectState, limit_ms: int) -> list[Observation]:
    """The state's observations timestamped after ``limit_ms`` (wall-clock ms), oldest first."""
    found = [o for o in state.observations.values() if physical_ms(o.hlc) > limit_ms]
    found.sort(key=_hlc_of)
    return found


def without(state: SubjectState, observations: Sequence[Observation]) -> SubjectState | None:
    """``state`` as if the events of ``observations`` had not happened yet: neither they nor
    their dots. None when that would spell out more than MAX_SPLIT dots of the context."""
    dots = {o.dot for o in observations}
    kept = {dot: o for dot, o in state.observations.items() if dot not in dots}
    by_actor: dict[str, set[int]] = {}
    for dot in dots:
        by_actor.setdefault(dot.actor, set()).add(dot.counter)
    vector = dict(state.context.vector)
    cloud = set(state.context.cloud) - dots
    for actor, counters in by_actor.items():
        top = vector.get(actor, 0)
        low = min(counters)
        if low <= top:  # the vector's range splits: below the first removed, the rest beyond
            if top - low > MAX_SPLIT:
                return None
            vector[actor] = low - 1
            cloud.update(Dot(actor, c) for c in range(low + 1, top + 1) if c not in counters)
    context = CausalContext.of(cloud).join(CausalContext({a: c for a, c in vector.items() if c}))
    return state._replace(context=context, observations=kept)


def _hlc_of(obs: Observation) -> int:
    return obs.hlc


__all__ = ["MAX_SPLIT", "too_new", "without"]
