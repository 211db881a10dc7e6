"""What the sync layer needs from storage, transport and the node's rules, as small Protocols.

node/ implements them over RocksDB, gRPC and its validation; tests can pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from selfmodel.sync.v1 import sync_pb2
from sync.crdt import SubjectState
from sync.delivery import Delta
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
class DeltasMerged:
    """What a merge of a peer's deltas refused, by their indexes in its input: ``deferred`` for
    now (a timestamp ahead of this node's clock bound), ``rejected`` for good (past the subject
    limits); ``reason`` says why the first refusal was refused ("" when none was)."""

    deferred: Sequence[int] = ()
    rejected: Sequence[int] = ()
    reason: str = ""


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

    def merge_deltas(
        self, deltas: Sequence[Delta], source: str, applied: int | None
    ) -> DeltasMerged:
        """Merges deltas of peer ``source``'s delta stream (each one event, in causal order) and,
        with them in one write, ``applied`` (when not None) as the stream's position. Readers
        see the merge at once; it is durable only after the next ``make_durable``."""
        ...

    def make_durable(self) -> None:
        """Makes every merge written before it durable."""
        ...


class Screen(Protocol):
    """This node's rules for what a peer sends. A refusal is logged the first time only: a
    delta sent again is refused again, and the metrics count every refusal."""

    def refused(self, msg: sync_pb2.SubjectState, field: str, peer: str) -> str:
        """Why ``msg`` (at ``field`` of the peer's message) breaks a rule; "" when none."""
        ...

    def deferred(self, peer: str, reason: str) -> None:
        """``peer``'s deltas are held back until this node's clock allows them."""
        ...

    def undeferred(self, peer: str) -> None:
        """Every delta of ``peer`` held back so far has merged: a later deferral is news."""
        ...


class PeerLink(Protocol):
    """A connection to one peer's Sync service."""

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]: ...
    def buckets(self) -> list[bytes]: ...
    def digests(self, buckets: Sequence[int]) -> list[tuple[Subject, bytes]]: ...
    def exchange(self, states: Sequence[SubjectState]) -> Exchanged:
        """Raises StatesRefused when the peer refuses the exchange whole."""
        ...

    def close(self) -> None: ...
