"""The attribution index: what each source contributed, a row per observation it holds.

The ``sources`` column family keeps, for every observation of an agents' context (a name not
beginning with ``_``), a row keyed ``tenant NUL source NUL kind id NUL context NUL key NUL
actor NUL`` + the dot's counter (8 bytes big-endian), holding the observation's hybrid timestamp
(8 bytes big-endian). So one source's contributions in a tenant are one prefix scan, grouped by
subject, then slot, then dot, and a page of them costs its own rows.

The rows follow the subject's observation rows exactly: a commit puts and deletes them for the
dots whose rows it puts and deletes (node.store.commit), in the same WriteBatch, for local writes
and merges alike. No name holds NUL (node.validation refuses control characters in every name
and statement, an agent's and a peer's), so the separators are unambiguous; the counter, which
may hold NUL bytes, is the key's last 8 bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

import rocksdict

from node.store.rows import OBSERVATIONS, read_rows, split_head
from sync.causal import Dot
from sync.codec import decode_state
from sync.observation import Observation, Subject, SubjectKind

log = logging.getLogger("node.store")

SOURCES = "sources"
# The schema before the index: a directory of it gets its index built at open.
UNINDEXED_SCHEMA = 2
# Subjects indexed per batch when an existing directory's index is built.
INDEX_BATCH = 500


class Contribution(NamedTuple):
    """One observation a source holds in a subject's slot, as the index lists it."""

    subject: Subject
    context: str
    key: str
    dot: Dot
    hlc: int


def indexed(obs: Observation) -> bool:
    """Whether an observation has an index row: those of agents' contexts only."""
    return not obs.context.startswith("_")


def source_prefix(tenant: str, source: str) -> bytes:
    return b"%s\x00%s\x00" % (tenant.encode(), source.encode())


def subject_prefix(tenant: str, source: str, subject: Subject) -> bytes:
    """The rows of one source's observations of one subject (a range to compact on purge)."""
    return source_prefix(tenant, source) + b"%c%s\x00" % (subject.kind, subject.id.encode())


def row_key(subject: Subject, obs: Observation) -> bytes:
    return b"%s%s\x00%s\x00%s\x00%s" % (
        subject_prefix(subject.tenant, obs.source, subject),
        obs.context.encode(),
        obs.key.encode(),
        obs.dot.actor.encode(),
        obs.dot.counter.to_bytes(8, "big"),
    )


def parse_row(tenant: str, key: bytes, value: bytes) -> Contribution:
    """A row of ``tenant`` back as the contribution it records."""
    head, counter = key[:-9], int.from_bytes(key[-8:], "big")
    _, _, who, context, slot_key, actor = head.split(b"\x00")
    subject = Subject(tenant, SubjectKind(who[0]), who[1:].decode())
    dot = Dot(actor.decode(), counter)
    return Contribution(
        subject, context.decode(), slot_key.decode(), dot, int.from_bytes(value, "big")
    )


def put_index_rows(
    batch: rocksdict.WriteBatch,
    cf: Any,
    subject: Subject,
    gone: Iterable[Observation],
    added: Iterable[Observation],
) -> None:
    """The index rows of a state change: ``gone`` observations' deleted, ``added`` ones' put."""
    for obs in gone:
        if indexed(obs):
            batch.delete(row_key(subject, obs), cf)
    for obs in added:
        if indexed(obs):
            batch.put(row_key(subject, obs), obs.hlc.to_bytes(8, "big"), cf)


def build_index(db: Any, tables: dict[str, Any], cf: Any, write_options: Any) -> int:
    """Writes the index rows of every stored state (its head and rows: node.store.rows);
    returns how many subjects. Idempotent: a build cut short and run again puts the same rows,
    and the caller records the new schema after it."""
    count = 0
    batch = rocksdict.WriteBatch(raw_mode=True)
    pending = 0
    for key, value in tables["state"].items():
        epoch, head = split_head(value)
        state = decode_state(head + b"".join(read_rows(tables[OBSERVATIONS], key, epoch)))
        put_index_rows(batch, cf, state.subject, (), state.observations.values())
        count += 1
        pending += 1
        if pending >= INDEX_BATCH:
            db.write(batch, write_options)
            batch = rocksdict.WriteBatch(raw_mode=True)
            pending = 0
    if pending:
        db.write(batch, write_options)
    return count


def subject_rows(table: Any, subject: Subject) -> list[bytes]:
    """The keys of every index row of ``subject``, whatever its source: a skip over the
    tenant's sources (a seek per source), then each source's range of the subject. For a
    subject whose stored state is lost (a quarantine), whose observations are unknown."""
    tenant = subject.tenant.encode() + b"\x00"
    found: list[bytes] = []
    start = tenant
    while True:
        first = next(iter(table.keys(from_key=start)), None)
        if first is None or not first.startswith(tenant):
            return found
        source = first[len(tenant) :].split(b"\x00", 1)[0]
        prefix = subject_prefix(subject.tenant, source.decode(), subject)
        for key in table.keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            found.append(key)
        start = tenant + source + b"\x01"  # past every row of this source: names hold no NUL


def scan(
    table: Any, tenant: str, source: str, after: bytes, limit: int
) -> list[tuple[bytes, Contribution]]:
    """Up to ``limit`` contributions of ``source`` in ``tenant`` (with their row keys) whose row
    keys follow ``after`` (from the first when ``after`` is below them), in key order: by
    subject, slot, dot."""
    prefix = source_prefix(tenant, source)
    found: list[tuple[bytes, Contribution]] = []
    if limit <= 0:
        return found
    for key, value in table.items(from_key=max(prefix, after)):
        if not key.startswith(prefix):
            break
        if key == after:
            continue
        found.append((key, parse_row(tenant, key, value)))
        if len(found) >= limit:
            break
    return found


def scan_every_tenant(
    table: Any, source: str, after: bytes, limit: int
) -> list[tuple[bytes, Contribution]]:
    """``scan`` over every agents' tenant (names beginning with ``_`` are the node's own):
    up to ``limit`` contributions of ``source`` whose row keys follow ``after``, by tenant,
    then as ``scan``. A seek per tenant passed, as ``subject_rows`` skips sources."""
    found: list[tuple[bytes, Contribution]] = []
    start = after
    while len(found) < limit:
        first = next(iter(table.keys(from_key=start)), None)
        if first is None:
            return found
        tenant = first.split(b"\x00", 1)[0]
        start = tenant + b"\x01"  # past every row of this tenant: names hold no NUL
        if tenant.startswith(b"_"):
            continue
        found += scan(table, tenant.decode(), source, after, limit - len(found))
    return found


__all__ = [
    "INDEX_BATCH",
    "SOURCES",
    "UNINDEXED_SCHEMA",
    "Contribution",
    "build_index",
    "indexed",
    "parse_row",
    "put_index_rows",
    "row_key",
    "scan",
    "scan_every_tenant",
    "source_prefix",
    "subject_prefix",
    "subject_rows",
]
