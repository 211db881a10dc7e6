"""A subject's state as rows: a head row and one row per observation.

The head (``state`` column family, key: the subject's storage key) is the state's encoding
without its observations: subject, causal context, erase bound, withdrawals. Each observation is
a row of the ``observations`` column family, keyed by the subject's row epoch (4 bytes), its
storage key, ``0xff``, then its dot (actor, NUL, counter as 8 bytes big-endian), holding its
field of the state's encoding. So a write puts and deletes only the rows of the observations it
adds and removes, plus the head, and a load is a get and a prefix scan: the head's bytes followed
by the rows' bytes in key order decode as the state (a message's fields may come in any order).

Storage keys are UTF-8 and NUL, never ``0xff``: ``key + 0xff`` is one subject's rows and no
other's, and ``key + 0xff 0xff`` bounds them. Dot keys sort as dots do (a UTF-8 actor ends at
NUL, below any of its characters).

The epoch is 0 until a subject is quarantined; the quarantine gives it a new random one, kept in
its head (``0xff`` + 4 bytes before the encoding), so its later rows are scanned far from the
corrupt block: a scan, unlike a get, reads every file's block at its key, and a block that fails
its checksum stays until a compaction that cannot read it either.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Any

import rocksdict

from sync.causal import Dot
from sync.codec import EncodedState, decode_state, encode_state_reusing

log = logging.getLogger("node.store")

OBSERVATIONS = "observations"
# The schema that kept a subject's whole state as one value of the ``state`` column family.
ONE_VALUE_SCHEMA = 1
# Subjects rewritten per batch when a directory of that schema is migrated.
MIGRATION_BATCH = 500


_EPOCH_MARK = b"\xff"  # a head's first byte is a field tag (0x0a, the subject): never 0xff


def rows_prefix(subject_key: bytes, epoch: int = 0) -> bytes:
    return epoch.to_bytes(4, "big") + subject_key + b"\xff"


def rows_end(subject_key: bytes, epoch: int = 0) -> bytes:
    return epoch.to_bytes(4, "big") + subject_key + b"\xff\xff"


def new_epoch() -> int:
    return secrets.randbits(32) or 1


def row_key(prefix: bytes, dot: Dot) -> bytes:
    return b"%s%s\x00%s" % (prefix, dot.actor.encode(), dot.counter.to_bytes(8, "big"))


def head_of(encoded: EncodedState, epoch: int = 0) -> bytes:
    """The head row of an encoded state: its bytes without the observations' fields."""
    raw, entry, observations = encoded  # the token entry: subject and context, raw's start
    head = entry + raw[len(entry) + sum(map(len, observations.fields)) :]
    return _EPOCH_MARK + epoch.to_bytes(4, "big") + head if epoch else head


def split_head(value: bytes) -> tuple[int, bytes]:
    """A head row's epoch and encoding."""
    if value[:1] == _EPOCH_MARK:
        return int.from_bytes(value[1:5], "big"), value[5:]
    return 0, value


def read_rows(table: Any, subject_key: bytes, epoch: int = 0) -> list[bytes]:
    """A subject's observation rows' values, in key order. Raises RocksDB's corruption error
    when a block of them is corrupt (an iterator stops there; its status tells)."""
    prefix = rows_prefix(subject_key, epoch)
    # Bounded, so the scan never loads the block after the subject's rows (another subject's,
    # which may be the corrupt one).
    bounds = rocksdict.ReadOptions()
    bounds.set_iterate_lower_bound(prefix)
    bounds.set_iterate_upper_bound(rows_end(subject_key, epoch))
    it = table.iter(bounds)
    try:
        it.seek(prefix)
        values = []
        while it.valid():
            values.append(it.value())
            it.next()
        it.status()
        return values
    finally:
        del it


def put_rows(
    batch: rocksdict.WriteBatch,
    cf: Any,
    prefix: bytes,
    encoded: EncodedState,
    gone: Iterable[Dot],
    added: Iterable[Dot],
) -> None:
    """Writes the rows of a state change: ``gone`` deleted, ``added`` put from ``encoded``."""
    fields = encoded.observations
    for dot in gone:
        batch.delete(row_key(prefix, dot), cf)
    for dot in added:
        batch.put(row_key(prefix, dot), fields[dot][1], cf)


def migrate_one_value_states(
    db: Any, state: Any, handles: dict[str, Any], write_options: Any
) -> int:
    """Rewrites every state of a one-value directory as rows; returns how many subjects.

    A subject's head and rows go in one batch. The head decodes as a state without
    observations, so a migration cut short and run again rewrites a migrated subject's head as
    it is and puts no rows: it is idempotent, and the caller records the new schema after it.
    """
    migrated = 0
    after: bytes | None = None
    while True:
        rows: list[tuple[bytes, bytes]] = []
        for key, raw in state.items(from_key=after if after is not None else b""):
            if key == after:
                continue
            rows.append((key, raw))
            if len(rows) >= MIGRATION_BATCH:
                break
        if not rows:
            return migrated
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, raw in rows:
            full = decode_state(split_head(raw)[1])  # a head already migrated: no rows
            encoded = encode_state_reusing(full)
            batch.put(key, head_of(encoded), handles["state"])
            rows_cf = handles[OBSERVATIONS]
            put_rows(batch, rows_cf, rows_prefix(key), encoded, (), full.observations)
        db.write(batch, write_options)
        migrated += len(rows)
        after = rows[-1][0]
