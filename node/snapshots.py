"""Resolved snapshots: each subject's model, resolved once per state and kept until it changes.

A subject's beliefs are a pure function of its state and the policy book (node.resolution), and
a slot's belief depends on that slot's observations alone. A snapshot keeps its state's slot
index (the observations grouped by slot) and each slot's belief; the snapshot of the subject's
next state re-resolves only the slots whose observations differ. An index follows the subject:
a local write hands it its own change (``after_write``, the slot's work), any other change is
the difference of the two states' dot sets (dots are never reused and an observation never
changes, so that difference is exactly what changed, whatever happened in between: merges,
retracts, erases, held-back deltas). An index made from another keeps the very tuples of the
slots it did not change, so the slots to resolve again are those whose tuples are new
(``touched``). A snapshot built this way equals one resolved from scratch
(tests/unit/test_snapshots.py checks it).

Nothing in a snapshot depends on the read's instant: recency decays within a slot, never
against the reader's clock (docs/semantics.md), so a snapshot never grows stale with time, only
with a change, and only ``resolved_at`` is stamped per read.

A snapshot also keeps the serialized replies built from it (``replies``, filled by
node.convert), so a read of an unchanged subject serializes nothing. The snapshots of all
subjects together stay within a memory budget (``Snapshots``): the least recently used go first,
and a subject whose snapshot went is resolved again, whole, on its next read. An index kept for
writes alone holds its subject's whole state, which the state cache counts: it goes when the
cache drops that state (``Snapshots.state_dropped``).

A snapshot is of one book (the policies and reliabilities it was resolved with): its tenant's
(learned weights are per tenant, node.reliability.Books). When another book is put in force for
a tenant and what it changes is known (``Snapshots.rebooked``: the tenant's learned weights of
some contexts moved, node.learning), a snapshot of that tenant's older book is re-resolved in
those contexts' slots only; otherwise whole. Other tenants' snapshots keep their book.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple

from node.locks import SubjectLocks
from node.policy import PolicyBook
from node.quality import NO_TALLIES, Quality, Tallies, moved
from node.resolution import NO_WITHDRAWN, Belief, Withdrawn, counted, explain_slot
from sync.causal import Dot
from sync.codec import encode_token
from sync.crdt import SubjectState
from sync.observation import Observation, Subject

Slot = tuple[str, str]  # (context, key)

# Serialized replies kept per snapshot (per filter and detail asked for); the oldest goes first.
MAX_REPLIES = 8
# Books in force remembered per tenant with what each changed (Snapshots.rebooked): a snapshot
# resolved under an older one is resolved again whole.
MAX_BOOKS = 32


@dataclass(frozen=True, slots=True, eq=False)
class SlotIndex:
    """One state of a subject with its observations grouped by slot."""

    state: SubjectState
    slots: Mapping[Slot, tuple[Observation, ...]]

    def slot(self, context: str, key: str) -> tuple[Observation, ...]:
        return self.slots.get((context, key), ())


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """The resolved model of one state of a subject."""

    index: SlotIndex
    policies: PolicyBook
    by_slot: Mapping[Slot, Belief]
    beliefs: tuple[Belief, ...]  # ordered by (context, key)
    token: str  # the handoff token of the state's position
    # The tenant's withdrawals it was resolved with (node.withdrawals): served only while they
    # are the tenant's current ones (the very object).
    withdrawn: Withdrawn = field(default_factory=lambda: NO_WITHDRAWN)
    # Its beliefs tallied per context, and the winner changes since the snapshot it was
    # advanced from (node.quality).
    tallies: Tallies = field(default_factory=dict)
    flips: Mapping[str, int] = field(default_factory=dict)
    # Serialized replies built from it (node.convert), by what they were built for.
    replies: dict[Hashable, bytes] = field(default_factory=dict)

    @property
    def state(self) -> SubjectState:
        return self.index.state

    @property
    def cost(self) -> int:
        """About the memory it takes, with the state it holds (erring high): 1 KiB, 0.75 KiB per
        observation (node.store.cache_cost's estimate), 0.5 KiB per belief and 0.2 KiB per
        supporter or dissenter, plus its replies' bytes."""
        positions = sum(len(b.supporters) + len(b.dissenters) for b in self.beliefs)
        replies = sum(len(r) for r in self.replies.values())
        observations = len(self.state.observations)
        return 1024 + 768 * observations + 512 * len(self.beliefs) + 192 * positions + replies


def index_of(state: SubjectState) -> SlotIndex:
    slots: dict[Slot, list[Observation]] = {}
    for obs in state.observations.values():
        slots.setdefault((obs.context, obs.key), []).append(obs)
    return SlotIndex(state, {s: tuple(o) for s, o in slots.items()})


def advance_index(previous: SlotIndex, state: SubjectState) -> SlotIndex:
    """The index of ``state`` (another state of the same subject), from ``previous``: its
    unchanged slots keep their very tuples, and the work is the difference of the two states'
    dot sets (set operations in C), not a walk of the subject."""
    if previous.state is state:
        return previous
    old, new = previous.state.observations, state.observations
    gone = old.keys() - new.keys()
    changed: dict[Slot, list[Observation]] = {}
    for dot in gone:
        obs = old[dot]
        changed.setdefault((obs.context, obs.key), [])
    for dot in new.keys() - old.keys():
        obs = new[dot]
        changed.setdefault((obs.context, obs.key), []).append(obs)
    return _replaced(previous.slots, state, changed, gone)


def after_write(
    previous: SlotIndex, state: SubjectState, removed: Iterable[Dot], added: Observation
) -> SlotIndex:
    """The index of ``state``: ``previous``'s state with ``added`` written to its slot and
    ``removed`` (dots of that slot) gone. The work is the slot's."""
    slot = (added.context, added.key)
    return _replaced(previous.slots, state, {slot: [added]}, set(removed))


def _replaced(
    slots: Mapping[Slot, tuple[Observation, ...]],
    state: SubjectState,
    changed: dict[Slot, list[Observation]],
    gone: AbstractSet[Dot],
) -> SlotIndex:
    """``slots`` with each changed slot's observations less ``gone``, plus the added ones."""
    out = dict(slots)
    for slot, added in changed.items():
        kept = [o for o in out.get(slot, ()) if o.dot not in gone]
        kept += added
        if kept:
            out[slot] = tuple(kept)
        else:
            out.pop(slot, None)
    return SlotIndex(state, out)


def touched(previous: SlotIndex, index: SlotIndex) -> set[Slot]:
    """The slots whose observations may differ between two indexes of one subject: those whose
    tuples are not the very same objects (an index made from another keeps the tuples of the
    slots it did not change), in O(slots)."""
    before = previous.slots
    found = {slot for slot, obs in index.slots.items() if before.get(slot) is not obs}
    found.update(before.keys() - index.slots.keys())
    return found


def resolve_snapshot(
    state: SubjectState, policies: PolicyBook, withdrawn: Withdrawn = NO_WITHDRAWN
) -> Snapshot:
    """The snapshot of ``state``, every slot resolved."""
    index = index_of(state)
    return _snapshot(index, policies, withdrawn, {}, set(index.slots), NO_TALLIES)


def advance(previous: Snapshot, index: SlotIndex, withdrawn: Withdrawn | None = None) -> Snapshot:
    """The snapshot of ``index``'s state (another state of the subject, under the same
    policies, and ``withdrawn``, by default the same withdrawals): ``previous`` with the slots
    whose observations differ resolved again, and those holding an observation of a source
    whose withdrawal changed."""
    slots = touched(previous.index, index)
    if withdrawn is None:
        withdrawn = previous.withdrawn
    elif withdrawn is not previous.withdrawn:
        slots |= sources_in(index, changed_sources(previous.withdrawn, withdrawn))
    return _snapshot(index, previous.policies, withdrawn, previous.by_slot, slots, previous.tallies)


def changed_sources(before: Withdrawn, after: Withdrawn) -> set[str]:
    """The sources whose withdrawal differs between two withdrawals of a tenant."""
    return {s for s in before.keys() | after.keys() if before.get(s) != after.get(s)}


def sources_in(index: SlotIndex, sources: AbstractSet[str]) -> set[Slot]:
    """The slots of ``index`` holding an observation of one of ``sources``."""
    if not sources:
        return set()
    return {slot for slot, found in index.slots.items() if any(o.source in sources for o in found)}


def rebook(
    previous: Snapshot,
    policies: PolicyBook,
    contexts: AbstractSet[str],
    index: SlotIndex,
    withdrawn: Withdrawn | None = None,
) -> Snapshot:
    """The snapshot of ``index``'s state under ``policies``, a book that resolves only the
    slots of ``contexts`` differently from ``previous``'s (and ``withdrawn``, by default the
    same withdrawals): those, the changed slots and those of a source whose withdrawal changed
    resolved again, the rest kept."""
    again = touched(previous.index, index)
    again.update(slot for slot in index.slots if slot[0] in contexts)
    if withdrawn is None:
        withdrawn = previous.withdrawn
    elif withdrawn is not previous.withdrawn:
        again |= sources_in(index, changed_sources(previous.withdrawn, withdrawn))
    return _snapshot(index, policies, withdrawn, previous.by_slot, again, previous.tallies)


def _snapshot(
    index: SlotIndex,
    policies: PolicyBook,
    withdrawn: Withdrawn,
    resolved: Mapping[Slot, Belief],
    touched: set[Slot],
    tallies: Tallies,
) -> Snapshot:
    by_slot = dict(resolved)
    for slot in touched:
        found = counted(index.slots.get(slot, ()), withdrawn)
        if found:
            by_slot[slot] = explain_slot(found, policies.for_context(slot[0]), policies).belief
        else:
            by_slot.pop(slot, None)
    # A node's own contexts (node.validation.reserved: a leading "_") are never shown.
    beliefs = tuple(by_slot[s] for s in sorted(by_slot) if not s[0].startswith("_"))
    state = index.state
    token = encode_token({state.subject: state.context})
    tallies, flips = moved(tallies, [(resolved.get(s), by_slot.get(s)) for s in touched])
    return Snapshot(index, policies, by_slot, beliefs, token, withdrawn, tallies, flips)


class _Kept(NamedTuple):
    snapshot: Snapshot | None
    latest: SlotIndex  # the latest index (a write may have moved it past the snapshot's)
    cost: int


class Snapshots:
    """The latest snapshot and slot index of each subject used, within ``budget_bytes`` (least
    recently used dropped first; never the one just kept, however large). Thread-safe:
    ``resolve`` and ``index`` of one subject run one at a time (readers that find a snapshot
    stale at once wait for one of them to resolve it, then share it)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Subject, _Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._subject_locks = SubjectLocks()
        # The tallies of the snapshots kept (node.quality): /metrics' model quality.
        self.quality = Quality()
        # Per tenant, the latest books put in force for its subjects, each with the contexts it
        # resolves differently from the one before (``rebooked``); the oldest first, at most
        # MAX_BOOKS.
        self._books: dict[str, list[tuple[PolicyBook, frozenset[str]]]] = {}

    def rebooked(
        self, tenant: str, old: PolicyBook, new: PolicyBook, contexts: frozenset[str] | None
    ) -> None:
        """Records that ``new`` replaces ``old`` for ``tenant``'s subjects and resolves only
        ``contexts`` differently (None: any context may differ): a snapshot of the tenant
        resolved under a book recorded here is then re-resolved in the contexts changed since,
        not whole."""
        with self._lock:
            if contexts is None:
                self._books[tenant] = [(new, frozenset())]
                return
            chain = self._books.get(tenant)
            if not chain or chain[-1][0] is not old:
                chain = self._books[tenant] = [(old, frozenset())]
            chain.append((new, contexts))
            del chain[:-MAX_BOOKS]

    def rebooked_all(self) -> None:
        """Every tenant's book was replaced by one that may differ in any context (the
        operators' changed): every snapshot is resolved again whole."""
        with self._lock:
            self._books = {}

    def _changed_between(
        self, tenant: str, old: PolicyBook, new: PolicyBook
    ) -> frozenset[str] | None:
        """The contexts resolved differently under ``new`` than under ``old``, both books of
        ``tenant`` (None: unknown)."""
        with self._lock:
            chain = self._books.get(tenant, [])
            books = [b for b, _ in chain]
            at = next((i for i, b in enumerate(books) if b is old), None)
            to = next((i for i, b in enumerate(books) if b is new), None)
            if at is None or to is None or to < at:
                return None
            return frozenset().union(*(c for _, c in chain[at + 1 : to + 1]))

    def serialized(self, subject: Subject) -> threading.Lock:
        """The lock under which ``subject``'s snapshot and index change (one per stripe)."""
        return self._subject_locks.of(subject)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def cost_bytes(self) -> int:
        """The estimated memory of what is kept (Snapshot.cost, or the index's, when kept)."""
        return self._bytes

    def get(self, subject: Subject) -> Snapshot | None:
        kept = self._entries.get(subject)
        return None if kept is None else kept.snapshot

    def resolve(
        self, state: SubjectState, policies: PolicyBook, withdrawn: Withdrawn = NO_WITHDRAWN
    ) -> tuple[Snapshot, bool]:
        """The snapshot of ``state`` under ``policies`` and its tenant's ``withdrawn``, kept;
        True when built from the subject's previous snapshot or index (only the changed slots
        resolved), False when resolved whole."""
        with self.serialized(state.subject):
            return self.resolve_locked(state, policies, withdrawn)

    def resolve_locked(
        self, state: SubjectState, policies: PolicyBook, withdrawn: Withdrawn = NO_WITHDRAWN
    ) -> tuple[Snapshot, bool]:
        """``resolve``, with ``serialized(state.subject)`` held by the caller."""
        kept = self._entries.get(state.subject)
        previous = None if kept is None else kept.snapshot
        if previous is not None and previous.policies is policies:
            if previous.state is state and previous.withdrawn is withdrawn:
                return previous, True
            assert kept is not None
            snapshot = advance(previous, advance_index(kept.latest, state), withdrawn)
            incremental = True
        elif previous is not None and (
            (changed := self._changed_between(state.subject.tenant, previous.policies, policies))
            is not None
        ):
            assert kept is not None
            index = advance_index(kept.latest, state)
            snapshot = rebook(previous, policies, changed, index, withdrawn)
            incremental = True
        else:
            snapshot, incremental = resolve_snapshot(state, policies, withdrawn), False
        self._keep(state.subject, snapshot, snapshot.index)
        return snapshot, incremental

    def index(self, state: SubjectState) -> SlotIndex:
        """``state`` with its observations by slot, from the subject's latest index (kept)."""
        with self.serialized(state.subject):
            kept = self._entries.get(state.subject)
            if kept is None:
                index = index_of(state)
                self._keep(state.subject, None, index)
                return index
            index = advance_index(kept.latest, state)
            if index is not kept.latest:
                self._keep(state.subject, kept.snapshot, index)
            return index

    def written(
        self, before: SlotIndex, state: SubjectState, removed: Iterable[Dot], added: Observation
    ) -> SlotIndex:
        """The index of ``state``, written from ``before``'s state (``after_write``), kept as
        the subject's latest: the subject's next write and read start from it."""
        index = after_write(before, state, removed, added)
        with self.serialized(state.subject):
            kept = self._entries.get(state.subject)
            self._keep(state.subject, None if kept is None else kept.snapshot, index)
        return index

    def state_dropped(self, subject: Subject) -> None:
        """The store's state cache no longer holds ``subject``'s state (its
        ``on_dropped``): an index kept for writes alone goes with it, as does the index a
        kept snapshot was written past (the snapshot's own stays). Such an index holds a
        whole state, counted in the cache's budget and not here (``_keep``): kept beyond
        the cache, the states of every subject written would stay in memory."""
        with self._lock:
            kept = self._entries.get(subject)
            if kept is None or (kept.snapshot is not None and kept.latest is kept.snapshot.index):
                return
            self._bytes -= kept.cost
            if kept.snapshot is None:
                del self._entries[subject]
            else:  # the snapshot stays where it was in the order of use
                cost = kept.snapshot.cost
                self._entries[subject] = _Kept(kept.snapshot, kept.snapshot.index, cost)
                self._bytes += cost

    def add_reply(self, snapshot: Snapshot, key: Hashable, body: bytes) -> None:
        """Keeps a serialized reply of ``snapshot`` (at most MAX_REPLIES, the oldest dropped),
        counted against the budget while the snapshot is its subject's."""
        replies = snapshot.replies
        subject = snapshot.state.subject
        with self._lock:
            if key in replies:
                return
            while len(replies) >= MAX_REPLIES:
                del replies[next(iter(replies))]
            replies[key] = body
            kept = self._entries.get(subject)
        if kept is not None and kept.snapshot is snapshot:
            self._keep(subject, snapshot, kept.latest)

    def _keep(self, subject: Subject, snapshot: Snapshot | None, index: SlotIndex) -> None:
        with self._lock:
            # Under the lock: add_reply may be adding to the snapshot's replies.
            cost = snapshot.cost if snapshot is not None else 0
            if snapshot is None or index is not snapshot.index:
                # The index's own dict and tuples; its state is the state cache's, and goes
                # when the cache drops it (state_dropped).
                cost += 512 + 128 * len(index.state.observations)
            replaced = self._entries.get(subject)
            if replaced is not None:
                self._bytes -= replaced.cost
            before = None if replaced is None else replaced.snapshot
            if snapshot is not before:
                # A snapshot's winner changes are against the one it replaces, which it was
                # advanced from (resolve_locked), or none when resolved whole.
                self.quality.replaced(
                    NO_TALLIES if before is None else before.tallies,
                    NO_TALLIES if snapshot is None else snapshot.tallies,
                    None if snapshot is None else snapshot.flips,
                )
            self._entries[subject] = _Kept(snapshot, index, cost)
            self._entries.move_to_end(subject)
            self._bytes += cost
            while len(self._entries) > 1 and self._bytes > self.budget_bytes:
                dropped = self._entries.popitem(last=False)[1]
                self._bytes -= dropped.cost
                if dropped.snapshot is not None:
                    self.quality.replaced(dropped.snapshot.tallies, NO_TALLIES)


__all__ = [
    "MAX_REPLIES",
    "Slot",
    "SlotIndex",
    "Snapshot",
    "Snapshots",
    "advance",
    "advance_index",
    "after_write",
    "changed_sources",
    "index_of",
    "rebook",
    "resolve_snapshot",
    "sources_in",
    "touched",
]
