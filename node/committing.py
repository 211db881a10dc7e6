"""How the engine commits changes of subjects, local writes and peers' merges alike.

Read-modify-write of one subject is serialized by a striped lock held until the batch is
durable, so per-subject changes reach the store in order and each builds on the last; different
subjects share fsyncs through the store's group commit. A commit runs the listeners, then wakes
the subjects' watches, before the locks are let go (``settled`` waits for that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.audit import AuditLog, AuditRecord
from node.locks import SubjectLocks
from node.reads import Reader
from node.sizes import SubjectSizes
from node.store import Change, Store
from node.watches import Watches
from sync.crdt import SubjectState
from sync.observation import Subject


class Committing:
    """The state, locks and commit the engine's write paths share (node.engine.Engine sets
    them up; node.writes and node.merges change subjects through them)."""

    store: Store
    node: str
    reader: Reader
    audit: AuditLog
    sizes: SubjectSizes
    watches: Watches
    listeners: list[Callable[[Sequence[Change]], None]]
    _locks: SubjectLocks

    @property
    def actor(self) -> str:
        """What this run's writes are named by: the store's actor, decided at start."""
        return self.store.actor

    def state(self, subject: Subject) -> SubjectState:
        return self.reader.state(subject)

    def settled(self, subject: Subject) -> None:
        """Returns once every commit of ``subject`` that a read may see has run the listeners
        (a commit holds the subject's lock from before its state shows until after them): a
        roll-up then has every state of its members that a read found covering a position."""
        with self._locks.held([subject]):
            pass

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
                self.store.commit(changes, [*extra, row], durable=durable)
        for listen in self.listeners:
            listen(changes)
        for change in changes:
            self.watches.notify(change.new.subject)

    def _purge(self, change: Change) -> None:
        """Purges from disk the rows of the observations ``change``'s erase bound removed."""
        self.store.purge(change.new.subject, change.new.erased, _sources(change.old))


def _sources(state: SubjectState | None) -> set[str]:
    """The sources of ``state``'s observations (whose index rows a purge compacts away)."""
    return set() if state is None else {obs.source for obs in state.observations.values()}


__all__ = ["Committing"]
