"""How big a subject may grow, and how to ship a state in parts that each fit a message.

A subject is bounded three ways (``SubjectLimits``): its slots, its observations and the size of
its encoded state. The counts bound the work of resolving it; the size is what keeps every
message that carries it (a GetSelfModel reply, a watch event, a delta, an anti-entropy exchange)
well under the gRPC message limit. The counts alone could not: an observation with every field
at its maximum (a 2,000-character statement and key, 16 pieces of evidence with 1,024- and
2,000-character ref and quote, all of 4-byte UTF-8 characters) encodes to about 210 KB.

Sizes here are ``state_bytes``: an upper bound of ``len(encode_state(state))`` (each string and
number counted with the most its tag and length prefix can take), additive over observations
and context entries, so a write's new size is the old size plus what it adds minus what it
removes (``Footprint.changed``), without encoding the subject.

``split`` cuts a state into parts that each stay under a size and each remain a correct delta:
a part's causal context holds exactly the dots of the observations it carries, or, for the
parts that carry no observation, dots the state removed; the erase bound and the withdrawals
go first, in a part of their own with an empty context (they apply wherever they are merged),
then the keyed calls, in parts of their own with an empty context too.
A part whose context held a dot of an observation it does not carry would make the receiver
drop that observation as removed. So merging the parts, in any order and into any replica,
equals merging the whole state.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from sync.causal import CausalContext, Dot
from sync.crdt import NO_ERASE, EraseBound, KeyedCall, SubjectState
from sync.observation import Observation, Subject

# A string field: tag, a length prefix of up to 3 bytes (under 2 MiB), the UTF-8 bytes.
_STRING = 4
# One observation's fixed part: its frame in the state (tag, 3-byte length), its dot's frame,
# tag and counter (17 bytes beside the actor), five strings' prefixes, confidence (9), hlc (11).
_OBSERVATION = 4 + 17 + 5 * _STRING + 9 + 11
# One piece of evidence: frame (4), its kind (tag and value: 2), two strings' prefixes, a
# timestamp (frame, seconds, nanos).
_EVIDENCE = 4 + 2 + 2 * _STRING + 19
# A version vector entry or a cloud dot: frame (2), actor's prefix, counter (11).
_CONTEXT_ENTRY = 2 + _STRING + 11
# A state's head: subject (frame, tenant and id prefixes, kind), context's frame.
_HEAD = 4 + 2 * _STRING + 2 + 4
# An erase bound: its frame, timestamp (11) and the frame of the context it had seen.
_BOUND = 4 + 11 + 4
# A withdrawal: its frame, three strings' prefixes (context, key, source), a timestamp (11).
_WITHDRAWAL = 4 + 3 * _STRING + 11
# A keyed call: its frame, three strings' prefixes (agent, key, fingerprint), its kind (2), a
# timestamp (11) and a count (6).
_KEYED_CALL = 4 + 3 * _STRING + 2 + 11 + 6


def _utf8(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def observation_bytes(obs: Observation) -> int:
    """At most what ``obs`` adds to an encoded state."""
    size = (
        _OBSERVATION
        + _utf8(obs.dot.actor)
        + _utf8(obs.context)
        + _utf8(obs.key)
        + _utf8(obs.source)
        + _utf8(obs.statement)
        + _utf8(obs.origin)
    )
    for ev in obs.evidence:
        size += _EVIDENCE + _utf8(ev.ref) + _utf8(ev.quote)
    if obs.based_on is not None:  # the model its agent read: a frame (4) and its entries
        size += 4 + _context_bytes(obs.based_on)
    if obs.request_key:  # its string, and its index (tag and a varint of up to 5 bytes)
        size += _STRING + _utf8(obs.request_key) + 6
    return size


def dot_bytes(dot: Dot) -> int:
    """At most what one context entry (a vector entry or a cloud dot) adds to an encoding."""
    return _CONTEXT_ENTRY + _utf8(dot.actor)


def _context_bytes(context: CausalContext) -> int:
    size = 0
    for actor in context.vector:
        size += _CONTEXT_ENTRY + _utf8(actor)
    for dot in context.cloud:
        size += dot_bytes(dot)
    return size


def marks_bytes(state: SubjectState) -> int:
    """At most the encoding of ``state``'s erase bound, withdrawals and keyed calls."""
    size = 0
    if state.erased != NO_ERASE:
        size += _BOUND + _context_bytes(state.erased.seen)
    for context, key, source in state.withdrawals:
        size += _WITHDRAWAL + _utf8(context) + _utf8(key) + _utf8(source)
    for who, call in state.keyed_calls.items():
        size += keyed_call_bytes(who, call)
    return size


def keyed_call_bytes(who: tuple[str, str], call: KeyedCall) -> int:
    """At most what one keyed call adds to an encoded state."""
    return _KEYED_CALL + _utf8(who[0]) + _utf8(who[1]) + len(call.fingerprint)


def head_bytes(state: SubjectState) -> int:
    """At most the encoding of ``state`` without its observations: subject, context, erase bound,
    withdrawals and keyed calls."""
    subject = state.subject
    size = _HEAD + _utf8(subject.tenant) + _utf8(subject.id)
    return size + _context_bytes(state.context) + marks_bytes(state)


def state_bytes(state: SubjectState) -> int:
    """At most ``len(encode_state(state))``."""
    return head_bytes(state) + sum(map(observation_bytes, state.observations.values()))


@dataclass(frozen=True, slots=True)
class SubjectLimits:
    """Per subject. The defaults keep a subject at its limits well under a 4 MiB message: its
    state encodes to at most ``max_bytes`` (1 MiB) and its GetSelfModel reply to about 1.5
    times that (a belief repeats its winner's statement and key): tests/unit/test_bounds.py."""

    max_slots: int = 1000
    max_observations: int = 2000
    max_bytes: int = 1024 * 1024
    # The node's own slots (``own``: a group's members), which the agents' limits above do not
    # count, so no agent's beliefs can crowd them out: at most this many slots, twice as many
    # observations (concurrent adds of one member) and OWN_SLOT_BYTES per slot.
    max_members: int = 1000


# What one of the node's own slots may take of a state's encoding (a member's register with
# 128-character ids takes about 800 bytes). A subject's whole state stays within
# ``max_bytes + max_members * OWN_SLOT_BYTES``.
OWN_SLOT_BYTES = 1024


def own(context: str) -> bool:
    """A context of the node's own (node.validation.reserved: ``_members``, governance), kept
    apart from the agents' slots by the limits."""
    return context.startswith("_")


# What each limit is called where an operator sets it (cluster file [cluster.limits],
# `selfmodel node`).
SETTINGS = {
    "slots": ("max_subject_slots", "--max-subject-slots"),
    "observations": ("max_subject_observations", "--max-subject-observations"),
    "bytes": ("max_subject_bytes", "--max-subject-bytes"),
    "members": ("max_group_members", "--max-group-members"),
}


class Footprint(NamedTuple):
    """What a subject's state holds, as the limits count it: every slot and observation, and
    apart, those of the node's own contexts (``own``), which are within them."""

    slots: dict[tuple[str, str], int]  # observations per slot; never mutated once built
    observations: int
    observation_bytes: int
    own_slots: int = 0
    own_observations: int = 0
    own_bytes: int = 0

    @classmethod
    def of(cls, state: SubjectState) -> Footprint:
        return cls({}, 0, 0).changed((), state.observations.values())

    def changed(self, removed: Iterable[Observation], added: Iterable[Observation]) -> Footprint:
        """The footprint of this state without ``removed`` (each one of its observations) and
        with ``added`` (each new): ``Footprint.of`` of the state after, without a scan of it."""
        slots = dict(self.slots)
        count, size = self.observations, self.observation_bytes
        own_slots, own_count, own_size = self.own_slots, self.own_observations, self.own_bytes
        for obs in removed:
            slot = (obs.context, obs.key)
            left = slots[slot] - 1
            if left:
                slots[slot] = left
            else:
                del slots[slot]
            step = observation_bytes(obs)
            count -= 1
            size -= step
            if own(obs.context):
                own_slots -= not left
                own_count -= 1
                own_size -= step
        for obs in added:
            slot = (obs.context, obs.key)
            held = slots.get(slot, 0)
            slots[slot] = held + 1
            step = observation_bytes(obs)
            count += 1
            size += step
            if own(obs.context):
                own_slots += not held
                own_count += 1
                own_size += step
        return Footprint(slots, count, size, own_slots, own_count, own_size)


class Footprints:
    """The footprints of subjects' latest states, so that a write counts only its change.

    Kept by position (erase bound, context, observation count), not with the state, which would
    stay in memory past the store's cache; bounded by the slots they count (``max_slots``,
    about 100 bytes each), the least recently kept dropped first. Thread-safe.

    A kept footprint is a state's when its position is: whoever commits a state keeps its
    footprint, so another state with the same position would have to be one merged out of
    causal order (sync.delivery), which is then counted anew.
    """

    def __init__(self, max_slots: int = 200_000) -> None:
        self.max_slots = max_slots
        self._kept: dict[Subject, tuple[EraseBound, CausalContext, Footprint]] = {}
        self._slots = 0
        self._lock = threading.Lock()

    def of(self, state: SubjectState) -> Footprint:
        kept = self._kept.get(state.subject)
        if (
            kept is not None
            and kept[0] == state.erased
            and kept[2].observations == len(state.observations)
            and kept[1] == state.context
        ):
            return kept[2]
        footprint = Footprint.of(state)
        self.remember(state, footprint)
        return footprint

    def remember(self, state: SubjectState, footprint: Footprint) -> None:
        with self._lock:
            replaced = self._kept.pop(state.subject, None)
            if replaced is not None:
                self._slots -= len(replaced[2].slots)
            self._kept[state.subject] = (state.erased, state.context, footprint)
            self._slots += len(footprint.slots)
            while self._slots > self.max_slots and len(self._kept) > 1:
                oldest = next(iter(self._kept))
                self._slots -= len(self._kept.pop(oldest)[2].slots)

    def __len__(self) -> int:
        return len(self._kept)


class Excess(NamedTuple):
    """A limit a state passes: which (a key of SETTINGS), how much it holds, and the limit;
    ``unit``: what it counts, when not the limit's name."""

    limit: str
    value: int
    maximum: int
    unit: str = ""

    def describe(self) -> str:
        setting, option = SETTINGS[self.limit]
        where = f", or selfmodel node {option}" if option else ""
        return (
            f"would hold {self.value} {self.unit or self.limit}, more than the limit of "
            f"{self.maximum} per subject ({setting} in the cluster file's [cluster.limits]{where})"
        )


def excess(state: SubjectState, footprint: Footprint, limits: SubjectLimits) -> Excess | None:
    """The first limit ``state`` (whose footprint is ``footprint``) passes, or None. The agents'
    limits count the agents' contexts (and the state's head); the node's own contexts (``own``)
    have theirs, ``max_members``: the whole state stays within ``max_bytes + max_members *
    OWN_SLOT_BYTES``."""
    return _agents_excess(state, footprint, limits) or _own_excess(footprint, limits)


def grown_excess(
    state: SubjectState, before: Footprint, after: Footprint, limits: SubjectLimits
) -> Excess | None:
    """The first limit ``state`` (whose footprint is ``after``, and was ``before``) passes
    where it grew: a subject past one limit (lowered since) may still take what does not grow
    what that limit counts."""
    found = _agents_excess(state, after, limits)
    if found is not None and grew(before, after, found.limit):
        return found
    found = _own_excess(after, limits)
    if found is not None and grew(before, after, found.limit):
        return found
    return None


def _agents_excess(
    state: SubjectState, footprint: Footprint, limits: SubjectLimits
) -> Excess | None:
    slots = len(footprint.slots) - footprint.own_slots
    if slots > limits.max_slots:
        return Excess("slots", slots, limits.max_slots)
    observations = footprint.observations - footprint.own_observations
    if observations > limits.max_observations:
        return Excess("observations", observations, limits.max_observations)
    size = head_bytes(state) + footprint.observation_bytes - footprint.own_bytes
    if size > limits.max_bytes:
        return Excess("bytes", size, limits.max_bytes)
    return None


def _own_excess(footprint: Footprint, limits: SubjectLimits) -> Excess | None:
    most = limits.max_members
    if footprint.own_slots > most:
        return Excess("members", footprint.own_slots, most)
    if footprint.own_observations > 2 * most:
        return Excess("members", footprint.own_observations, 2 * most, "member observations")
    if footprint.own_bytes > most * OWN_SLOT_BYTES:
        return Excess("members", footprint.own_bytes, most * OWN_SLOT_BYTES, "bytes of members")
    return None


def grew(before: Footprint, after: Footprint, limit: str = "") -> bool:
    """True when ``after`` holds more of anything the limits count than ``before``; with a
    ``limit`` (a key of SETTINGS), of what that limit counts: the node's own contexts for
    ``members``, the agents' for the others (a subject past one, lowered since it grew, may
    still take what the other counts)."""
    if limit == "members":
        return (
            after.own_slots > before.own_slots
            or after.own_observations > before.own_observations
            or after.own_bytes > before.own_bytes
        )
    if limit:
        return (
            len(after.slots) - after.own_slots > len(before.slots) - before.own_slots
            or after.observations - after.own_observations
            > before.observations - before.own_observations
            or after.observation_bytes - after.own_bytes
            > before.observation_bytes - before.own_bytes
        )
    return (
        len(after.slots) > len(before.slots)
        or after.observations > before.observations
        or after.observation_bytes > before.observation_bytes
    )


# The most removed dots beyond a version vector's prefixes that ``split`` spells out.
MAX_SPELLED = 100_000


def split(state: SubjectState, max_bytes: int) -> list[SubjectState]:
    """``state`` as parts of at most ``max_bytes`` each (by ``state_bytes``; a single observation
    larger than that is a part of its own), whose merge in any order equals ``state``.

    The erase bound and withdrawals come first (one part, whatever its size), the keyed calls
    next, then the parts that carry removed dots only: a receiver that has merged some parts but
    not yet the others then never shows an observation a part it has merged erased or removed.
    A state that removed more than MAX_SPELLED dots past its actors' first observations is not
    split (one part: itself).
    """
    subject = state.subject
    removed = _removed(state.context, set(state.observations))
    if removed is None:
        return [state]
    prefixes, spelled = removed
    budget = max_bytes - head_bytes(SubjectState(subject))
    parts: list[SubjectState] = []
    if state.erased != NO_ERASE or state.withdrawals:
        parts.append(SubjectState(subject, state.erased, withdrawals=state.withdrawals))
    calls: dict[tuple[str, str], KeyedCall] = {}
    size = 0
    for who, call in sorted(state.keyed_calls.items()):
        step = keyed_call_bytes(who, call)
        if calls and size + step > budget:
            parts.append(SubjectState(subject, keyed_calls=calls))
            calls, size = {}, 0
        calls[who] = call
        size += step
    if calls:
        parts.append(SubjectState(subject, keyed_calls=calls))
    vector: dict[str, int] = prefixes
    dots: list[Dot] = []
    size = sum(_CONTEXT_ENTRY + _utf8(actor) for actor in prefixes)
    for dot in spelled:
        step = dot_bytes(dot)
        if (vector or dots) and size + step > budget:
            parts.append(SubjectState(subject, context=_context(vector, dots)))
            vector, dots, size = {}, [], 0
        dots.append(dot)
        size += step
    if vector or dots:
        parts.append(SubjectState(subject, context=_context(vector, dots)))
    chunk: dict[Dot, Observation] = {}
    size = 0
    for dot in sorted(state.observations):
        obs = state.observations[dot]
        step = observation_bytes(obs) + dot_bytes(dot)
        if chunk and size + step > budget:
            parts.append(SubjectState(subject, NO_ERASE, CausalContext.of(chunk), chunk))
            chunk, size = {}, 0
        chunk[dot] = obs
        size += step
    if chunk:
        parts.append(SubjectState(subject, NO_ERASE, CausalContext.of(chunk), chunk))
    return parts or [SubjectState(subject)]


def _context(vector: dict[str, int], dots: list[Dot]) -> CausalContext:
    return CausalContext.of(dots).join(CausalContext(vector)) if vector else CausalContext.of(dots)


def _removed(context: CausalContext, carried: set[Dot]) -> tuple[dict[str, int], list[Dot]] | None:
    """The dots of ``context`` that are not ``carried``: each actor's range up to its first
    carried dot, and every other dot spelled out (None: more than MAX_SPELLED of those)."""
    by_actor: dict[str, list[int]] = {}
    for dot in carried:
        by_actor.setdefault(dot.actor, []).append(dot.counter)
    prefixes: dict[str, int] = {}
    spelled: list[Dot] = []
    for actor, top in context.vector.items():
        counters = sorted(c for c in by_actor.get(actor, ()) if c <= top)
        bounds = [*counters, top + 1]
        if bounds[0] > 1:
            prefixes[actor] = bounds[0] - 1
        for low, high in itertools.pairwise(bounds):
            if len(spelled) + high - low - 1 > MAX_SPELLED:
                return None
            spelled.extend(Dot(actor, c) for c in range(low + 1, high))
    spelled.extend(dot for dot in sorted(context.cloud) if dot not in carried)
    return prefixes, spelled
