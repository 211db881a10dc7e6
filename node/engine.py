"""The node's application layer: turns requests into CRDT deltas, commits them, answers reads.

Read-modify-write of one subject is serialized by a striped lock held until the batch is
durable, so per-subject changes reach the store in order and each builds on the last; different
subjects share fsyncs through the store's group commit. Reads are node.reads' (resolved
snapshots; a handoff read never waits: node.handoff), watches node.watches', the clock's
screening of peers' deltas node.screening's. A write finds the slot it changes through the
subject's slot index (node.snapshots), not by scanning the subject.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from node import groups, idempotency, metrics
from node.admission import admit_every_write
from node.audit import AuditLog, AuditRecord, slot_detail
from node.errors import Reason, ResourceExhausted, clock_ahead
from node.handoff import DEFAULT_LEAD, Handoffs
from node.idempotency import Replay, Request
from node.locks import SubjectLocks
from node.policy import PolicyBook
from node.reads import ModelView, Reader
from node.reliability import Books, Weights, books_of, learned_book
from node.resolution import Explanation, normalize_statement
from node.screening import screen
from node.sizes import SubjectSizes
from node.snapshots import Snapshots
from node.store import Change, Store
from node.watches import Subscription, Watches
from node.withdrawals import Withdrawals, follower
from sync.bounds import (
    Footprint,
    SubjectLimits,
)
from sync.causal import MAX_COUNTER, CausalContext, Dot
from sync.codec import encode_token, token_of_entries
from sync.crdt import (
    SubjectState,
    apply_observe,
    clear_delta,
    erase_delta,
    merge,
    observe_delta,
    retract_delta,
)
from sync.delivery import CausalBuffer, Delta
from sync.hlc import ClockAheadError, HybridClock, physical_ms, wall_ms
from sync.members import is_group
from sync.observation import Evidence, Observation, Subject


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
        snapshot_cache_mb: float = 64.0,
    ) -> None:
        self.store = store
        self.clock = clock or HybridClock(high_water=store.hlc_high_water)
        self.node = store.node
        self._now_ms = now_ms
        self._locks = SubjectLocks()
        self.watches = Watches(store.node, max_watchers)
        self.snapshots = Snapshots(int(snapshot_cache_mb * 2**20))
        store.on_dropped = self.snapshots.state_dropped
        # What a read with a handoff token is answered (the nodes whose actors it may name).
        self.handoffs = Handoffs(store.node, members | {store.node}, max_handoff_lead)
        # Each tenant's withdrawn sources (node.withdrawals), followed as they change.
        self.withdrawals = Withdrawals(lambda s: store.load(s) or SubjectState(s))
        self.reader = Reader(
            store, policies or PolicyBook(), self.snapshots, self.handoffs, self.withdrawals
        )
        self._held = CausalBuffer()
        self._sweeper = idempotency.Sweeper()  # of the requests column family (node.idempotency)
        self.audit = AuditLog(store)
        self.subject_limits = subject_limits or SubjectLimits()
        self.sizes = SubjectSizes(self.subject_limits)
        # Called with every committed batch of changes (local writes and merges alike), under
        # the subjects' locks, before watches are woken: what follows the subjects' states
        # (roll-ups, governance) keeps up with every change, in commit order; a group read
        # with a handoff token passes the locks to wait for them (``settled``).
        self.listeners: list[Callable[[Sequence[Change]], None]] = [
            follower(self.withdrawals, store, self.refresh),
            self.reader.follow,  # kept snapshots advance with every change
        ]
        # The books in force are the operators' (node.governor) and, per tenant, the
        # operators' times that tenant's learned weights (node.learning; none unless it is
        # on): node.reliability.Books, kept by the reader (``policies``, ``book_of``).
        self.learned: Mapping[str, Weights] = {}  # per tenant
        self._book_lock = threading.Lock()
        # Told the operators' new book when it changes (learning judges against it).
        self.book_listeners: list[Callable[[PolicyBook], None]] = []
        self.groups = groups.follow(self)  # memberships and roll-ups (node.groups)
        self.admit: Callable[[], None] = admit_every_write  # agent writes ask (node.admission)

    @property
    def policies(self) -> PolicyBook:
        """The operators' book in force: every context's policy, the same for every tenant
        (a subject resolves with ``book_of`` its tenant, which adds its learned weights)."""
        return self.reader.policies

    def book_of(self, tenant: str) -> PolicyBook:
        """The book ``tenant``'s subjects resolve with: ``learned_book(operators, its
        weights)``."""
        return self.reader.books.of(tenant)

    def use_policies(self, book: PolicyBook) -> None:
        """Resolves with the operators' ``book`` from now on (node.governor keeps it: the file
        under the replicated settings), times each tenant's learned weights: no snapshot
        resolved under another book is served again (node.reads), and every watch is woken to
        read its model again. ``book_listeners`` are told."""
        with self._book_lock:
            self.snapshots.rebooked_all()
            self.reader.books = books_of(book, self.learned)
            self.groups.policies_changed()  # members' beliefs moved: so do roll-ups
            self.watches.wake_all()
        for listen in self.book_listeners:
            listen(book)

    def use_learned(
        self, learned: Mapping[str, Weights], moved: Mapping[str, frozenset[str]]
    ) -> None:
        """Resolves with the ``learned`` weights (per tenant) from now on (node.learning), which
        move only the beliefs of ``moved``'s tenants, in its contexts: a cached snapshot of
        such a tenant is resolved again on its next read, in those contexts only
        (node.snapshots), and its tenant's watches look again; other tenants' are untouched."""
        with self._book_lock:
            self.learned = learned
            books = self.reader.books
            tenants = dict(books.tenants)
            for tenant, contexts in moved.items():
                new = learned_book(self.policies, learned.get(tenant, {}))
                self.snapshots.rebooked(tenant, books.of(tenant), new, contexts)
                if new is self.policies:
                    tenants.pop(tenant, None)
                else:
                    tenants[tenant] = new
            self.reader.books = Books(self.policies, tenants)
            for tenant, contexts in moved.items():  # members' beliefs moved: so do roll-ups
                self.groups.policies_changed(contexts, tenant)
        for tenant in moved:
            self.watches.wake_tenant(tenant)

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
        with self._locks.held(by_subject):
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
            self.admit()
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
                footprint = self.sizes.check_write(old, state, gone, added)
                changes.append(Change(old, state, Delta(delta, frozenset(events))))
                footprints.append((state, footprint))
            ids = tuple(w.observation_id for w in written if w is not None)
            self._commit(changes, extra=self._request_rows(request, "observe", Replay(ids)))
            for state, footprint in footprints:
                self.sizes.remember(state, footprint)
        changes.sort(key=_subject_of)
        token = token_of_entries([change.token_entry for change in changes])
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
        slots = self.snapshots.index(state)
        for obs in sorted(slots.slot(item.context, key), key=_age):  # oldest first
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
        new = apply_observe(state, obs, removed)
        self.snapshots.written(slots, new, removed, obs)  # the next write's and read's start
        return obs, removed, observe_delta(state, obs, removed), new

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
        with self._locks.held([subject]):
            if request is not None:
                replay = self._replay(request, "retract", [subject])
                if replay is not None:
                    return replay.retracted, self._token([subject])
            self.admit()
            self._check_clock()
            state = self.state(subject)
            slot = self.snapshots.index(state).slot(context, key)
            count = sum(1 for obs in slot if obs.source == source)
            if audit is not None:
                detail = slot_detail(context, key, source, count)
                audit = dataclasses.replace(audit, detail=detail)
            event = self._next_dot(state)
            hlc = self._mint()
            calls = idempotency.keyed_calls(request, "retract", hlc, count)
            delta = retract_delta(state, self.actor, context, key, source, hlc, calls)
            new = merge(state, delta)
            self.sizes.check_withdrawal(state, new)
            change = Change(state, new, Delta(delta, frozenset([event])))
            rows = self._request_rows(request, "retract", Replay(retracted=count))
            self._commit([change], audit, rows)
            token = token_of_entries([change.token_entry])
        return count, token

    def forget(
        self, subject: Subject, audit: AuditRecord | None = None, request: Request | None = None
    ) -> str:
        """Erases the subject everywhere: every observation before now, wherever written (an
        erase bound), and their rows purged from disk. Writes after it, here or on a node that
        merged it, are kept (sync.crdt).

        With ``audit`` the erase is recorded in the audit log in the same batch. A ``request``
        seen before is answered as it was the first time (node.idempotency).
        """
        with self._locks.held([subject]):
            if request is not None and self._replay(request, "forget", [subject]) is not None:
                return self._token([subject])
            self.admit()
            self._check_clock()
            state = self.state(subject)
            self._next_dot(state)  # the erase's dot, within the bound every replica accepts
            hlc = self._mint()
            delta = erase_delta(
                state, self.actor, hlc, idempotency.keyed_calls(request, "forget", hlc)
            )
            change = Change(state, merge(state, delta), Delta(delta, delta.context.dots()))
            self._commit([change], audit, self._request_rows(request, "forget", Replay()))
            self.store.purge(subject, change.new.erased, _sources(state))
            token = token_of_entries([change.token_entry])
        metrics.FORGOTTEN.inc()
        return token

    def put(
        self,
        subject: Subject,
        context: str,
        key: str,
        statement: str | None,
        source: str,
        audit: AuditRecord | None = None,
    ) -> str:
        """A register in a node's own slot (a name ``node.validation.reserved``): sets it to
        ``statement`` (an observation of confidence 1 by ``source``, superseding every
        observation of the slot this node holds), or clears it (None: removes them). Two
        concurrent puts leave both observations: the newer by (timestamp, dot) is the value,
        on every node. Returns the handoff token; ``audit`` is written in the same batch."""
        with self._locks.held([subject]):
            self._check_clock()
            state = self.state(subject)
            event = self._next_dot(state)
            gone = self.snapshots.index(state).slot(context, key)
            held = [o.dot for o in gone]
            if statement is None:
                delta = clear_delta(state, self.actor, context, key)
                new = merge(state, delta)
            else:
                obs = Observation(
                    dot=event,
                    context=context,
                    key=key,
                    source=source,
                    statement=statement,
                    confidence=1.0,
                    evidence=(),
                    hlc=self._mint(),
                    origin=self.node,
                )
                delta = observe_delta(state, obs, held)
                new = apply_observe(state, obs, held)
            added = list(delta.observations.values())
            footprint = self.sizes.check_write(state, new, gone, added)
            change = Change(state, new, Delta(delta, frozenset([event])))
            self._commit([change], audit)
            self.sizes.remember(new, footprint)
            return token_of_entries([change.token_entry])

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
                metadata={"subject": state.subject, "actor": self.actor, "maximum": MAX_COUNTER},
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
        screened = screen(deltas, self.clock)
        accepted, indexes, reasons = screened.accepted, screened.indexes, screened.reasons
        limited: list[int] = []
        merged = 0
        with self._locks.held(accepted):
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
                    or new.keyed_calls != state.keyed_calls
                    or new.context != state.context
                    or new.observations.keys() != state.observations.keys()
                ):
                    found = self.sizes.past_limits(state, new)
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
                        bound, sources = change.new.erased, _sources(change.old)
                        self.store.purge(change.new.subject, bound, sources)
        return MergeOutcome(
            merged,
            tuple(screened.refused),
            screened.held_back,
            screened.reason,
            tuple(limited),
            tuple(reasons.items()),
        )

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
        for listen in self.listeners:
            listen(changes)
        for change in changes:
            self.watches.notify(change.new.subject)

    def refresh(self, subject: Subject) -> None:
        """Re-resolves ``subject``'s kept snapshot (none is resolved for a subject not kept)
        and wakes its watchers: for a change of what resolution takes besides the state."""
        if self.snapshots.get(subject) is not None:
            self.reader.snapshot(self.state(subject))
        self.groups.resolved_anew(subject)  # a member's beliefs moved: so do its roll-ups
        self.watches.notify(subject)

    def footprint(self, state: SubjectState) -> Footprint:
        """What ``state`` holds as the subject limits count it (node.sizes)."""
        return self.sizes.footprint(state)

    # -- reads ---------------------------------------------------------------------------

    @property
    def actor(self) -> str:
        """What this run's writes are named by: the store's actor, decided at start."""
        return self.store.actor

    def state(self, subject: Subject) -> SubjectState:
        return self.reader.state(subject)

    def at_position(
        self, subject: Subject, positions: dict[Subject, CausalContext] | None
    ) -> SubjectState:
        """The subject's state if it covers the token's position (node.reads.Reader); for a
        team or an organization, if it and its roll-up cover the token's positions of it and
        of its members (node.handoff.Handoffs.require_group)."""
        if positions is None or not is_group(subject):
            return self.reader.at_position(subject, positions)
        state = self.state(subject)
        reach = functools.partial(self._reach, subject)
        named = self.handoffs.require_group(state, positions, self.actor, reach, self.state)
        for covered in named:
            self.settled(covered)
        return state

    def _reach(self, group: Subject) -> frozenset[Subject]:
        """``group``'s members as its roll-up has them (node.groups.Following.reach), once the
        roll-up has every state of the group a read has seen."""
        self.settled(group)
        return self.groups.reach(group)

    def settled(self, subject: Subject) -> None:
        """Returns once every commit of ``subject`` that a read may see has run the listeners
        (a commit holds the subject's lock from before its state shows until after them): a
        roll-up then has every state of its members that a read found covering a position."""
        with self._locks.held([subject]):
            pass

    def model(
        self, subject: Subject, positions: dict[Subject, CausalContext] | None = None
    ) -> ModelView:
        """The subject's resolved snapshot (node.snapshots), if it covers ``positions``."""
        state = self.at_position(subject, positions)
        return ModelView(self.reader.snapshot(state), self._now_ms())

    def explain(
        self,
        subject: Subject,
        context: str,
        key: str,
        positions: dict[Subject, CausalContext] | None = None,
    ) -> tuple[Explanation | None, str]:
        state = self.at_position(subject, positions)
        return self.reader.explain(state, context, key), encode_token({subject: state.context})

    def position(self, subject: Subject) -> CausalContext:
        return self.state(subject).context

    def positions_of(
        self, subject: Subject, positions: dict[Subject, CausalContext]
    ) -> dict[Subject, CausalContext] | None:
        """The token's positions a read of ``subject`` waits for, within a read of several
        subjects (none: it waits for nothing): the subject's; a group's and its members'."""
        if not positions:
            return None
        wanted = {subject} | (self._reach(subject) if is_group(subject) else set())
        found = {s: p for s, p in positions.items() if s in wanted}
        if found and is_group(subject):  # a member removed since is then ignored, not refused
            found.setdefault(subject, CausalContext())
        return found or None

    # -- watch ---------------------------------------------------------------------------

    def subscribe(self, subject: Subject) -> Subscription:
        return self.watches.subscribe(subject)

    def unsubscribe(self, sub: Subscription) -> None:
        self.watches.unsubscribe(sub)

    def wake_watches(self) -> None:
        """Wakes every watch at once (its stream then checks its caller's token again)."""
        self.watches.wake_all()

    def close_watches(self) -> None:
        self.watches.close_all()

    def count_subjects(self, tenant: str) -> int:
        """How many subjects of ``tenant`` this node holds (an exact count of its key range),
        the node's own (``_``-named, as ListSubjects leaves them out) aside."""
        return sum(1 for s in self.store.subjects(tenant) if not s.id.startswith("_"))


def _peer_erase(peer: str, old: SubjectState, new: SubjectState) -> AuditRecord:
    """The audit record of an erase that arrived from ``peer``."""
    who = peer or "unknown"
    detail = (
        f"erase received from peer {who}: erase bound {physical_ms(old.erased.hlc)} -> "
        f"{physical_ms(new.erased.hlc)} (ms since the epoch)"
    )
    return AuditRecord(who, "peer", "forget", new.subject, detail)


def _age(obs: Observation) -> tuple[int, Dot]:
    return obs.hlc, obs.dot


def _slot_key(item: ObservationInput) -> str:
    return item.key or normalize_statement(item.statement)


def _sources(state: SubjectState | None) -> set[str]:
    """The sources of ``state``'s observations (whose index rows a purge compacts away)."""
    return set() if state is None else {obs.source for obs in state.observations.values()}


def _subject_of(change: Change) -> Subject:
    return change.new.subject
