"""Keeping users' held records (node.heldrecords) for a node's groups, so loading a group after
a start reads its unchanged members' contributions instead of resolving their models.

``HeldKeeper`` does the work for node.groups.Following and takes the store's rows through
callables (no RocksDB here):

- ``prepare`` (outside Following's lock): each user's record if valid, else its model resolved
  and a new record made from that very snapshot (its state's digest, its book and withdrawals);
- ``confirm`` (under Following's lock): drops what is no longer valid against the stored
  digests and books now, writes the new records still valid, and hands the rest to the loading
  group (``held_of``, ``erased_of``); a user without a confirmed record is resolved there;
- ``checkpoint``: writes the records of users whose beliefs moved since (``dirty``), and
  deletes those of users no longer in a team.

A record is written only under Following's lock and only while its digest is the stored one:
a forget's commit stores a new digest before its listener takes that lock, and the purge that
follows deletes the record (node.store.Store.purge), so no record outlives the beliefs a forget
erased. Any record may be lost (they are written unsynced) or be stale: it is then resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from node import heldrecords, metrics
from node.heldrecords import Record
from node.policy import PolicyBook
from node.resolution import Belief, Withdrawn
from node.rollup import Held, Slot, held_by_slot
from sync.crdt import SubjectState
from sync.observation import Subject

# Records written per batch (a checkpoint of many users writes several).
BATCH = 1000


class Resolved(NamedTuple):
    """A user's model as resolved: the state, book and withdrawals it was resolved from."""

    state: SubjectState
    beliefs: Iterable[Belief]
    policies: PolicyBook
    withdrawn: Withdrawn


class Rows(Protocol):
    """The store's rows a keeper reads and writes (node.store.Store)."""

    def stored_digests(self, subjects: Sequence[Subject]) -> list[bytes | None]: ...

    def held_records(self, subjects: Sequence[Subject]) -> list[bytes | None]: ...

    def write_held_records(self, rows: Sequence[tuple[Subject, bytes | None]]) -> None: ...


class HeldKeeper:
    def __init__(
        self,
        rows: Rows,
        resolve: Callable[[Subject], Resolved],
        resolving_with: Callable[[str], tuple[PolicyBook, Withdrawn]],
    ) -> None:
        """``resolve``: a user's model now; ``resolving_with``: the book and withdrawals a
        tenant's users resolve with now."""
        self._rows = rows
        self._resolve = resolve
        self._resolving_with = resolving_with
        self._fingerprints: dict[str, tuple[PolicyBook, Withdrawn, bytes]] = {}
        self.ready: dict[Subject, Record] = {}  # confirmed, for the group loading (lock held)
        self.dirty: set[Subject] = set()  # followed users whose record may be stale (lock held)

    def fingerprint(self, tenant: str) -> bytes:
        """The fingerprint of what ``tenant``'s users resolve with now (kept per book)."""
        book, withdrawn = self._resolving_with(tenant)
        kept = self._fingerprints.get(tenant)
        if kept is not None and kept[0] is book and kept[1] is withdrawn:
            return kept[2]
        found = heldrecords.fingerprint(book, withdrawn)
        self._fingerprints[tenant] = (book, withdrawn, found)
        return found

    def prepare(self, users: Sequence[Subject]) -> dict[Subject, tuple[Record, bool]]:
        """Each of ``users``'s record, and whether it was made anew: the stored one if valid
        now, else made by resolving the user's model (counted in
        ``selfmodel_rollup_members_total``)."""
        found: dict[Subject, tuple[Record, bool]] = {}
        if not users:
            return found
        digests = self._rows.stored_digests(users)
        raws = self._rows.held_records(users)
        fingerprints = {t: self.fingerprint(t) for t in {u.tenant for u in users}}
        for user, digest, raw in zip(users, digests, raws, strict=True):
            record = heldrecords.valid(raw, user, digest, fingerprints)
            if record is not None:
                found[user] = (record, False)
                metrics.ROLLUP_MEMBERS.labels("stored").inc()
            else:
                found[user] = (self.record_of(user), True)
        return found

    def record_of(self, user: Subject) -> Record:
        """``user``'s record, from its model resolved now."""
        metrics.ROLLUP_MEMBERS.labels("resolved").inc()
        r = self._resolve(user)
        return Record(
            heldrecords.bound(user, r.state.digest()),
            heldrecords.fingerprint(r.policies, r.withdrawn),
            r.state.erased.hlc,
            held_by_slot(r.beliefs),
        )

    def confirm(self, found: dict[Subject, tuple[Record, bool]]) -> None:
        """With Following's lock held: keeps of ``found`` in ``ready`` the records valid now
        (``_valid``), and writes those of them made anew."""
        kept = self._valid({u: record for u, (record, _) in found.items()})
        self.ready.update(kept)
        self._write([(u, heldrecords.encode(r)) for u, r in kept.items() if found[u][1]])

    def held_of(
        self, user: Subject, resolve: Callable[[Subject], Iterable[Belief]]
    ) -> dict[Slot, Held]:
        """``user``'s held beliefs for a group loading (lock held): its confirmed record's, else
        its model as ``resolve`` gives it now (and its record is written at the next
        checkpoint)."""
        record = self.ready.pop(user, None)
        if record is not None:
            return record.held
        metrics.ROLLUP_MEMBERS.labels("resolved").inc()
        self.dirty.add(user)
        return held_by_slot(resolve(user))

    def erased_of(self, user: Subject) -> int | None:
        """``user``'s erase timestamp from its confirmed record (lock held); None: not known."""
        record = self.ready.get(user)
        return None if record is None else record.erased_hlc

    def write(self, made: dict[Subject, Record], gone: Sequence[Subject]) -> None:
        """With Following's lock held: writes the ``made`` records still valid now, deletes the
        records of ``gone`` users (a checkpoint)."""
        kept = self._valid(made)
        self._write(
            [*((u, None) for u in gone), *((u, heldrecords.encode(r)) for u, r in kept.items())]
        )

    def _valid(self, records: dict[Subject, Record]) -> dict[Subject, Record]:
        """Those of ``records`` whose digest is the one stored now and whose fingerprint is
        their tenant's now (the lock held: no listener moves either meanwhile)."""
        users = sorted(records)
        current = self._rows.stored_digests(users)
        fingerprints = {t: self.fingerprint(t) for t in {u.tenant for u in users}}
        return {
            u: records[u]
            for u, digest in zip(users, current, strict=True)
            if digest is not None
            and records[u].digest == heldrecords.bound(u, digest)
            and records[u].fingerprint == fingerprints[u.tenant]
        }

    def _write(self, rows: Sequence[tuple[Subject, bytes | None]]) -> None:
        for start in range(0, len(rows), BATCH):
            self._rows.write_held_records(rows[start : start + BATCH])


__all__ = ["BATCH", "HeldKeeper", "Resolved", "Rows"]
