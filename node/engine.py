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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from node import idempotency, metrics
from node.audit import AuditLog, AuditRecord, slot_detail
from node.errors import QuotaViolation, Reason, ResourceExhausted, clock_ahead, too_large
from node.handoff import DEFAULT_LEAD, Handoffs
from node.idempotency import Replay, Request
from node.policy import PolicyBook
from node.resolution import Belief, Explanation, explain_slot, normalize_statement, resolve
from node.store import Change, Store
from sync.bounds import (
    Excess,
    Footprint,
    Footprints,
    SubjectLimits,
    excess,
    grew,
    head_bytes,
)
from sync.causal import MAX_COUNTER, CausalContext, Dot
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
from sync.hlc import ClockAheadError, ClockSkewError, HybridClock, physical_ms, wall_ms
from sync.holdback import too_new, without
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
    """``refused``: the indexes of the input deltas not merged because a timestamp is ahead of
    this node's clock bound (merged once it allows them); ``held_back``: observations left out
    of whole states for the same reason (the rest of each state merged)."""

    merged: int
    refused: tuple[int, ...] = ()
    held_back: int = 0
    reason: str = ""
    # Indexes of the input deltas refused for good: their subject would pass this node's
    # subject limits (sync.bounds).
    limited: tuple[int, ...] = ()
    # The subjects refused or held back (clock, limits), each with why (the first reason).
    reasons: tuple[tuple[Subject, str], ...] = ()


class Engine:
    def __init__(
        self,
        store: Store,
        policies: PolicyBook | None = None,
        *,
        clock: HybridClock | None = None,
        now_ms: Callable[[], int] = wall_ms,
        max_watchers: int = 1024,
        subject_limits: SubjectLimits | None = None,
        members: frozenset[str] = frozenset(),
        max_handoff_lead: int = DEFAULT_LEAD,
    ) -> None:
        self.store = store
        self.policies = policies or PolicyBook()
        self.clock = clock or HybridClock(high_water=store.hlc_high_water)
        self.node = store.node
        self._now_ms = now_ms
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._watchers: dict[Subject, list[Subscription]] = {}
        self._watch_lock = threading.Lock()
        self._watch_count = 0
        self.max_watchers = max_watchers
        # What a read with a handoff token is answered (the nodes whose actors it may name).
        self.handoffs = Handoffs(store.node, members | {store.node}, max_handoff_lead)
        # One resolution at a time per stripe of subjects: readers of one subject that find the
        # cache stale (every watcher of it, woken by one change) resolve it once, not each.
        self._resolving = [threading.Lock() for _ in range(STRIPES)]
        # subject -> (state, beliefs, token): one resolution per state (a pure function of it).
        self._resolved: dict[Subject, tuple[SubjectState, tuple[Belief, ...], str]] = {}
        self._held = CausalBuffer()
        self._sweeper = idempotency.Sweeper()  # of the requests column family (node.idempotency)
        self.audit = AuditLog(store)
        self.subject_limits = subject_limits or SubjectLimits()
        self._footprints = Footprints()  # of subjects' latest states: a write counts its change
        # Subjects whose refused merges were logged: once each (bounded like _footprints).
        self._refused_logged: set[Subject] = set()

    # -- writes --------------------------------------------------------------------------

    def observe(
        self, source: str, inputs: Sequence[ObservationInput], request: Request | None = None
    ) -> WriteResult:
        """Records the observations of one source, all in one durable batch; a ``request``
        seen before is answered as it was the first time (node.idempotency)."""
        by_subject: dict[Subject, list[tuple[int, ObservationInput]]] = {}
        for i, item in enumerate(inputs):
            by_subject.setdefault(item.subject, []).append((i, item))
        written: list[Written | None] = [None] * len(inputs)
        with self._locked(by_subject):
            if request is not None:
                asked = [
                    (i, x.subject, x.context, _slot_key(x), x.statement)
                    for i, x in enumerate(inputs)
                ]
                replay = self._replay(request, "observe", list(by_subject), asked)
                if replay is not None:
                    keys = [_slot_key(x) for x in inputs]
                    return WriteResult(
                        tuple(map(Written, replay.ids, keys)), self._token(list(by_subject))
                    )
            self._check_clock()
            changes = []
            footprints = []
            for subject, items in by_subject.items():
                old = state = self.state(subject)
                delta: SubjectState | None = None
                events = []
                gone: list[Observation] = []  # of ``old``: removed by the request's writes
                for i, item in items:
                    before = state.observations
                    obs, removed, step, state = self._observe_one(state, source, item, request, i)
                    gone += [before[d] for d in removed if d in old.observations]
                    delta = step if delta is None else merge(delta, step)
                    events.append(obs.dot)
                    written[i] = Written(str(obs.dot), obs.key)
                assert delta is not None
                added = [state.observations[d] for d in events if d in state.observations]
                previous = self.footprint(old)
                footprint = previous.changed(gone, added)
                found = excess(state, footprint, self.subject_limits)
                if found is not None and grew(previous, footprint):
                    metrics.SUBJECT_LIMIT_REFUSED.labels("write", found.limit).inc()
                    raise too_large(
                        subject,
                        found,
                        "nothing of this request was written (retract or forget some of its "
                        "observations first)",
                    )
                changes.append(Change(old, state, Delta(delta, frozenset(events))))
                footprints.append((state, footprint))
            ids = tuple(w.observation_id for w in written if w is not None)
            self._commit(changes, extra=self._request_rows(request, "observe", Replay(ids)))
            for state, footprint in footprints:
                self._remember_footprint(state, footprint)
        changes.sort(key=_subject_of)
        token = token_of_positions([change.position for change in changes])
        metrics.OBSERVATIONS.inc(len(inputs))
        return WriteResult(tuple(w for w in written if w is not None), token)

    def _observe_one(
        self,
        state: SubjectState,
        source: str,
        item: ObservationInput,
        request: Request | None = None,
        index: int = 0,
    ) -> tuple[Observation, list[Dot], SubjectState, SubjectState]:
        """The observation, the dots it removes, its delta and the state after it."""
        key = item.key or normalize_statement(item.statement)
        policy = self.policies.for_context(item.context)
        mine: list[Dot] = []  # the source's own, which this observation supersedes
        others: list[Dot] = []
        for obs in slot_observations(state, item.context, key):
            (mine if obs.source == source else others).append(obs.dot)
        evicted = others[: max(0, len(others) + 1 - policy.max_observations)]
        obs = Observation(
            dot=self._next_dot(state),
            context=item.context,
            key=key,
            source=source,
            statement=item.statement,
            confidence=item.confidence,
            evidence=item.evidence,
            hlc=self._mint(),
            origin=self.node,
            based_on=item.based_on,
            request_key=request.key if request is not None else "",
            request_index=index if request is not None else 0,
        )
        removed = [*mine, *evicted]
        return obs, removed, observe_delta(state, obs, removed), apply_observe(state, obs, removed)

    def retract(
        self,
        subject: Subject,
        context: str,
        key: str,
        source: str,
        audit: AuditRecord | None = None,
        request: Request | None = None,
    ) -> tuple[int, str]:
        """Withdraws ``source``'s observations in a slot from before now, wherever written;
        returns how many this node held and a token.

        The withdrawal is recorded (sync.crdt) even when this node holds none of them: it
        applies to those it merges later, from before the retract's time. With ``audit`` the
        action is recorded (slot and count added to its detail) in the same batch. A
        ``request`` seen before is answered as it was the first time (node.idempotency).
        """
        with self._locked([subject]):
            if request is not None:
                replay = self._replay(request, "retract", [subject])
                if replay is not None:
                    return replay.retracted, self._token([subject])
            self._check_clock()
            state = self.state(subject)
            count = len(slot_dots(state, context, key, source))
            if audit is not None:
                detail = slot_detail(context, key, source, count)
                audit = dataclasses.replace(audit, detail=detail)
            event = self._next_dot(state)
            delta = retract_delta(state, self.actor, context, key, source, self._mint())
            new = merge(state, delta)
            self._check_withdrawal(state, new)
            change = Change(state, new, Delta(delta, frozenset([event])))
            rows = self._request_rows(request, "retract", Replay(retracted=count))
            self._commit([change], audit, rows)
            token = token_of_positions([change.position])
        return count, token

    def _check_withdrawal(self, old: SubjectState, new: SubjectState) -> None:
        """Refuses a retract whose new withdrawal (recorded even where nothing is withdrawn)
        would grow the subject past its size limit."""
        if len(new.withdrawals) <= len(old.withdrawals):
            return
        gone = [o for d, o in old.observations.items() if d not in new.observations]
        before = self.footprint(old)
        after = before.changed(gone, [])
        found = excess(new, after, self.subject_limits)
        if found is None or head_bytes(new) + after.observation_bytes <= (
            head_bytes(old) + before.observation_bytes
        ):
            return
        metrics.SUBJECT_LIMIT_REFUSED.labels("retract", found.limit).inc()
        raise too_large(
            new.subject,
            found,
            "the retract was not recorded (forget the subject, or retract where its "
            "observations are)",
        )

    def forget(
        self, subject: Subject, audit: AuditRecord | None = None, request: Request | None = None
    ) -> str:
        """Erases the subject everywhere: every observation before now, wherever written (an
        erase bound), and their rows purged from disk. Writes after it, here or on a node that
        merged it, are kept (sync.crdt).

        With ``audit`` the erase is recorded in the audit log in the same batch. A ``request``
        seen before is answered as it was the first time (node.idempotency).
        """
        with self._locked([subject]):
            if request is not None and self._replay(request, "forget", [subject]) is not None:
                return self._token([subject])
            self._check_clock()
            state = self.state(subject)
            self._next_dot(state)  # the erase's dot, within the bound every replica accepts
            delta = erase_delta(state, self.actor, self._mint())
            change = Change(state, merge(state, delta), Delta(delta, delta.context.dots()))
            self._commit([change], audit, self._request_rows(request, "forget", Replay()))
            self.store.purge(subject, change.new.erased)
            token = token_of_positions([change.position])
        metrics.FORGOTTEN.inc()
        return token

    def _replay(
        self,
        request: Request,
        op: str,
        subjects: Sequence[Subject],
        items: Sequence[tuple[int, Subject, str, str, str]] = (),
    ) -> Replay | None:
        """The first answer of a keyed call seen before (with the subjects' locks held)."""
        return idempotency.first_answer(
            self.store, self.state, request, op, subjects, items, self._now_ms()
        )

    def _request_rows(
        self, request: Request | None, op: str, replay: Replay
    ) -> list[tuple[str, bytes, bytes | None]]:
        """The rows recording a keyed call's answer (none without a key), written with it."""
        if request is None:
            return []
        return self._sweeper.rows_for(self.store, request, op, replay, self._now_ms())

    def _token(self, subjects: Sequence[Subject]) -> str:
        """The handoff token of the subjects' positions now."""
        return encode_token({s: self.state(s).context for s in sorted(subjects)})

    def _check_clock(self) -> None:
        """Refuses a write while the clock would mint timestamps peers refuse (sync.hlc)."""
        refusal = self.clock.refusal()
        if refusal is not None:
            metrics.WRITES_REFUSED.labels("clock_ahead").inc()
            raise clock_ahead(self.node, refusal)

    def _mint(self) -> int:
        try:
            return self.clock.now()
        except ClockAheadError as exc:
            metrics.WRITES_REFUSED.labels("clock_ahead").inc()
            raise clock_ahead(self.node, exc) from exc

    def _next_dot(self, state: SubjectState) -> Dot:
        """The subject's next dot of this node's actor, never one peers would refuse."""
        dot = state.next_dot(self.actor)
        if dot.counter > MAX_COUNTER:
            metrics.WRITES_REFUSED.labels("counter_exhausted").inc()
            raise ResourceExhausted(
                f"{state.subject}: the next event counter of actor {self.actor} would be "
                f"{dot.counter}, beyond the bound every replica accepts ({MAX_COUNTER}); "
                "this subject takes no more events from this node",
                reason=Reason.COUNTER_EXHAUSTED,
                metadata={
                    "subject": state.subject,
                    "actor": self.actor,
                    "maximum": MAX_COUNTER,
                },
            )
        return dot

    def merge_remote(
        self,
        deltas: Iterable[Delta],
        extra: Sequence[tuple[str, bytes, bytes | None]] = (),
        *,
        durable: bool = True,
        source: str = "",
    ) -> MergeOutcome:
        """Merges deltas or whole states from a peer, in causal order (sync.delivery).

        A delta with a timestamp too far ahead of this node's clock is refused (its index
        reported, counted), whole: a delta is one event. A whole state (``events`` None) with
        such observations merges without them and without their dots, so the rest of the subject
        is repaired and the held-back part arrives once the clock allows it. ``extra`` rows (the
        origin's position) are written in the same batch as the merge. With ``durable=False``
        the merge is shown to readers and watches as soon as RocksDB has it, before its WAL
        sync; the caller then calls ``store.sync_written()`` before acknowledging it. An erase
        merged here (an advanced erase bound) is audited in the same batch, as peer ``source``'s.
        """
        accepted: dict[Subject, list[Delta]] = {}
        indexes: dict[Subject, list[int]] = {}
        refused: list[int] = []
        limited: list[int] = []
        held_back = 0
        reason = ""
        reasons: dict[Subject, str] = {}
        for index, delta in enumerate(deltas):
            marks = self._too_new_marks(delta.state)
            if marks is not None:
                # An erase bound or a withdrawal is one event's, and cannot be taken out of a
                # whole state without leaving its dot in the context: refused whole.
                reason = reason or str(marks)
                reasons.setdefault(delta.state.subject, f"clock skew: {marks}")
                metrics.CLOCK_SKEW_REFUSED.inc()
                refused.append(index)
                continue
            too_new = self._too_new(delta.state)
            if too_new:
                first = self._skew(too_new[0].hlc)
                reason = reason or str(first)
                reasons.setdefault(delta.state.subject, f"clock skew: {first}")
                metrics.CLOCK_SKEW_REFUSED.inc(len(too_new))
                if delta.events is not None:
                    refused.append(index)
                    continue
                held_back += len(too_new)
                rest = without(delta.state, too_new)
                if rest is None:
                    continue
                delta = Delta(rest)
            indexes.setdefault(delta.state.subject, []).append(index)
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
            erased: list[AuditRecord] = []
            for subject, group in accepted.items():
                state = self.state(subject)
                new = self._held.apply(state, group)
                if new.erased != state.erased:
                    erased.append(_peer_erase(source, state, new))
                if (
                    new.erased != state.erased
                    or new.withdrawals != state.withdrawals
                    or new.context != state.context
                    or new.observations.keys() != state.observations.keys()
                ):
                    found = self._past_limits(state, new)
                    if found is not None:
                        limited += indexes[subject]
                        reasons.setdefault(subject, f"subject {subject} {found.describe()}")
                        continue
                    changes.append(Change(state, new, None))
                    merged += 1
            metrics.DELTAS_HELD.set(self._held.held)
            if changes or extra:
                with self.audit.appending_all(erased) as rows:
                    self._commit(changes, extra=[*extra, *rows], durable=durable)
                for change in changes:
                    if change.new.erased != change.old.erased:  # type: ignore[union-attr]
                        self.store.purge(change.new.subject, change.new.erased)
        return MergeOutcome(
            merged, tuple(refused), held_back, reason, tuple(limited), tuple(reasons.items())
        )

    def _too_new_marks(self, state: SubjectState) -> ClockSkewError | None:
        """Why this node's clock refuses the state's erase bound or a withdrawal, if it does."""
        for hlc in (state.erased.hlc, *state.withdrawals.values()):
            if physical_ms(hlc) > self.clock.wall() + self.clock.max_offset_ms:
                return self._skew(hlc)
        return None

    def _too_new(self, state: SubjectState) -> list[Observation]:
        """The state's observations whose timestamps this node's clock refuses, oldest first."""
        return too_new(state, self.clock.wall() + self.clock.max_offset_ms)

    def _skew(self, hlc: int) -> ClockSkewError:
        try:
            self.clock.check(hlc)
        except ClockSkewError as exc:
            return exc
        return ClockSkewError(physical_ms(hlc), self.clock.wall(), self.clock.max_offset_ms)

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

    def _past_limits(self, old: SubjectState, new: SubjectState) -> Excess | None:
        """The limit (logged once per subject, counted) a merge would take ``old`` past, growing
        it, to ``new``: a peer with larger limits sent it. A subject already past them (limits
        lowered since) may still take merges that do not grow it."""
        before = self.footprint(old)
        # Dots are never reused (an erase keeps the context), so the change is the difference.
        removed = [o for d, o in old.observations.items() if d not in new.observations]
        added = [o for d, o in new.observations.items() if d not in old.observations]
        after = before.changed(removed, added)
        found = excess(new, after, self.subject_limits)
        if found is None or not grew(before, after):
            self._remember_footprint(new, after)
            return None
        metrics.SUBJECT_LIMIT_REFUSED.labels("merge", found.limit).inc()
        if new.subject not in self._refused_logged:
            if len(self._refused_logged) > 10_000:
                self._refused_logged.clear()
            self._refused_logged.add(new.subject)
            metrics.log.warning(
                "refused to merge a peer's state of %s: it %s", new.subject, found.describe()
            )
        return found

    def footprint(self, state: SubjectState) -> Footprint:
        """What ``state`` holds as the subject limits count it (kept for the next write)."""
        return self._footprints.of(state)

    def _remember_footprint(self, state: SubjectState, footprint: Footprint) -> None:
        self._footprints.remember(state, footprint)

    # -- reads ---------------------------------------------------------------------------

    @property
    def actor(self) -> str:
        """What this run's writes are named by: the store's actor, decided at start."""
        return self.store.actor

    def state(self, subject: Subject) -> SubjectState:
        return self.store.load(subject) or SubjectState(subject)

    def at_position(
        self, subject: Subject, positions: dict[Subject, Position] | None
    ) -> SubjectState:
        """The subject's state, if it covers the token's position for it; never waits (else
        InvalidArgument or HandoffPending: node.handoff.Handoffs.require)."""
        state = self.state(subject)
        if positions is not None:
            self.handoffs.require(state, positions, self.actor)
        return state

    def model(
        self, subject: Subject, positions: dict[Subject, Position] | None = None
    ) -> ModelView:
        """The subject's resolved model: resolved once per state (resolution is a pure function
        of it), shared by every reader of it (readers that find it stale at once wait for one of
        them to resolve it)."""
        state = self.at_position(subject, positions)
        cached = self._resolved.get(subject)
        if cached is None or cached[0] is not state:
            with self._resolving[hash(subject) % STRIPES]:
                # The latest state (it covers whatever this one did): readers that loaded states
                # a change apart then share its resolution instead of resolving each in turn.
                state = self.state(subject)
                cached = self._resolved.get(subject)
                if cached is None or cached[0] is not state:
                    metrics.RESOLUTIONS.labels("change").inc()
                    beliefs = tuple(resolve(state.observations.values(), self.policies))
                    token = encode_token({subject: state.context})
                    if len(self._resolved) > 50_000:
                        self._resolved.clear()
                    cached = self._resolved[subject] = (state, beliefs, token)
        return ModelView(cached[0], cached[1], cached[2], self._now_ms())

    def explain(
        self,
        subject: Subject,
        context: str,
        key: str,
        positions: dict[Subject, Position] | None = None,
    ) -> tuple[Explanation | None, str]:
        state = self.at_position(subject, positions)
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
                limit = f"at most {self.max_watchers} watches (setting max_watchers)"
                raise ResourceExhausted(
                    f"node {self.node} serves {limit}; close one first, or watch on another node",
                    reason=Reason.WATCHES_EXHAUSTED,
                    metadata={"limit": self.max_watchers, "setting": "max_watchers"},
                    quota=[QuotaViolation(f"node {self.node}", f"serves {limit}")],
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

    def wake_watches(self) -> None:
        """Wakes every watch at once (its stream then checks its caller's token again)."""
        with self._watch_lock:
            subs = [s for group in self._watchers.values() for s in group]
        for sub in subs:
            sub.changed.set()

    def count_subjects(self, tenant: str) -> int:
        """How many subjects of ``tenant`` this node holds (an exact count of its key range)."""
        return sum(1 for _ in self.store.subjects(tenant))

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


def _peer_erase(peer: str, old: SubjectState, new: SubjectState) -> AuditRecord:
    """The audit record of an erase that arrived from ``peer``."""
    who = peer or "unknown"
    detail = (
        f"erase received from peer {who}: erase bound {physical_ms(old.erased.hlc)} -> "
        f"{physical_ms(new.erased.hlc)} (ms since the epoch)"
    )
    return AuditRecord(who, "peer", "forget", new.subject, detail)


def _slot_key(item: ObservationInput) -> str:
    return item.key or normalize_statement(item.statement)


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
