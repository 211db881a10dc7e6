"""The node's application layer: turns requests into CRDT deltas, commits them, answers reads.

Read-modify-write of one subject is serialized by a striped lock held until the batch is
durable, so per-subject changes reach the store in order and each builds on the last; different
subjects share fsyncs through the store's group commit. Readers take no lock: they see what
the store's cache shows, a write once it is acknowledged (a subject missing from the cache is
read from RocksDB, where a write may show while it syncs: see node.store).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from node import metrics
from node.audit import AuditLog, AuditRecord, slot_detail
from node.errors import HandoffTimeout, ResourceExhausted
from node.policy import PolicyBook
from node.resolution import Belief, Explanation, explain_slot, normalize_statement, resolve
from node.store import Change, Store
from sync.causal import CausalContext, Dot
from sync.codec import Position, encode_token, token_of_positions
from sync.crdt import (
    SubjectState,
    apply_observe,
    erase_delta,
    merge,
    observe_delta,
    retract_delta,
    slot_dots,
    slot_observations,
)
from sync.delivery import CausalBuffer, Delta
from sync.hlc import ClockSkewError, HybridClock, wall_ms
from sync.observation import Evidence, Observation, Subject

STRIPES = 256


class ObservationInput(NamedTuple):
    subject: Subject
    context: str
    key: str  # "" means: the normalized statement
    statement: str
    confidence: float
    evidence: tuple[Evidence, ...] = ()
    based_on: CausalContext | None = None  # the context of the read it was based on


class Written(NamedTuple):
    observation_id: str
    key: str


class WriteResult(NamedTuple):
    written: tuple[Written, ...]
    token: str


@dataclass(frozen=True, slots=True)
class ModelView:
    state: SubjectState
    beliefs: tuple[Belief, ...]
    token: str
    resolved_ms: int


@dataclass(slots=True)
class Subscription:
    subject: Subject
    changed: threading.Event = field(default_factory=threading.Event)
    closed: bool = False


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    merged: int
    refused: int


class Engine:
    def __init__(
        self,
        store: Store,
        policies: PolicyBook | None = None,
        *,
        clock: HybridClock | None = None,
        now_ms: Callable[[], int] = wall_ms,
        max_watchers: int = 1024,
    ) -> None:
        self.store = store
        self.policies = policies or PolicyBook()
        self.clock = clock or HybridClock(high_water=store.hlc_high_water)
        self.node = store.node
        self._now_ms = now_ms
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._merged = threading.Condition()
        self._watchers: dict[Subject, list[Subscription]] = {}
        self._watch_lock = threading.Lock()
        self._watch_count = 0
        self.max_watchers = max_watchers
        # subject -> (state, beliefs, token): one resolution per state (a pure function of it).
        self._resolved: dict[Subject, tuple[SubjectState, tuple[Belief, ...], str]] = {}
        self._held = CausalBuffer()
        self.audit = AuditLog(store)

    # -- writes --------------------------------------------------------------------------

    def observe(self, source: str, inputs: Sequence[ObservationInput]) -> WriteResult:
        """Records the observations of one source, all in one durable batch."""
        by_subject: dict[Subject, list[tuple[int, ObservationInput]]] = {}
        for i, item in enumerate(inputs):
            by_subject.setdefault(item.subject, []).append((i, item))
        written: list[Written | None] = [None] * len(inputs)
        with self._locked(by_subject):
            changes = []
            for subject, items in by_subject.items():
                old = state = self.state(subject)
                delta: SubjectState | None = None
                events = []
                for i, item in items:
                    obs, step, state = self._observe_one(state, source, item)
                    delta = step if delta is None else merge(delta, step)
                    events.append(obs.dot)
                    written[i] = Written(str(obs.dot), obs.key)
                assert delta is not None
                changes.append(Change(old, state, Delta(delta, frozenset(events))))
            self._commit(changes)
        changes.sort(key=_subject_of)
        token = token_of_positions([change.position for change in changes])
        metrics.OBSERVATIONS.inc(len(inputs))
        return WriteResult(tuple(w for w in written if w is not None), token)

    def _observe_one(
        self, state: SubjectState, source: str, item: ObservationInput
    ) -> tuple[Observation, SubjectState, SubjectState]:
        """The observation, its delta and the state after it."""
        key = item.key or normalize_statement(item.statement)
        policy = self.policies.for_context(item.context)
        mine: list[Dot] = []  # the source's own, which this observation supersedes
        others: list[Dot] = []
        for obs in slot_observations(state, item.context, key):
            (mine if obs.source == source else others).append(obs.dot)
        evicted = others[: max(0, len(others) + 1 - policy.max_observations)]
        obs = Observation(
            dot=state.next_dot(self.actor),
            context=item.context,
            key=key,
            source=source,
            statement=item.statement,
            confidence=item.confidence,
            evidence=item.evidence,
            hlc=self.clock.now(),
            origin=self.node,
            based_on=item.based_on,
        )
        removed = [*mine, *evicted]
        return obs, observe_delta(state, obs, removed), apply_observe(state, obs, removed)

    def retract(
        self,
        subject: Subject,
        context: str,
        key: str,
        source: str,
        audit: AuditRecord | None = None,
    ) -> tuple[int, str]:
        """Withdraws ``source``'s observations in a slot from before now, wherever written;
        returns how many this node held and a token.

        The withdrawal is recorded (sync.crdt) even when this node holds none of them: it
        applies to those it merges later, from before the retract's time. With ``audit`` the
        action is recorded (slot and count added to its detail) in the same batch.
        """
        with self._locked([subject]):
            state = self.state(subject)
            count = len(slot_dots(state, context, key, source))
            if audit is not None:
                detail = slot_detail(context, key, source, count)
                audit = dataclasses.replace(audit, detail=detail)
            event = state.next_dot(self.actor)
            delta = retract_delta(state, self.actor, context, key, source, self.clock.now())
            change = Change(state, merge(state, delta), Delta(delta, frozenset([event])))
            self._commit([change], audit)
            token = token_of_positions([change.position])
        return count, token

    def forget(self, subject: Subject, audit: AuditRecord | None = None) -> str:
        """Erases the subject everywhere: every observation before now, wherever written (an
        erase bound), and their rows purged from disk. Writes after it, here or on a node that
        merged it, are kept (sync.crdt).

        With ``audit`` the erase is recorded in the audit log in the same batch.
        """
        with self._locked([subject]):
            state = self.state(subject)
            delta = erase_delta(state, self.actor, self.clock.now())
            change = Change(state, merge(state, delta), Delta(delta, delta.context.dots()))
            self._commit([change], audit)
            self.store.purge(subject, change.new.erased)
            token = token_of_positions([change.position])
        metrics.FORGOTTEN.inc()
        return token

    def merge_remote(
        self,
        deltas: Iterable[Delta],
        extra: Sequence[tuple[str, bytes, bytes | None]] = (),
        *,
        durable: bool = True,
    ) -> MergeOutcome:
        """Merges deltas or whole states from a peer, in causal order (sync.delivery).

        A delta from a clock too far ahead is refused and counted; ``extra`` rows (the
        origin's position) are written in the same batch as the merge. With ``durable=False``
        the merge is shown to readers and watches as soon as RocksDB has it, before its WAL
        sync; the caller then calls ``store.sync_written()`` before acknowledging it.
        """
        accepted: dict[Subject, list[Delta]] = {}
        refused = 0
        for delta in deltas:
            try:
                self.clock.check(delta.state.erased.hlc)
                for hlc in delta.state.withdrawals.values():
                    self.clock.check(hlc)
                for obs in delta.state.observations.values():
                    self.clock.check(obs.hlc)
            except ClockSkewError as exc:
                refused += 1
                metrics.CLOCK_SKEW_REFUSED.inc()
                metrics.log.warning("refused a delta for %s: %s", delta.state.subject, exc)
                continue
            accepted.setdefault(delta.state.subject, []).append(delta)
        for group in accepted.values():
            for delta in group:
                # Past every merged timestamp, the bound's too: a write made here after the
                # erase is ordered after it on every node, so the erase never reaches it.
                self.clock.observe(delta.state.erased.hlc)
                for hlc in delta.state.withdrawals.values():
                    self.clock.observe(hlc)
                for obs in delta.state.observations.values():
                    self.clock.observe(obs.hlc)
        merged = 0
        with self._locked(accepted):
            changes = []
            for subject, group in accepted.items():
                state = self.state(subject)
                new = self._held.apply(state, group)
                if (
                    new.erased != state.erased
                    or new.withdrawals != state.withdrawals
                    or new.context != state.context
                    or new.observations.keys() != state.observations.keys()
                ):
                    changes.append(Change(state, new, None))
                    merged += 1
            metrics.DELTAS_HELD.set(self._held.held)
            if changes or extra:
                self._commit(changes, extra=extra, durable=durable)
                for change in changes:
                    if change.new.erased != change.old.erased:  # type: ignore[union-attr]
                        self.store.purge(change.new.subject, change.new.erased)
        return MergeOutcome(merged, refused)

    def _commit(
        self,
        changes: list[Change],
        audit: AuditRecord | None = None,
        extra: Sequence[tuple[str, bytes, bytes | None]] = (),
        durable: bool = True,
    ) -> None:
        if audit is None:
            self.store.commit(changes, extra, durable=durable)
        else:
            with self.audit.appending(audit) as row:
                self.store.commit(changes, [*extra, row])
        for change in changes:
            self._notify(change.new.subject)
        with self._merged:
            self._merged.notify_all()

    # -- reads ---------------------------------------------------------------------------

    @property
    def actor(self) -> str:
        """What this run's writes are named by: the store's actor, decided at start."""
        return self.store.actor

    def state(self, subject: Subject) -> SubjectState:
        return self.store.load(subject) or SubjectState(subject)

    def wait_for(
        self, subject: Subject, positions: dict[Subject, Position] | None, timeout_s: float
    ) -> SubjectState:
        """The subject's state once it covers the token's position for it, else HandoffTimeout."""
        position = positions.get(subject) if positions else None
        state = self.state(subject)
        if position is None or state.covers(position):
            return state
        deadline = time.monotonic() + timeout_s
        with self._merged:
            while True:
                state = self.state(subject)
                if state.covers(position):
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    metrics.HANDOFF_TIMEOUTS.inc()
                    raise HandoffTimeout(
                        f"node {self.node} has not yet merged the handoff token's position for "
                        f"{subject} (waited {timeout_s:.3f}s); retry with a longer deadline "
                        "or read on the writer's node"
                    )
                self._merged.wait(remaining)

    def model(
        self,
        subject: Subject,
        positions: dict[Subject, Position] | None = None,
        timeout_s: float = 0.0,
    ) -> ModelView:
        state = self.wait_for(subject, positions, timeout_s)
        cached = self._resolved.get(subject)
        if cached is not None and cached[0] is state:
            _, beliefs, token = cached
        else:
            beliefs = tuple(resolve(state.observations.values(), self.policies))
            token = encode_token({subject: state.context})
            if len(self._resolved) > 50_000:
                self._resolved.clear()
            self._resolved[subject] = (state, beliefs, token)
        return ModelView(state, beliefs, token, self._now_ms())

    def explain(
        self,
        subject: Subject,
        context: str,
        key: str,
        positions: dict[Subject, Position] | None = None,
        timeout_s: float = 0.0,
    ) -> tuple[Explanation | None, str]:
        state = self.wait_for(subject, positions, timeout_s)
        found = [o for o in state.observations.values() if o.context == context and o.key == key]
        token = encode_token({subject: state.context})
        if not found:
            return None, token
        return explain_slot(found, self.policies.for_context(context), self.policies), token

    def position(self, subject: Subject) -> CausalContext:
        return self.state(subject).context

    # -- watch ---------------------------------------------------------------------------

    def subscribe(self, subject: Subject) -> Subscription:
        with self._watch_lock:
            if self._watch_count >= self.max_watchers:
                raise ResourceExhausted(
                    f"node {self.node} serves at most {self.max_watchers} watches; close one first"
                )
            sub = Subscription(subject)
            self._watchers.setdefault(subject, []).append(sub)
            self._watch_count += 1
            metrics.WATCHES.set(self._watch_count)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._watch_lock:
            subs = self._watchers.get(sub.subject, [])
            if sub in subs:
                subs.remove(sub)
                self._watch_count -= 1
                if not subs:
                    del self._watchers[sub.subject]
            sub.closed = True
            sub.changed.set()
            metrics.WATCHES.set(self._watch_count)

    def close_watches(self) -> None:
        with self._watch_lock:
            subs = [s for group in self._watchers.values() for s in group]
        for sub in subs:
            self.unsubscribe(sub)

    def _notify(self, subject: Subject) -> None:
        subs = self._watchers.get(subject)
        if subs:
            for sub in list(subs):
                sub.changed.set()

    def _locked(self, subjects: Iterable[Subject]) -> _Held:
        """Holds the subjects' stripe locks (taken in index order, so writers never deadlock).

        A stripe is the subject's hash, the same for a subject throughout the process (locks are
        not shared with other processes, so the per-process salt of str hashes is harmless)."""
        indexes = sorted({hash(s) % STRIPES for s in subjects})
        return _Held([self._stripes[i] for i in indexes])


def _subject_of(change: Change) -> Subject:
    return change.new.subject


class _Held:
    """A context manager over locks: a class, cheaper than a generator on every write."""

    __slots__ = ("_locks",)

    def __init__(self, locks: list[threading.Lock]) -> None:
        self._locks = locks

    def __enter__(self) -> None:
        for lock in self._locks:
            lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self._locks):
            lock.release()
