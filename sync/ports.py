"""What the sync layer needs from storage and transport, as small Protocols.

node/ implements them over RocksDB and gRPC; tests can pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from sync.crdt import SubjectState
from sync.observation import Subject


@dataclass(frozen=True, slots=True)
class Batch:
    """A run of outbox entries, labelled with its sequence range."""

    first_seq: int
    last_seq: int
    deltas: Sequence[bytes]  # encoded SubjectStates
    oldest_ms: int
    resent: bool = False  # deltas the peer deferred, sent again (not the stream's position)


@dataclass(frozen=True, slots=True)
class Exchanged:
    """A peer's answer to an anti-entropy exchange: its states of (some of) the subjects sent,
    and the subjects whose states it refused, each with its reason."""

    states: Sequence[SubjectState]
    refused: Sequence[tuple[Subject, str]] = ()


class StatesRefused(Exception):
    """The peer answered an exchange, refusing it whole (a state too large or malformed):
    unlike a broken connection, sending the same states again fails the same way."""


@dataclass(frozen=True, slots=True)
class Merged:
    merged: int
    refused: int  # observations held back (ahead of the clock bound) or states over the limits


@dataclass(frozen=True, slots=True)
class Ack:
    """A peer's acknowledgement of a delta stream: every delta up to ``acked_seq`` was merged
    or is named in ``deferred`` (refused for now: resend later) or ``rejected`` (refused for
    good); ``merged`` names deltas sent again that the peer has now merged."""

    acked_seq: int
    deferred: Sequence[int] = ()
    rejected: Sequence[int] = ()
    merged: Sequence[int] = ()
    reason: str = ""


class DeltaLog(Protocol):
    """The local outbox: deltas by sequence."""

    def read(self, after: int, limit: int, max_bytes: int) -> Batch | None:
        """At most ``limit`` entries after ``after``, of at most ``max_bytes`` in all (but
        always the first entry, however large), or None when there are none."""
        ...

    def first_seq(self) -> int: ...
    def last_seq(self) -> int: ...
    def wait(self, after: int, timeout_s: float) -> bool: ...
    def trim(self, upto: int) -> None: ...
    def oldest_unacked_ms(self, acked: int) -> int | None: ...


class Replica(Protocol):
    """The local replica: merges, digests, and where each peer stands. ``merge``'s ``source``
    names the peer the states came from (an erase among them is audited as that peer's)."""

    def merge(self, states: Iterable[SubjectState], source: str = "") -> Merged: ...
    def states(self, subjects: Iterable[Subject]) -> list[SubjectState]: ...
    def bucket_hashes(self) -> list[bytes]: ...
    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]: ...
    def acked(self, peer: str) -> int: ...
    def set_acked(self, peer: str, seq: int) -> None: ...


class PeerLink(Protocol):
    """A connection to one peer's Sync service."""

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]: ...
    def buckets(self) -> list[bytes]: ...
    def digests(self, buckets: Sequence[int]) -> list[tuple[Subject, bytes]]: ...
    def exchange(self, states: Sequence[SubjectState]) -> Exchanged:
        """Raises StatesRefused when the peer refuses the exchange whole."""
        ...

    def close(self) -> None: ...
