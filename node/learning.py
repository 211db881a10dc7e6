"""Learned reliability in a running node: the outcomes of the slots it holds (the newest of each
source's), followed as slots change, and the weights they give put in force (node.reliability
defines both).

- ``Outcomes`` keeps, per (tenant, source, context), the newest of its outcomes (one per slot
  where the source speaks with another, its newest position there) in (timestamp, dot, slot)
  order, at most ``window + margin`` of them, and per slot the ones of them it holds: agent
  ids are per tenant, so a tenant's weights count its own slots only. A slot's outcomes are
  replaced whole when it changes, so the weights equal those of judging every slot of the
  states followed from scratch (tests/unit/test_learning.py checks it after every step),
  whatever order the changes came in: the weights are a pure function of the replicated
  state.
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

At start (node.server) a node reads back the outcomes its last clean stop saved (``save``,
``restore``: node.savedlearning) when they were judged from the very state it holds, under the
same book, window and margin; otherwise, a kill -9 after changes included, it judges every
stored slot (``load``) before it serves. Either way the weights in force when it serves are
those of its state.

Memory: at most ``window + margin`` outcomes per (tenant, source, context) with weights (the
margin is the window again: twice the window in all; ``selfmodel_learned_outcomes`` counts
them). The newest may go (a retract, an erase, a slot gone quiet, a withdrawal) while older
ones not held would enter the window: a key whose outcomes held fall below ``window`` while
older ones may exist is read again from the store when its weight is next recomputed
(``Learning._rebuild``): the slots where its source speaks in its context, from the
attribution index (node.store.sources), newest first by the source's position there, judged
until ``window + margin`` outcomes are found. So the weights are exactly those of every
outcome, at the cost of a scan of the source's index rows each time ``margin`` of its newest
outcomes go without newer ones (``selfmodel_learning_rebuilds_total``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from node import metrics
from node.engine import Engine
from node.outcomes import Key, Outcomes, SlotId
from node.policy import PolicyBook
from node.reliability import (
    Learned,
    LearningSettings,
    Outcome,
    outcomes_of_slot,
)
from node.resolution import NO_WITHDRAWN, Withdrawn, counted
from node.savedlearning import ROW, decode, encode, fingerprint
from node.snapshots import changed_sources
from node.store import Change
from node.validation import reserved
from node.withdrawals import is_sources_subject, slots_of_sources, withdrawn_of
from sync.causal import Dot
from sync.crdt import SubjectState, touched_slots
from sync.observation import Observation, Subject

log = logging.getLogger("selfmodel.node")

# Attribution index rows read per page while a key's outcomes are rebuilt from the store.
REBUILD_PAGE = 1000

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
LEARNING_REFRESHES = MetricCounter(
    "selfmodel_learning_refreshes_total",
    "Recomputations of the learned weights, by whether a weight moved (and the book in force "
    "with it): moved, same.",
    ["result"],
)


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

    def __init__(
        self, engine: Engine, settings: LearningSettings, margin: int | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.configured = engine.policies
        self._rejudge = False  # the operators' book changed: judge every slot again
        # Outcomes kept per key beyond the window (default: the window's size again).
        self.margin = settings.window if margin is None else margin
        self._outcomes = Outcomes(settings.window, self.margin)
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
        """Judges every slot the node holds against ``book``, from no outcomes."""
        self.configured = book
        with self._lock:
            self._pending = {}
            self._withdrawn = {}
            self._outcomes = Outcomes(self.settings.window, self.margin)
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
                stale = sorted(key for key in dirty if self._outcomes.stale(key))
            for key in stale:
                self._rebuild(key)
            with self._lock:
                found = {key: self._outcomes.learned(key, self.settings) for key in dirty}
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

    def _rebuild(self, key: Key) -> None:
        """Sets ``key``'s outcomes kept from the stored slots: the slots where its source
        speaks in its context (the attribution index), newest first by the source's position
        there (its newest observation resolution counts), judged until ``window + margin``
        outcomes are found.

        Exact when no change lands meanwhile; a slot changed after the index was read is
        pending, judged again by the next recomputation, which sets what it holds."""
        tenant, source, context = key
        withdrawn = self.engine.withdrawals.of(tenant)
        since = withdrawn.get(source, 0)  # resolution.counted: older ones are left out
        newest: dict[SlotId, tuple[int, Dot]] = {}
        after = b""
        while True:
            rows = self.engine.store.contributions(tenant, source, after, REBUILD_PAGE)
            for _, row in rows:
                if row.context == context and row.hlc >= since:
                    slot = SlotId(row.subject, context, row.key)
                    held = newest.get(slot)
                    if held is None or (row.hlc, row.dot) > held:
                        newest[slot] = (row.hlc, row.dot)
            if len(rows) < REBUILD_PAGE:
                break
            after = rows[-1][0]
        candidates = sorted(((*at, slot) for slot, at in newest.items()), reverse=True)
        capacity = self.settings.window + self.margin
        found: list[tuple[SlotId, Outcome]] = []
        looked = 0
        for _, _, slot in candidates:
            if len(found) == capacity:
                break
            looked += 1
            state = self.engine.state(slot.subject)
            observations = [
                o for o in state.observations.values() if o.context == context and o.key == slot.key
            ]
            for o in judge(observations, self.configured, withdrawn):
                if o.source == source:
                    found.append((slot, o))
        with self._lock:
            self._outcomes.rebuilt(key, found, whole=looked == len(candidates))
        metrics.LEARNING_REBUILDS.inc()

    def save(self) -> bool:
        """Judges every change not judged yet, then writes the outcomes kept with the
        fingerprint of what they were judged from (node.savedlearning); whether it did (not
        when a change landed meanwhile). At a clean stop, once every writer has stopped."""
        store = self.engine.store
        before = store.bucket_hashes()
        self.refresh()
        with self._lock:
            busy = bool(self._pending or self._withdrawn or self._dirty or self._rejudge)
            held = self._outcomes.held()
        if busy or store.bucket_hashes() != before:
            return False
        judged_from = fingerprint(before, self.configured, self.settings.window, self.margin)
        store.commit([], [("meta", ROW, encode(judged_from, held))])
        return True

    def restore(self) -> bool:
        """In place of ``load``, at start: puts in force the weights of the outcomes the last
        clean stop saved, if they were judged from the state the node holds now, under the
        book it judges against and the same window and margin; whether it did (if not,
        nothing changed: ``load`` judges every slot)."""
        store = self.engine.store
        judged_from = fingerprint(
            store.bucket_hashes(), self.configured, self.settings.window, self.margin
        )
        held = decode(store.get_meta("meta", ROW), judged_from)
        if held is None or any(
            len(found) > self._outcomes.capacity
            or not (whole or len(found) >= self.settings.window)
            for _, whole, found in held
        ):
            return False
        with self._lock:
            for key, whole, found in held:
                self._outcomes.rebuilt(key, found, whole)
                self._dirty.add(key)
        self.refresh()
        return True

    def kept(self) -> int:
        """Outcomes held in memory: at most ``window + margin`` per (tenant, source, context)
        with weights."""
        return len(self._outcomes)

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
