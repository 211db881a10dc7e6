"""One delta-state CRDT per subject: ``(erase bound, causal context, observations, withdrawals,
keyed calls)``.

Every event (observe, retract, erase) gets a fresh dot, and dots are never reused: an erase
keeps the context, so counters go on after it. An observe's delta carries its new observation
and, in its context, the dots it supersedes.

A retract records a withdrawal: ``(context, key, source) -> timestamp``. Every observation of
that source in that slot from before the retract's timestamp is withdrawn, wherever it was
written, including ones the retracting replica had not seen; a later one (the source's next
statement) is not. Withdrawals merge by the later timestamp per (slot, source), and one at or
below the erase bound's timestamp says nothing the bound does not (it is dropped). The retract's
delta also names, in its context, the dots the retracting replica withdrew.

An erase records a bound: its hybrid timestamp and the causal context of the replica that
erased. An observation is erased by a bound iff it happened before the erase: its dot is in the
bound's context (the eraser had seen it), or its timestamp is strictly below the bound's. The
timestamp test is what reaches observations the eraser had not seen: hybrid clocks order every
event after everything its replica had merged (a replica's clock moves past every timestamp it
merges, erase bounds included), so an observation written after its replica merged the erase
has a later timestamp and is never erased by it, and one written anywhere before the erase's
timestamp is, wherever and whenever it arrives. A concurrent write (on the other side of a
partition) is ordered by the same total order on every node: before the erase's timestamp it is
erased, after it it stays. Bounds merge by maximum of timestamps and union of contexts, so
concurrent erases compose and the later bound wins. A state's observations are never erased by
its own bound nor by its own withdrawals (merge drops them as soon as either reaches them).

A keyed call records a Retract or Forget made with an idempotency key: ``(agent, key) ->
KeyedCall``, so a retry of it on any replica that merged it is answered as the first call and
records nothing new. Per (agent, key) the greater call holds (by timestamp, then its fields), and
a state keeps the ``MAX_KEYED_CALLS`` greatest: the join of two states' calls is that selection
over their union, a function of the union alone, so it is commutative, associative and
idempotent. Calls are neither erased nor withdrawn: they hold no statement, only the call's key,
caller, fingerprint and answer.

A delta is itself a state, so ``merge`` is commutative, associative and idempotent. The
context alone is a state's position (handoff tokens): a bound reaches a replica only together
with its erase's dot, and a withdrawal with its retract's dot, so a replica whose context holds
those events has merged what they record.

The context pins the observations down only when deltas are merged in causal order (a delta
after the deltas of the dots it removes): a replica that merged an observe delta but not the
delta of the dot it superseded holds that dot in its context while still showing what the
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


class EraseBound(NamedTuple):
    """What the subject's erases reach: everything before ``hlc`` or with its dot in ``seen``.

    ``hlc`` 0 with an empty ``seen`` (the default) is no erase at all.
    """

    hlc: int = 0
    seen: CausalContext = CausalContext()

    def erases(self, obs: Observation) -> bool:
        return obs.hlc < self.hlc or obs.dot in self.seen

    def join(self, other: EraseBound) -> EraseBound:
        """The bound of both erases: the later timestamp, every dot either had seen."""
        if other.hlc <= self.hlc and self.seen.includes(other.seen):
            return self
        if self.hlc <= other.hlc and other.seen.includes(self.seen):
            return other
        return EraseBound(max(self.hlc, other.hlc), self.seen.join(other.seen))


NO_ERASE = EraseBound()

# (context, key, source) -> the timestamp before which that source's observations in that slot
# are withdrawn.
Withdrawals = Mapping[tuple[str, str, str], int]
NO_WITHDRAWALS: Withdrawals = MappingProxyType({})


def withdrawn(withdrawals: Withdrawals, obs: Observation) -> bool:
    return obs.hlc < withdrawals.get((obs.context, obs.key, obs.source), 0)


class KeyedCall(NamedTuple):
    """A Retract or Forget made with an idempotency key, as every replica recognises its retry
    (node.idempotency): what it was, the fingerprint of its request and its answer."""

    hlc: int  # the call's timestamp: its withdrawal's or its erase bound's
    op: str  # "retract" or "forget"
    fingerprint: bytes  # of the request without its key
    retracted: int = 0  # a Retract's answer: the observations it withdrew where it was taken


KEYED_CALL_OPS = ("retract", "forget")
FINGERPRINT_BYTES = 16
# How many keyed calls a state keeps (the greatest): the same on every replica, as merge needs.
MAX_KEYED_CALLS = 64

# (agent, idempotency key) -> the call; the tenant is the subject's.
KeyedCalls = Mapping[tuple[str, str], KeyedCall]
NO_KEYED_CALLS: KeyedCalls = MappingProxyType({})


def _call_rank(item: tuple[tuple[str, str], KeyedCall]) -> tuple[int, tuple[str, str], KeyedCall]:
    (who, call) = item
    return call.hlc, who, call


class SubjectState(NamedTuple):
    """Immutable by convention: ``observations`` is never mutated after construction.

    The value types built on every write (this, Observation, Evidence, Delta and the engine's
    inputs and results) are tuples: one is built in C, where a frozen dataclass sets each
    field through ``object.__setattr__``, several times slower for the ten or so each write
    builds.
    """

    subject: Subject
    erased: EraseBound = NO_ERASE
    context: CausalContext = CausalContext()
    observations: Mapping[Dot, Observation] = MappingProxyType({})
    withdrawals: Withdrawals = NO_WITHDRAWALS
    keyed_calls: KeyedCalls = NO_KEYED_CALLS

    def next_dot(self, actor: str) -> Dot:
        return Dot(actor, self.context.max_counter(actor) + 1)

    def covers(self, context: CausalContext) -> bool:
        """True when this state has merged the position ``context`` (a bound comes with its
        erase's dot, so the context says which erases were merged too)."""
        return self.context.includes(context)

    def digest(self) -> bytes:
        return digest(
            self.erased, self.context, self.observations, self.withdrawals, self.keyed_calls
        )


def merge(a: SubjectState, b: SubjectState) -> SubjectState:
    if a.subject != b.subject:
        raise ValueError(f"cannot merge states of {a.subject} and {b.subject}")
    erased = a.erased.join(b.erased)
    a_obs, b_obs = a.observations, b.observations
    seen = b.context
    if sum(seen.vector.values()) + len(seen.cloud) < len(a_obs) // 2:
        # A delta into a larger state: walk the delta's dots, not the state's (the same result).
        observations = dict(a_obs)
        for dot in seen.dots():
            if dot in observations and dot not in b_obs:
                del observations[dot]
    else:
        observations = {dot: obs for dot, obs in a_obs.items() if dot in b_obs or dot not in seen}
    for dot, obs in b_obs.items():
        if dot not in a.context:
            observations[dot] = obs
    withdrawals = _join_withdrawals(a.withdrawals, b.withdrawals, erased)
    # A side's observations are spared by its own bound and withdrawals: only what grew
    # removes more.
    if erased != a.erased or erased != b.erased:
        erases = erased.erases
        observations = {dot: obs for dot, obs in observations.items() if not erases(obs)}
    if withdrawals != a.withdrawals or withdrawals != b.withdrawals:
        observations = {
            dot: obs for dot, obs in observations.items() if not withdrawn(withdrawals, obs)
        }
    context = a.context.join(b.context)
    calls = join_keyed_calls(a.keyed_calls, b.keyed_calls)
    return SubjectState(a.subject, erased, context, observations, withdrawals, calls)


def _join_withdrawals(a: Withdrawals, b: Withdrawals, erased: EraseBound) -> Withdrawals:
    """The later withdrawal per (slot, source), less those the bound makes moot."""
    if not b and not a:
        return a
    joined = dict(a)
    for slot, hlc in b.items():
        if hlc > joined.get(slot, 0):
            joined[slot] = hlc
    if erased.hlc:
        joined = {slot: hlc for slot, hlc in joined.items() if hlc > erased.hlc}
    if joined == a:
        return a
    return joined


def join_keyed_calls(a: KeyedCalls, b: KeyedCalls) -> KeyedCalls:
    """The greater call per (agent, key), the ``MAX_KEYED_CALLS`` greatest of those kept."""
    if not b:
        return a
    joined = dict(a)
    for who, call in b.items():
        have = joined.get(who)
        if have is None or (call.hlc, call) > (have.hlc, have):
            joined[who] = call
    if len(joined) > MAX_KEYED_CALLS:
        kept = sorted(joined.items(), key=_call_rank, reverse=True)[:MAX_KEYED_CALLS]
        joined = dict(kept)
    if joined == a:
        return a
    return joined


def observed_change(
    old: SubjectState, new: SubjectState, delta: SubjectState
) -> tuple[list[Dot], list[Dot]] | None:
    """The dots of ``old`` gone from ``new`` and the dots of ``new`` not in ``old``, where
    ``new`` is ``merge(old, delta)`` for a delta of observes (no erase bound, no withdrawal),
    found from the delta's few dots instead of both states'; None for any other delta."""
    seen = delta.context
    if delta.erased != NO_ERASE or delta.withdrawals or delta.keyed_calls or len(seen.cloud) > 64:
        return None
    if sum(seen.vector.values()) > 64:
        return None
    was, now = old.observations, new.observations
    gone = [dot for dot in seen.dots() if dot in was and dot not in now]
    added = [dot for dot in delta.observations if dot in now and dot not in was]
    if len(now) != len(was) - len(gone) + len(added):
        return None  # not merge(old, delta): no shortcut
    return gone, added


def observe_delta(
    state: SubjectState, observation: Observation, supersedes: Iterable[Dot] = ()
) -> SubjectState:
    """The delta of a new observation (whose dot is ``state.next_dot(actor)``)."""
    dots = [observation.dot, *supersedes]
    return SubjectState(
        state.subject, NO_ERASE, CausalContext.of(dots), {observation.dot: observation}
    )


def apply_observe(
    state: SubjectState, observation: Observation, supersedes: Iterable[Dot] = ()
) -> SubjectState:
    """``merge(state, observe_delta(state, observation, supersedes))``, without a general merge.

    For the replica making the observation: its dot is ``state.next_dot(actor)``, every
    superseded dot one of ``state``'s observations, and its timestamp after ``state``'s bound
    (the replica's clock has passed it). So the result is ``state`` without those, with the
    observation, and with its dot in the context.
    """
    observations = dict(state.observations)
    for dot in supersedes:
        del observations[dot]
    observations[observation.dot] = observation
    return SubjectState(
        state.subject,
        state.erased,
        state.context.add(observation.dot),
        observations,
        state.withdrawals,
        state.keyed_calls,
    )


def retract_delta(
    state: SubjectState,
    actor: str,
    context: str,
    key: str,
    source: str,
    hlc: int,
    calls: KeyedCalls = NO_KEYED_CALLS,
) -> SubjectState:
    """Withdraws ``source``'s observations in the slot from before ``hlc`` (the retract's
    timestamp, after everything ``state``'s replica merged), wherever written; the delta's
    context holds the retract's dot and the dots ``state`` shows withdrawn. ``calls``: the
    retract's keyed call, if it has a key."""
    dots = [state.next_dot(actor), *slot_dots(state, context, key, source)]
    withdrawal = {(context, key, source): hlc}
    return SubjectState(state.subject, NO_ERASE, CausalContext.of(dots), {}, withdrawal, calls)


def clear_delta(state: SubjectState, actor: str, context: str, key: str) -> SubjectState:
    """Removes the slot's observations ``state`` holds, and only those (observed-remove: one
    written concurrently, unseen here, survives): the delta's context holds the clear's dot
    (``state.next_dot(actor)``) and theirs, and it carries no observation."""
    dots = [state.next_dot(actor), *slot_dots(state, context, key)]
    return SubjectState(state.subject, NO_ERASE, CausalContext.of(dots), {})


def erase_delta(
    state: SubjectState, actor: str, hlc: int, calls: KeyedCalls = NO_KEYED_CALLS
) -> SubjectState:
    """Erases every observation before ``hlc`` (the erase's timestamp, after everything
    ``state``'s replica merged) and every one ``state`` has seen: the bound, and the erase's dot
    (``state.next_dot(actor)``) as the delta's context. ``calls``: the erase's keyed call."""
    bound = EraseBound(hlc, state.context).join(state.erased)
    dot = CausalContext.of([state.next_dot(actor)])
    return SubjectState(state.subject, bound, dot, {}, NO_WITHDRAWALS, calls)


def without_erased(state: SubjectState, bound: EraseBound) -> SubjectState:
    """``state`` without the observations ``bound`` erases, its bound and context unchanged:
    merging it anywhere equals merging ``state`` and then the erase (what an outbox keeps of a
    delta once the subject is erased)."""
    observations = {d: o for d, o in state.observations.items() if not bound.erases(o)}
    return state._replace(observations=observations)


def digest(
    erased: EraseBound,
    context: CausalContext,
    observed: Iterable[Dot] = (),
    withdrawals: Withdrawals = NO_WITHDRAWALS,
    calls: KeyedCalls = NO_KEYED_CALLS,
) -> bytes:
    """An exact digest of a state: its bound, context, the dots of its observations, its
    withdrawals and its keyed calls."""
    observed_part = b"".join(map(dot_part, sorted(observed)))
    return digest_with(erased, context, observed_part, withdrawals, calls)


def dot_part(dot: Dot) -> bytes:
    """What an observation's dot adds to its state's digest."""
    return b"o%s\x00%d\x00" % (dot.actor.encode(), dot.counter)


def digest_with(
    erased: EraseBound,
    context: CausalContext,
    observed: bytes,
    withdrawals: Withdrawals = NO_WITHDRAWALS,
    calls: KeyedCalls = NO_KEYED_CALLS,
) -> bytes:
    """``digest``, given its observations' part: their ``dot_part``s joined in dot order (a
    hash fed two pieces equals one fed them joined, so a writer that keeps the parts in order
    hashes a large state without a walk of it in Python; sync.codec keeps them)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(erased.hlc.to_bytes(8, "big"))
    for actor, counter in sorted(erased.seen.vector.items()):
        h.update(b"e%s\x00%d\x00" % (actor.encode(), counter))
    for dot in sorted(erased.seen.cloud):
        h.update(b"f%s\x00%d\x00" % (dot.actor.encode(), dot.counter))
    for actor, counter in sorted(context.vector.items()):
        h.update(b"v%s\x00%d\x00" % (actor.encode(), counter))
    for dot in sorted(context.cloud):
        h.update(b"c%s\x00%d\x00" % (dot.actor.encode(), dot.counter))
    h.update(observed)
    for (ctx, key, source), hlc in sorted(withdrawals.items()):
        h.update(b"w%s\x00%s\x00%s\x00%d\x00" % (ctx.encode(), key.encode(), source.encode(), hlc))
    for (agent, key), call in sorted(calls.items()):  # none: the digest of a state before calls
        h.update(b"k%s\x00%s\x00%d\x00" % (agent.encode(), key.encode(), call.hlc))
        h.update(b"%s\x00%d\x00%s" % (call.op.encode(), call.retracted, call.fingerprint))
    return h.digest()


def bound_digest(subject_key: bytes, state_digest: bytes) -> bytes:
    """A state's digest bound to its subject (its storage key): a digest does not name its
    subject, so subjects with equal states have equal digests, never equal bound ones. The
    digest is of a fixed size, so digest + key is unambiguous."""
    return hashlib.blake2b(state_digest + subject_key, digest_size=16).digest()


def touched_slots(old: SubjectState | None, new: SubjectState) -> set[tuple[str, str]]:
    """The slots (context, key) whose observations differ between two states of a subject:
    those of the dots one holds and the other does not (dots are never reused, and an
    observation never changes)."""
    if old is None:
        return {(o.context, o.key) for o in new.observations.values()}
    was, now = old.observations, new.observations
    found = {(was[d].context, was[d].key) for d in was.keys() - now.keys()}
    found.update((now[d].context, now[d].key) for d in now.keys() - was.keys())
    return found


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


def register(state: SubjectState, context: str, key: str) -> Observation | None:
    """A register slot's value (``node.engine.Engine.put``): its newest observation by
    (timestamp, dot), the same on every replica holding the same state; None when cleared."""
    found = slot_observations(state, context, key)
    return found[-1] if found else None
