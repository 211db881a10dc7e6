"""What a node answers reads with: a subject's state once it covers a handoff position, and the
state's resolved snapshot (node.snapshots).

Readers take no lock to read a state: they see what the store's cache shows, a write once it is
acknowledged (a subject missing from the cache is read from RocksDB, where a write may show
while it syncs: see node.store). A snapshot served is always of the state the read loaded, or a
later one: never of a state without a change the read's state holds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from node import metrics
from node.errors import HandoffTimeout, InvalidArgument, ResourceExhausted
from node.handoff import WaitSlots, implausible
from node.policy import PolicyBook
from node.resolution import Belief, Explanation, explain_slot
from node.snapshots import Snapshot, Snapshots
from node.store import Store
from sync.causal import CausalContext
from sync.crdt import SubjectState
from sync.observation import Subject


@dataclass(frozen=True, slots=True)
class ModelView:
    snapshot: Snapshot
    resolved_ms: int  # the read's instant (nothing resolved depends on it)

    @property
    def state(self) -> SubjectState:
        return self.snapshot.state

    @property
    def beliefs(self) -> tuple[Belief, ...]:
        return self.snapshot.beliefs

    @property
    def token(self) -> str:
        return self.snapshot.token


class Reader:
    def __init__(
        self,
        store: Store,
        policies: PolicyBook,
        snapshots: Snapshots,
        waits: WaitSlots,
        *,
        members: frozenset[str],
        max_handoff_lead: int,
    ) -> None:
        self.store = store
        self.node = store.node
        self.policies = policies
        self.snapshots = snapshots
        self.waits = waits
        # The nodes whose actors a handoff token may name (node.handoff.implausible).
        self.members = members
        self.max_handoff_lead = max_handoff_lead
        self._merged = threading.Condition()

    def changed(self) -> None:
        """Wakes the handoff waits (after a commit)."""
        with self._merged:
            self._merged.notify_all()

    def state(self, subject: Subject) -> SubjectState:
        return self.store.load(subject) or SubjectState(subject)

    def wait_for(
        self,
        subject: Subject,
        positions: dict[Subject, CausalContext] | None,
        timeout_s: float,
        holder: str = "",
    ) -> SubjectState:
        """The subject's state once it covers the token's position for it.

        A token that names no position of ``subject``, or a position no node can have issued
        (node.handoff), is InvalidArgument at once; a wait beyond the node's or ``holder``'s
        share of waits is ResourceExhausted at once; a wait that runs out is HandoffTimeout.
        """
        state = self.state(subject)
        if positions is None:
            return state
        position = positions.get(subject)
        if position is None:
            named = ", ".join(str(s) for s in sorted(positions)[:3])
            raise InvalidArgument(
                "at_least",
                f"is a handoff token of {named}{', ...' if len(positions) > 3 else ''}, not of "
                f"{subject}: pass a token that a write or read of {subject} returned",
            )
        if state.covers(position):
            return state
        why = implausible(
            state, position, actor=self.store.actor, members=self.members,
            lead=self.max_handoff_lead,
        )  # fmt: skip
        if why is not None:
            metrics.HANDOFF_REFUSED.labels("implausible").inc()
            raise InvalidArgument("at_least", f"{why}: no node has issued that position")
        try:
            release = self.waits.acquire(holder or "anonymous")
        except ResourceExhausted:
            metrics.HANDOFF_REFUSED.labels("busy").inc()
            raise
        metrics.HANDOFF_WAITS.inc()
        try:
            return self._wait_covered(subject, position, timeout_s)
        finally:
            release()
            metrics.HANDOFF_WAITS.dec()

    def _wait_covered(
        self, subject: Subject, position: CausalContext, timeout_s: float
    ) -> SubjectState:
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

    def snapshot(self, state: SubjectState) -> Snapshot:
        """The snapshot of ``state`` or of a later state of its subject: kept until the subject
        changes; after a change only the slots it touched are resolved again."""
        found = self.snapshots.get(state.subject)
        if found is not None and found.state is state and found.policies is self.policies:
            return found
        with self.snapshots.serialized(state.subject):
            # The latest state (it covers whatever this one did): readers that loaded states
            # a change apart then share its resolution instead of resolving each in turn.
            latest = self.state(state.subject)
            found = self.snapshots.get(state.subject)
            if found is not None and found.state is latest and found.policies is self.policies:
                return found
            snapshot, incremental = self.snapshots.resolve_locked(latest, self.policies)
        metrics.RESOLUTIONS.labels("change" if incremental else "whole").inc()
        return snapshot

    def explain(self, state: SubjectState, context: str, key: str) -> Explanation | None:
        """The full story of one slot of ``state``: every observation, weighed."""
        found = self.snapshots.index(state).slot(context, key)
        if not found:
            return None
        return explain_slot(found, self.policies.for_context(context), self.policies)


__all__ = ["ModelView", "Reader"]
