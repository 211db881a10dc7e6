"""What a node answers reads with: a subject's state if it covers a handoff position (a read never
waits for one: node.handoff), and the
state's resolved snapshot (node.snapshots).

Readers take no lock to read a state: they see what the store's cache shows, a write once it is
acknowledged (a subject missing from the cache is read from RocksDB, where a write may show
while it syncs: see node.store). A snapshot served is always of the state the read loaded, or a
later one: never of a state without a change the read's state holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node import metrics
from node.handoff import Handoffs
from node.policy import PolicyBook
from node.reliability import Books
from node.resolution import Belief, Explanation, Withdrawn, counted, explain_slot
from node.snapshots import Snapshot, Snapshots
from node.store import Change, Store
from node.withdrawals import Withdrawals
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
        handoffs: Handoffs,
        withdrawals: Withdrawals | None = None,
    ) -> None:
        self.store = store
        self.node = store.node
        # The books in force: a subject resolves with its tenant's (node.reliability.Books).
        self.books = Books(policies)
        self.snapshots = snapshots
        self.handoffs = handoffs  # what a read with a handoff token is answered
        # Each tenant's withdrawn sources, an input of resolution (node.withdrawals).
        self.withdrawals = withdrawals or Withdrawals(self.state)

    @property
    def policies(self) -> PolicyBook:
        """The operators' book (every context's policy; reliability without learned weights)."""
        return self.books.operators

    def state(self, subject: Subject) -> SubjectState:
        return self.store.load(subject) or SubjectState(subject)

    def at_position(
        self, subject: Subject, positions: dict[Subject, CausalContext] | None
    ) -> SubjectState:
        """The subject's state, if it covers the token's position for it; never waits (else
        InvalidArgument or HandoffPending: node.handoff.Handoffs.require)."""
        state = self.state(subject)
        if positions is not None:
            self.handoffs.require(state, positions, self.store.actor)
        return state

    def snapshot(self, state: SubjectState) -> Snapshot:
        """The snapshot of ``state`` or of a later state of its subject: kept until the subject
        changes; after a change only the slots it touched are resolved again. Resolved with
        the book of the subject's tenant."""
        book = self.books.of(state.subject.tenant)
        withdrawn = self.withdrawals.of(state.subject.tenant)
        found = self.snapshots.get(state.subject)
        if self._current(found, state, book, withdrawn):
            assert found is not None
            return found
        with self.snapshots.serialized(state.subject):
            # The latest state (it covers whatever this one did): readers that loaded states
            # a change apart then share its resolution instead of resolving each in turn.
            latest = self.state(state.subject)
            withdrawn = self.withdrawals.of(state.subject.tenant)
            found = self.snapshots.get(state.subject)
            if self._current(found, latest, book, withdrawn):
                assert found is not None
                return found
            snapshot, incremental = self.snapshots.resolve_locked(latest, book, withdrawn)
        metrics.RESOLUTIONS.labels("change" if incremental else "whole").inc()
        return snapshot

    def follow(self, changes: Sequence[Change]) -> None:
        """Advances the kept snapshot of each changed subject (a listener of the engine: every
        committed change), so what is kept, and node.quality's figures, follow every change;
        a subject with no snapshot kept is resolved on its next read only."""
        for change in changes:
            if self.snapshots.get(change.new.subject) is not None:
                self.snapshot(change.new)

    @staticmethod
    def _current(
        found: Snapshot | None, state: SubjectState, book: PolicyBook, withdrawn: Withdrawn
    ) -> bool:
        """Whether ``found`` is the resolution of ``state`` under ``book`` and ``withdrawn``
        (its tenant's, as this node resolves it now)."""
        return (
            found is not None
            and found.state is state
            and found.policies is book
            and found.withdrawn is withdrawn
        )

    def explain(self, state: SubjectState, context: str, key: str) -> Explanation | None:
        """The full story of one slot of ``state``: every observation counted, weighed with
        the book of the subject's tenant (those of a withdrawn source are left out)."""
        found = counted(
            self.snapshots.index(state).slot(context, key),
            self.withdrawals.of(state.subject.tenant),
        )
        if not found:
            return None
        book = self.books.of(state.subject.tenant)
        return explain_slot(found, book.for_context(context), book)


__all__ = ["ModelView", "Reader"]
