"""Held records: what a user contributes to its groups' roll-ups, kept on disk with the state
and the book it was resolved from, so a node's first group read after a start reads it instead
of resolving the user's model again.

A record is (digest, fingerprint, erase timestamp, held beliefs): ``held`` is node.rollup's
contribution of each slot of the user's resolved model, ``digest`` the exact digest of the state
it was resolved from (sync.crdt.digest: its erase bound, context, observation dots, withdrawals
and keyed calls), ``fingerprint`` what else resolution took (``fingerprint``: the tenant's book
and withdrawals, and the code that resolves and rolls up). A record is *valid* for a user
exactly when its digest is the user's stored digest now and its fingerprint is that of the book
and withdrawals the user resolves with now: its held beliefs are then what resolving the user's
model would give, so a roll-up built from valid records equals the one from scratch. Anything
else (an older state, another book, another release, a record cut short) is resolved again.
Pure: no RocksDB (node.store keeps the rows), no gRPC.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from node import policy, resolution, rollup, snapshots
from node.policy import PolicyBook
from node.resolution import Withdrawn
from node.rollup import Held, Slot
from sync.crdt import bound_digest
from sync.observation import Subject

_SIZE = 16  # bytes of a digest and of a fingerprint


# The code a record's held beliefs come from: a release that changes how beliefs resolve or
# roll up never reads records another one wrote (its sources; else, where they are not
# shipped, the installed release's version).
def _code() -> bytes:
    try:
        text = b"".join(
            Path(m.__file__ or "").read_bytes() for m in (policy, resolution, rollup, snapshots)
        )
    except OSError:
        text = importlib.metadata.version("selfmodel").encode()
    return hashlib.blake2b(text, digest_size=_SIZE).digest()


_CODE = _code()


class Record(NamedTuple):
    digest: bytes  # of the state resolved, bound to its subject (``bound``)
    fingerprint: bytes  # of the book, withdrawals and code it was resolved with
    erased_hlc: int  # the state's erase bound's timestamp
    held: dict[Slot, Held]


def bound(subject: Subject, digest: bytes) -> bytes:
    """A state's digest bound to its subject (sync.crdt.bound_digest): two subjects of equal
    histories have equal digests (dots count per subject), never equal bound ones."""
    return bound_digest(subject.storage_key(), digest)


def fingerprint(book: PolicyBook, withdrawn: Withdrawn) -> bytes:
    """What a user's resolution takes besides its state: its tenant's ``book`` and
    ``withdrawn`` sources, and the code, as 16 bytes equal exactly when those are equal."""
    canonical = [*book.canonical(), sorted(withdrawn.items())]
    text = json.dumps(canonical, separators=(",", ":")).encode()
    return hashlib.blake2b(text, key=_CODE, digest_size=_SIZE).digest()


def encode(record: Record) -> bytes:
    rows = [
        [c, k, h.statement, h.wording, h.micro, h.changed_ms] for (c, k), h in record.held.items()
    ]
    body = json.dumps([record.erased_hlc, rows], separators=(",", ":"), ensure_ascii=False)
    return record.digest + record.fingerprint + body.encode()


def decode(raw: bytes) -> Record | None:
    """The record ``raw`` holds; None when it is not one (it is then resolved again)."""
    if len(raw) <= 2 * _SIZE:
        return None
    try:
        erased, rows = json.loads(raw[2 * _SIZE :])
        found = {(c, k): Held(s, w, int(m), int(t)) for c, k, s, w, m, t in rows}
    except (ValueError, TypeError):
        return None
    return Record(raw[:_SIZE], raw[_SIZE : 2 * _SIZE], int(erased), found)


def valid(
    raw: bytes | None,
    subject: Subject,
    stored_digest: bytes | None,
    fingerprints: Mapping[str, bytes],
) -> Record | None:
    """The record ``raw``, if it is valid for ``subject`` whose stored digest is
    ``stored_digest`` (None: nothing stored) and whose tenant's fingerprint is in
    ``fingerprints``; else None. Checks the digest and fingerprint before decoding."""
    if raw is None or stored_digest is None or len(raw) <= 2 * _SIZE:
        return None
    if raw[_SIZE : 2 * _SIZE] != fingerprints.get(subject.tenant):
        return None
    if raw[:_SIZE] != bound(subject, stored_digest):
        return None
    return decode(raw)


__all__ = ["Record", "bound", "decode", "encode", "fingerprint", "valid"]
