"""Tenant-wide withdrawals of a source: what they are, and how a node follows them.

A tenant's withdrawals live in one of its subjects, ``Subject(tenant, ORG, "_sources")``
(reserved: no agent names it), as registers (``Engine.put``) of context ``_withdrawn``, one per
source (the key). A register's value is its newest observation; that observation's timestamp
is the withdrawal's time. Every observation of the source in the tenant's agents' contexts from
before it is left out of resolution (node.resolution: ``withdrawn``), on every node, once the
register has replicated there: it is a pure function of the replicated state. A later
observation of the source counts again; clearing the register lifts the withdrawal (a clear is
an observed-remove: a withdrawal made concurrently, unseen by the clearing node, stays).

``Withdrawals`` keeps each tenant's current withdrawals (loaded on first use, then followed
through ``Engine.listeners``); the object changes exactly when its content does, so a resolved
snapshot is served only while the withdrawals it was resolved with are still the tenant's (the
very object: node.reads). When a tenant's withdrawals change, the subjects holding an
observation of a source concerned (found through the attribution index, node.store.sources)
are re-resolved if their snapshot is kept, and their watchers woken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import MappingProxyType

from node.resolution import NO_WITHDRAWN, Withdrawn
from node.snapshots import changed_sources
from node.store import Change, Store
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

SOURCES_ID = "_sources"
WITHDRAWN = "_withdrawn"
# Index rows read per page while finding the subjects a changed withdrawal concerns.
FOLLOW_PAGE = 1000


def sources_subject(tenant: str) -> Subject:
    """The subject holding ``tenant``'s withdrawals."""
    return Subject(tenant, SubjectKind.ORG, SOURCES_ID)


def is_sources_subject(subject: Subject) -> bool:
    return subject.kind == SubjectKind.ORG and subject.id == SOURCES_ID


def withdrawn_of(state: SubjectState) -> dict[str, int]:
    """The withdrawals a ``_sources`` state holds: per source (the register's key), the
    timestamp of the register's value (its newest observation by (timestamp, dot),
    sync.crdt.register)."""
    newest: dict[str, tuple[int, object]] = {}
    for obs in state.observations.values():
        if obs.context == WITHDRAWN:
            held = newest.get(obs.key)
            if held is None or (obs.hlc, obs.dot) > held:
                newest[obs.key] = (obs.hlc, obs.dot)
    return {source: hlc for source, (hlc, _) in newest.items()}


class Withdrawals:
    """Each tenant's current withdrawals. Thread-safe."""

    def __init__(self, load: Callable[[Subject], SubjectState]) -> None:
        self._load = load
        self._by_tenant: dict[str, Withdrawn] = {}
        self._lock = threading.Lock()

    def of(self, tenant: str) -> Withdrawn:
        found = self._by_tenant.get(tenant)
        if found is not None:
            return found
        with self._lock:
            found = self._by_tenant.get(tenant)
            if found is None:
                found = _frozen(withdrawn_of(self._load(sources_subject(tenant))))
                self._by_tenant[tenant] = found
            return found

    def follow(self, changes: Sequence[Change]) -> list[tuple[str, set[str]]]:
        """Takes in the committed ``changes`` (a listener's batch); returns each tenant whose
        withdrawals changed, with the sources whose withdrawal did."""
        moved: list[tuple[str, set[str]]] = []
        for change in changes:
            subject = change.new.subject
            if not is_sources_subject(subject):
                continue
            now = withdrawn_of(change.new)
            with self._lock:
                # Set after the commit, so a load racing with it never outlives it.
                before = self._by_tenant.get(subject.tenant, NO_WITHDRAWN)
                if dict(before) == now:
                    self._by_tenant.setdefault(subject.tenant, before)
                    continue
                after = _frozen(now)
                self._by_tenant[subject.tenant] = after
            moved.append((subject.tenant, changed_sources(before, after)))
        return moved


def slots_of_sources(
    store: Store, tenant: str, sources: set[str]
) -> dict[Subject, set[tuple[str, str]]]:
    """The slots (context, key) of ``tenant``'s subjects holding an observation of one of
    ``sources``, per subject in storage order per source (from the attribution index, a page
    at a time)."""
    found: dict[Subject, set[tuple[str, str]]] = {}
    for source in sorted(sources):
        after = b""
        while True:
            rows = store.contributions(tenant, source, after, FOLLOW_PAGE)
            for _, row in rows:
                found.setdefault(row.subject, set()).add((row.context, row.key))
            if len(rows) < FOLLOW_PAGE:
                break
            after = rows[-1][0]
    return found


def follower(
    withdrawals: Withdrawals, store: Store, refresh: Callable[[Subject], None]
) -> Callable[[Sequence[Change]], None]:
    """The listener (``Engine.listeners``) that follows the tenants' withdrawals: on a change,
    ``refresh`` (re-resolve if kept, wake its watchers) each subject it concerns."""

    def follow(changes: Sequence[Change]) -> None:
        for tenant, sources in withdrawals.follow(changes):
            for subject in slots_of_sources(store, tenant, sources):
                refresh(subject)

    return follow


def _frozen(withdrawn: dict[str, int]) -> Withdrawn:
    return MappingProxyType(withdrawn) if withdrawn else NO_WITHDRAWN


__all__ = [
    "SOURCES_ID",
    "WITHDRAWN",
    "Withdrawals",
    "follower",
    "is_sources_subject",
    "slots_of_sources",
    "sources_subject",
    "withdrawn_of",
]
