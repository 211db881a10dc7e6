"""Reading the store, and what a read does with damage it finds.

A state is read from the cache, else from RocksDB (its head and rows: node.store.rows), where a
write may show while its WAL syncs (node.store.commit). A state with a row RocksDB finds corrupt
is quarantined: written down as the empty state, digest included, so anti-entropy brings it back
from the peers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import cast

from node.store import digests
from node.store.commit import Change, GroupCommit
from node.store.rows import OBSERVATIONS, read_rows, split_head
from node.store.sources import SOURCES, subject_rows
from node.store.tables import is_corruption
from sync.codec import decode_state
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind


class Reads(GroupCommit):
    """Part of node.store.Store: reads, peer sequences and quarantine."""

    _quarantine_lock: threading.Lock  # serializes quarantines, each checked again under it

    def load(self, subject: Subject) -> SubjectState | None:
        cached = self._cache.get(subject)
        if cached is not None:
            return cached.state
        writes = self._cache_writes
        try:
            raw = self._stored(subject.storage_key())
        except Exception as exc:
            if not is_corruption(exc):
                raise
            return self.quarantine(subject, exc)
        if raw is None:
            return None
        state = decode_state(raw)
        self._cache_read(state, len(raw), writes)
        return state

    def holds_observations(self, subject: Subject) -> bool:
        """Whether a subject holds an observation, read from one row without decoding the
        subject or keeping it in the cache (listings must not push hot states out of it)."""
        cached = self._cache.get(subject)
        if cached is not None:
            return bool(cached.state.observations)
        key = subject.storage_key()
        try:
            value: bytes | None = self._cf["state"].get(key)
            if value is None:
                return False
            epoch, _ = split_head(value)
            return bool(read_rows(self._cf[OBSERVATIONS], key, epoch, limit=1))
        except Exception as exc:
            if not is_corruption(exc):
                raise
            self.quarantine(subject, exc)
            return False

    def _stored(self, key: bytes) -> bytes | None:
        """A subject's stored bytes: its head row and its observation rows (node.store.rows),
        which decode as its state; None when it has none. Raises RocksDB's corruption error
        when a row of it is corrupt."""
        value: bytes | None = self._cf["state"].get(key)
        if value is None:
            return None
        epoch, head = split_head(value)
        if epoch:
            self._epochs[key] = epoch
        return head + b"".join(read_rows(self._cf[OBSERVATIONS], key, epoch))

    def quarantine(self, subject: Subject, exc: BaseException) -> SubjectState | None:
        """Stops vouching for a subject whose stored state RocksDB finds corrupt; returns None,
        the state it is read as from then on.

        Its state is written down as the empty state, and its digest with it: the digest row,
        stored apart, would otherwise keep matching the peers' and anti-entropy would never
        repair it. The empty state's digest differs from any written one, so anti-entropy
        brings the subject's state back from the peers. A new actor is taken first, as after
        a crash: the lost state may have held dots of this run that no peer has yet.
        """
        key = subject.storage_key()
        with self._quarantine_lock:
            try:
                raw = self._stored(key)
            except Exception as again:
                if not is_corruption(again):
                    raise
            else:  # rewritten since it was found corrupt: no longer so
                return None if raw is None else self.load(subject)
            self._report(
                "sst", f"the stored state of {subject} is corrupt ({exc}); repaired from peers"
            )
            stored = self._cf["digest"].get(digests.digest_row(key))
            self.renew_actor()
            change = Change(None, SubjectState(subject), None)
            change.rewrite = True  # its rows, corrupt or not, are deleted
            change.old_digest = stored if stored is not None else digests.EMPTY_HASH
            # Its attribution index rows too: they name observations it no longer holds.
            index = [(SOURCES, k, None) for k in subject_rows(self._cf[SOURCES], subject)]
            self.commit([change], index)
        return None

    def verify(self, pause_s: float = 0.0) -> int:
        """Reads every stored state (head and rows), quarantining those RocksDB finds corrupt;
        returns how many.

        A get per subject (listed by its digest row), not a scan of heads: an iterator over a
        corrupt block ends there (its status tells, but the subjects after it stay unread).
        ``pause_s`` after each thousand subjects leaves the node's other threads most of the time.
        """
        found = 0
        after = b"S"
        while True:
            rows = self.scan("digest", after, 1000)
            keys = [k for k, _ in rows if k.startswith(b"S")]
            for k in keys:
                try:
                    self._stored(k[3:])
                except Exception as exc:
                    if not is_corruption(exc):
                        raise
                    self.quarantine(Subject.from_storage_key(k[3:]), exc)
                    found += 1
            if len(keys) < len(rows) or len(rows) < 1000:
                return found
            after = rows[-1][0]
            time.sleep(pause_s)

    def subjects(self, tenant: str | None = None) -> Iterator[Subject]:
        prefix = b"" if tenant is None else tenant.encode() + b"\x00"
        for key in self._cf["state"].keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield Subject.from_storage_key(key)

    def group_subjects(self) -> list[Subject]:
        """The stored teams and organizations, in key order, without reading the users' keys:
        a key is tenant, NUL, kind, id, so each tenant's groups are one range (its teams, then
        its organizations) found by a seek, and the next tenant by a seek past this one's."""
        table, after = self._cf["state"], b""
        found: list[Subject] = []
        while (first := next(iter(table.keys(from_key=after)), None)) is not None:
            tenant = first.partition(b"\x00")[0] + b"\x00"
            start, end = tenant + bytes([SubjectKind.TEAM]), tenant + bytes([SubjectKind.ORG + 1])
            for key in table.keys(from_key=start):
                if key >= end:
                    break
                found.append(Subject.from_storage_key(key))
            after = tenant + b"\xff"
        return found

    def scan_keys(self, cf: str, prefix: bytes, after: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys of a column family starting with ``prefix``, in key order,
        strictly after ``after`` (from the prefix's first key when ``after`` is below it)."""
        keys: list[bytes] = []
        for key in self._cf[cf].keys(from_key=max(prefix, after)):
            if not key.startswith(prefix) or len(keys) >= limit:
                break
            if key != after:
                keys.append(key)
        return keys

    def bucket_hashes(self) -> list[bytes]:
        return list(self._buckets)

    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]:
        return digests.bucket_digests(self._cf["digest"], bucket)

    def peer_seq(self, kind: str, peer: str) -> int:
        """``acked``: how far ``peer`` acknowledged our outbox; ``applied``: how far we merged
        ``peer``'s outbox."""
        raw = self._cf["peers"].get(f"{kind}:{peer}".encode())
        return int(raw) if raw is not None else 0

    def set_peer_seq(self, kind: str, peer: str, seq: int) -> None:
        """Records a sequence; skipped while writes are suspended (a sequence recorded lower
        than it is only makes a peer resend deltas it has)."""
        if self.suspended is None:
            self._cf["peers"].put(f"{kind}:{peer}".encode(), str(seq).encode())

    @staticmethod
    def peer_seq_row(kind: str, peer: str, seq: int) -> tuple[str, bytes, bytes]:
        return ("peers", f"{kind}:{peer}".encode(), str(seq).encode())

    def scan(
        self, cf: str, after: bytes = b"", limit: int = 100, *, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` rows of a column family in key order, strictly after ``after``
        (forward only), or the last rows first with ``reverse``."""
        rows: list[tuple[bytes, bytes]] = []
        if limit <= 0:
            return rows
        table = self._cf[cf]
        items = table.items(backwards=True) if reverse else table.items(from_key=after)
        for key, value in items:
            if not reverse and key == after:
                continue
            rows.append(cast(tuple[bytes, bytes], (key, value)))
            if len(rows) >= limit:
                break
        return rows

    def get_meta(self, cf: str, key: bytes) -> bytes | None:
        value: bytes | None = self._cf[cf].get(key)
        return value
