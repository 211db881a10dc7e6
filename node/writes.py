"""The engine's local writes: observations, retractions, erasures and a node's own registers.

Each write reads the subject's state under its lock, turns the request into a CRDT delta
(sync.crdt) and commits it in one durable batch (node.committing), then answers with a handoff
token; a keyed call seen before is answered as it was the first time (node.idempotency). A write
finds the slot it changes through the subject's slot index (node.snapshots), not by scanning the
subject. None is taken while the clock would mint timestamps peers refuse, nor past the event
counter every replica accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

from node import idempotency, metrics
from node.audit import AuditRecord, slot_detail
from node.committing import Committing
from node.errors import Reason, ResourceExhausted, clock_ahead
from node.idempotency import Replay, Request
from node.resolution import normalize_statement
from node.snapshots import Snapshots
from node.store import Change
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
from sync.delivery import Delta
from sync.hlc import ClockAheadError, HybridClock
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


class LocalWrites(Committing):
    """The changes this node originates: its callers' writes and its own registers
    (node.engine.Engine takes them)."""

    clock: HybridClock
    snapshots: Snapshots
    _sweeper: idempotency.Sweeper
    _now_ms: Callable[[], int]
    admit: Callable[[], None]  # asked by callers' writes, not registers (node.admission)

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
        policy = self.reader.policies.for_context(item.context)
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
            self._purge(change)
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


def _age(obs: Observation) -> tuple[int, Dot]:
    return obs.hlc, obs.dot


def _slot_key(item: ObservationInput) -> str:
    return item.key or normalize_statement(item.statement)


def _subject_of(change: Change) -> Subject:
    return change.new.subject


__all__ = ["LocalWrites", "ObservationInput", "WriteResult", "Written"]
