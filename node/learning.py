"""Learned reliability in a running node: the outcomes of every slot it holds, followed as slots
change, and the weights they give put in force (node.reliability defines both).

- ``Outcomes`` keeps each judged slot's outcomes (one per source speaking there, newest
  position) and, per (tenant, source, context), the outcomes in (timestamp, dot, slot) order:
  agent ids are per tenant, so a tenant's weights count its own slots only. A slot's
  outcomes are replaced whole when it changes, so what it holds equals judging every slot of
  the states followed from scratch (tests/unit/test_learning.py checks it), whatever order the
  changes came in: the weights are a pure function of the replicated state.
- ``Learning`` follows the engine's committed changes (``Engine.listeners``), noting the slots
  a change touched (the dots it added or removed); at most once per ``interval_s`` it judges
  those slots again against their subject's state then (through the subject's slot index;
  once each however often they changed, off the write path), recomputes the weights of the
  (tenant, source, context) triples whose outcomes changed and puts the books they give in
  force (``Engine.use_learned``): cached snapshots of the tenants whose weights moved
  re-resolve only the slots of the contexts where they moved; other tenants' are untouched.
  Judging needs the belief under the operators' book, which the snapshots (resolved under
  the learned one) do not hold, so it resolves each such slot once. Between
  two recomputations reads resolve with the previous weights; once writes stop, every node
  holding the same state puts the same weights in force within one interval. When the
  operators' book changes (``reconfigure``), the next recomputation judges every slot again.
- A slot is judged as resolution counts it: without its tenant's withdrawn observations
  (node.withdrawals, ``resolution.counted``), as if they were not there. When a tenant's
  withdrawals change (its ``_sources`` subject, followed through the same listeners), the next
  recomputation judges again every slot holding an observation of a source whose withdrawal
  changed (found through the attribution index, node.store.sources), against the tenant's
  withdrawals then: a withdrawn source is neither judged nor part of the consensus judging the
  others.

Memory: an exact window must know the outcomes beyond it (the newest may go: a retract, an
erase, a slot gone quiet), so every judged outcome is kept, one entry per source speaking in a
slot with at least two sources (docs/performance.md measures it); the weights count the newest
``window`` of them.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from node.engine import Engine
from node.policy import PolicyBook
from node.reliability import (
    Learned,
    LearningSettings,
    Outcome,
    outcomes_of_slot,
    weight,
)
from node.resolution import NO_WITHDRAWN, Withdrawn, counted
from node.snapshots import changed_sources
from node.store import Change
from node.validation import reserved
from node.withdrawals import is_sources_subject, slots_of_sources, withdrawn_of
from sync.causal import Dot
from sync.crdt import SubjectState, touched_slots
from sync.observation import Observation, Subject

log = logging.getLogger("selfmodel.node")

Key = tuple[str, str, str]  # (tenant, source, context)


class SlotId(NamedTuple):
    subject: Subject
    context: str
    key: str


class _Entry(NamedTuple):
    hlc: int
    dot: Dot
    slot: SlotId  # ties of (hlc, dot) across subjects broken by the slot: a total order
    agreed: bool


LEARNED_WEIGHT = Gauge(
    "selfmodel_learned_weight",
    "Learned reliability weights of the sources judged in a context, over every tenant's "
    "(node.reliability): the lowest, the mean and the highest. No source or tenant ids.",
    ["context", "stat"],
)
LEARNED_SOURCES = Gauge(
    "selfmodel_learned_sources",
    "Sources judged in a context (per tenant: one id in two tenants counts twice), and of them "
    "those at the floor (band=floor).",
    ["context", "band"],
)
LEARNED_OUTCOMES = Gauge(
    "selfmodel_learned_outcomes", "Judged positions (source, slot) this node keeps to learn from."
)
LEARNING_REFRESHES = MetricCounter(
    "selfmodel_learning_refreshes_total",
    "Recomputations of the learned weights, by whether a weight moved (and the book in force "
    "with it): moved, same.",
    ["result"],
)


class Outcomes:
    """Every judged slot's outcomes, and per (tenant, source, context) its outcomes in order
    (the tenant: of the slot's subject). Not thread-safe: ``Learning`` serializes it."""

    def __init__(self) -> None:
        self._slots: dict[SlotId, tuple[Outcome, ...]] = {}
        self._by_subject: dict[Subject, set[tuple[str, str]]] = {}
        self._order: dict[Key, list[_Entry]] = {}  # sorted by (hlc, dot, slot)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def slots_of(self, subject: Subject) -> set[tuple[str, str]]:
        """The judged slots (context, key) of ``subject``."""
        return set(self._by_subject.get(subject, ()))

    def replace(self, slot: SlotId, outcomes: Sequence[Outcome]) -> set[Key]:
        """Sets ``slot``'s outcomes (none: it no longer judges); the (tenant, source, context)
        triples whose outcomes changed."""
        old = self._slots.get(slot, ())
        new = tuple(outcomes)
        if old == new:
            return set()
        for o in old:
            self._remove(slot, o)
        for o in new:
            self._add(slot, o)
        self._count += len(new) - len(old)
        held = self._by_subject.setdefault(slot.subject, set())
        if new:
            self._slots[slot] = new
            held.add((slot.context, slot.key))
        else:
            self._slots.pop(slot, None)
            held.discard((slot.context, slot.key))
            if not held:
                del self._by_subject[slot.subject]
        tenant = slot.subject.tenant
        return {(tenant, o.source, o.context) for o in (*old, *new)}

    def _add(self, slot: SlotId, o: Outcome) -> None:
        key = (slot.subject.tenant, o.source, o.context)
        bisect.insort(self._order.setdefault(key, []), _Entry(o.hlc, o.dot, slot, o.agreed))

    def _remove(self, slot: SlotId, o: Outcome) -> None:
        key = (slot.subject.tenant, o.source, o.context)
        entries = self._order[key]
        entry = _Entry(o.hlc, o.dot, slot, o.agreed)
        at = bisect.bisect_left(entries, entry)
        assert entries[at] == entry  # every outcome removed was added (replace keeps _slots)
        del entries[at]
        if not entries:
            del self._order[key]

    def learned(self, key: Key, settings: LearningSettings) -> Learned | None:
        """``key``'s weight from its newest ``window`` outcomes (None: it has none); equals
        ``reliability.learn`` of the tenant's outcomes held."""
        entries = self._order.get(key)
        if not entries:
            return None
        kept = entries[-settings.window :]
        agreed = sum(e.agreed for e in kept)
        return _learned(key, agreed, len(kept), settings)

    def keys(self) -> list[Key]:
        return sorted(self._order)

    def outcomes(self, tenant: str) -> list[Outcome]:
        """The outcomes held of ``tenant``'s slots."""
        return [
            o for slot, found in self._slots.items() if slot.subject.tenant == tenant for o in found
        ]


def _learned(key: Key, agreed: int, judged: int, settings: LearningSettings) -> Learned:
    return Learned(key[1], key[2], weight(agreed, judged, settings), agreed, judged)


def judge(
    slot: Sequence[Observation], book: PolicyBook, withdrawn: Withdrawn = NO_WITHDRAWN
) -> list[Outcome]:
    """The outcomes of one slot's observations under ``book`` (none for a reserved context),
    those ``withdrawn`` leaves out not there (``resolution.counted``)."""
    slot = counted(slot, withdrawn)
    if len(slot) < 2 or reserved(slot[0].context):
        return []
    context = slot[0].context
    return outcomes_of_slot(slot, book.for_context(context), book)


class Learning:
    """Learned reliability wired into ``engine``: follows its changes, puts weights in force.

    ``configured`` is the book outcomes are judged against (the operators': ``Engine.policies``,
    followed through ``reconfigure``); what a tenant's reads resolve with is the engine's
    ``learned_book(operators, the tenant's weights)``. Thread-safe: listeners run on the writers'
    threads, ``refresh`` on its own.
    """

    def __init__(self, engine: Engine, settings: LearningSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.configured = engine.policies
        self._rejudge = False  # the operators' book changed: judge every slot again
        self._outcomes = Outcomes()
        # The slots changed since they were last judged, per subject (None: every slot).
        self._pending: dict[Subject, set[tuple[str, str]] | None] = {}
        self._dirty: set[Key] = set()  # (tenant, source, context) whose outcomes changed
        # Per tenant, the sources whose withdrawal changed since their slots were last judged.
        self._withdrawn: dict[str, set[str]] = {}
        self._learned: dict[str, dict[tuple[str, str], Learned]] = {}  # per tenant, in force
        self._lock = threading.Lock()  # over _outcomes, _pending, _withdrawn and _dirty
        self._refreshing = threading.Lock()  # one recomputation at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, subjects: Iterable[Subject]) -> int:
        """Judges every slot of ``subjects`` (the node's, at start, before it takes writes and
        merges) and puts the weights in force; how many subjects it read."""
        count = 0
        for subject in subjects:
            if not reserved(subject.tenant):
                self._judge(self.engine.state(subject), None)
            count += 1
        self.refresh()
        return count

    def follow(self, changes: Sequence[Change]) -> None:
        """An ``Engine.listeners`` callable: notes the slots each change touched, judged again
        by the next ``refresh`` (off the write path, once however often they changed)."""
        for change in changes:
            subject = change.new.subject
            if reserved(subject.tenant):
                continue
            if is_sources_subject(subject):  # the tenant's withdrawals: their slots, judged again
                before = withdrawn_of(change.old) if change.old is not None else {}
                moved = changed_sources(before, withdrawn_of(change.new))
                if moved:
                    with self._lock:
                        self._withdrawn.setdefault(subject.tenant, set()).update(moved)
                continue
            if change.rewrite or change.old is None:
                with self._lock:
                    self._pending[subject] = None
                continue
            slots = touched_slots(change.old, change.new)
            with self._lock:
                if subject not in self._pending:
                    self._pending[subject] = slots
                else:
                    held = self._pending[subject]
                    if held is not None:
                        held |= slots

    def _judge(self, state: SubjectState, slots: set[tuple[str, str]] | None) -> None:
        """Judges again ``slots`` of ``state`` (None: all) and the judged slots it no longer
        has, against the configured book and the tenant's withdrawals now."""
        subject = state.subject
        withdrawn = self.engine.withdrawals.of(subject.tenant)
        index = self.engine.snapshots.index(state)
        with self._lock:
            gone = {s for s in self._outcomes.slots_of(subject) if s not in index.slots}
        wanted = set(index.slots) if slots is None else slots
        judged = {
            SlotId(subject, context, key): judge(
                index.slot(context, key), self.configured, withdrawn
            )
            for context, key in wanted | gone
        }
        with self._lock:
            for slot, outcomes in judged.items():
                self._dirty |= self._outcomes.replace(slot, outcomes)

    def reconfigure(self, book: PolicyBook) -> None:
        """A ``Engine.book_listeners`` callable: the operators' book changed (replicated
        governance), so the next ``refresh`` judges every slot again against it (a full pass
        over the node's subjects, for a rare change; off the write path that brought it)."""
        with self._lock:
            self._rejudge = True

    def _judge_all(self, book: PolicyBook) -> None:
        """Judges every slot the node holds against ``book``."""
        self.configured = book
        with self._lock:
            self._pending = {}
            self._withdrawn = {}
        for subject in self.engine.store.subjects():
            if not reserved(subject.tenant):
                self._judge(self.engine.state(subject), None)

    def refresh(self) -> frozenset[str]:
        """Judges the slots changed since the last time against their subjects' states now,
        recomputes the weights whose outcomes changed and, when one of a tenant moved, puts the
        book they give that tenant in force; the contexts where a weight moved (of any tenant).

        A change committed while it runs is judged by the next: its slots are noted after the
        pending ones are taken here, so no change is missed (a withdrawal's slots are read from
        the index after it was committed, and judged against the tenant's withdrawals then)."""
        with self._refreshing:
            with self._lock:
                rejudge, self._rejudge = self._rejudge, False
                pending, self._pending = self._pending, {}
                withdrawn, self._withdrawn = self._withdrawn, {}
            for tenant, sources in sorted(withdrawn.items()):
                for subject, of_source in slots_of_sources(
                    self.engine.store, tenant, sources
                ).items():
                    if subject not in pending:
                        pending[subject] = of_source
                    elif (held := pending[subject]) is not None:
                        held |= of_source
            if not (rejudge or pending or self._dirty):
                LEARNING_REFRESHES.labels("same").inc()
                return frozenset()
            if rejudge:
                self._judge_all(self.engine.policies)
            for subject, slots in pending.items():
                self._judge(self.engine.state(subject), slots)
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                if rejudge:
                    dirty.update(self._outcomes.keys())
                    dirty.update((t, *k) for t, found in self._learned.items() for k in found)
                found = {key: self._outcomes.learned(key, self.settings) for key in dirty}
                LEARNED_OUTCOMES.set(len(self._outcomes))
            learned = dict(self._learned)  # the tenants found in: copied before they change
            for tenant in {key[0] for key in found}:
                learned[tenant] = dict(learned.get(tenant, {}))
            moved: dict[str, set[str]] = {}
            for (tenant, source, context), now in found.items():
                was = learned[tenant].pop((source, context), None)
                if now is not None:
                    learned[tenant][source, context] = now
                if (was.weight if was else 1.0) != (now.weight if now else 1.0):
                    moved.setdefault(tenant, set()).add(context)
            self._learned = {tenant: weights for tenant, weights in learned.items() if weights}
            if moved:
                self.engine.use_learned(
                    self._learned, {tenant: frozenset(c) for tenant, c in moved.items()}
                )
            _show(self._learned, {key[2] for key in found}, self.settings.floor)
            LEARNING_REFRESHES.labels("moved" if moved else "same").inc()
            return frozenset().union(*moved.values())

    def weights(self, tenant: str) -> list[Learned]:
        """``tenant``'s weights in force, by (source, context): of the sources that spoke in
        its slots, counting those slots only."""
        found = self._learned.get(tenant, {})
        return [found[k] for k in sorted(found)]

    def tenants(self) -> list[str]:
        """The tenants with weights in force."""
        return sorted(self._learned)

    def start(self) -> None:
        """Recomputes the weights every ``interval_s`` until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="learning", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            try:
                self.refresh()
            except Exception:  # a failed round leaves the weights in force; the next retries
                log.exception("node %s: recomputing learned weights failed", self.engine.node)


def _show(
    learned: dict[str, dict[tuple[str, str], Learned]], contexts: Iterable[str], floor: float
) -> None:
    """The metrics of ``contexts``' weights, over every tenant's sources (a context without
    judged sources: none)."""
    by_context: dict[str, list[Learned]] = {}
    for of_tenant in learned.values():
        for (_, context), found in of_tenant.items():
            by_context.setdefault(context, []).append(found)
    for context in contexts:
        weights = by_context.get(context)
        if not weights:
            for stat in ("min", "mean", "max"):
                _drop(LEARNED_WEIGHT, context, stat)
            for band in ("all", "floor"):
                _drop(LEARNED_SOURCES, context, band)
            continue
        values = [w.weight for w in weights]
        LEARNED_WEIGHT.labels(context, "min").set(min(values))
        LEARNED_WEIGHT.labels(context, "mean").set(sum(values) / len(values))
        LEARNED_WEIGHT.labels(context, "max").set(max(values))
        LEARNED_SOURCES.labels(context, "all").set(len(values))
        LEARNED_SOURCES.labels(context, "floor").set(sum(1 for v in values if v <= floor))


def _drop(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)


__all__ = ["Learning", "Outcomes", "SlotId", "judge"]
