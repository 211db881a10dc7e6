"""Anti-entropy's digests: one per subject, XORed into one hash per bucket of subjects.

A subject's digest row (``S`` + bucket + key) and its bucket's hash (``B`` + bucket) are written
in the same batch as its state, so they always match what RocksDB holds. A bucket's hash is the
XOR over its subjects of their ``part``: the subject's digest bound to its key, none for the
unwritten state. Each write XORs out the part it replaces and XORs in the one it writes.

Bound to the key, because a state's digest does not name its subject: two subjects of one
bucket with equal states (one batch writing the same statement to both) would otherwise cancel
out of the XOR, so a peer missing the same change of both would hold the same bucket hash, and
anti-entropy would never look inside that bucket. A store whose bucket hashes were written
before (no ``bucket_format`` meta row) has them rebuilt from its digest rows when it opens.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sync.causal import CausalContext
from sync.crdt import NO_ERASE, SubjectState, bound_digest, digest
from sync.observation import Subject

BUCKETS = 1024
EMPTY_HASH = bytes(16)
# The digest of a subject never written: the empty state the engine starts it from.
UNWRITTEN_DIGEST = digest(NO_ERASE, CausalContext())


def bucket_of(subject_key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(subject_key, digest_size=4).digest(), "big") % BUCKETS


def digest_row(subject_key: bytes) -> bytes:
    return b"S" + bucket_of(subject_key).to_bytes(2, "big") + subject_key


def bucket_row(bucket: int) -> bytes:
    return b"B" + bucket.to_bytes(2, "big")


# Meta row (and its value) saying the bucket hashes XOR ``part``s.
FORMAT_ROW, FORMAT = b"bucket_format", b"2"


def part(subject_key: bytes, digest: bytes) -> bytes:
    """A subject's part of its bucket's hash: its digest bound to its key (sync.crdt); none
    for the unwritten state or none stored."""
    if digest in (UNWRITTEN_DIGEST, EMPTY_HASH):
        return EMPTY_HASH
    return bound_digest(subject_key, digest)


def xor(a: bytes, b: bytes, c: bytes) -> bytes:
    return (
        int.from_bytes(a, "big") ^ int.from_bytes(b, "big") ^ int.from_bytes(c, "big")
    ).to_bytes(16, "big")


def state_digest(state: SubjectState, known: bytes | None) -> bytes:
    """``state.digest()``: ``known`` when that was computed for this very state, and the
    unwritten digest without hashing for an empty state."""
    if known is not None:
        return known
    if (
        state.erased == NO_ERASE
        and not state.observations
        and not state.withdrawals
        and not state.keyed_calls
        and state.context.is_empty()
    ):
        return UNWRITTEN_DIGEST
    return state.digest()


def load_bucket_hashes(digests: Any) -> list[bytes]:
    """Every bucket's hash, from the digest column family."""
    buckets = [EMPTY_HASH] * BUCKETS
    for key, value in digests.items(from_key=b"B"):
        if not key.startswith(b"B"):
            break
        buckets[int.from_bytes(key[1:3], "big")] = value
    return buckets


def rebuilt_bucket_hashes(digests: Any) -> list[bytes]:
    """Every bucket's hash computed from the subjects' digest rows (``part``)."""
    buckets = [0] * BUCKETS
    for key, value in digests.items(from_key=b"S"):
        if not key.startswith(b"S"):
            break
        value = part(key[3:], value)
        buckets[int.from_bytes(key[1:3], "big")] ^= int.from_bytes(value, "big")
    return [b.to_bytes(16, "big") for b in buckets]


def bucket_digests(digests: Any, bucket: int) -> list[tuple[Subject, bytes]]:
    """Each subject of ``bucket`` with its digest, from the digest column family."""
    prefix = b"S" + bucket.to_bytes(2, "big")
    found = []
    for key, value in digests.items(from_key=prefix):
        if not key.startswith(prefix):
            break
        found.append((Subject.from_storage_key(key[3:]), value))
    return found
