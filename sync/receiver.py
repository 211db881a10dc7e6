"""The receiving end of a delta stream (Sync.Replicate; the sending end is sync.sender).

A peer streams its own writes as batches of outbox entries, each labelled with its sequence
range; this node merges every batch and acknowledges the stream's position, the last sequence
of its latest batch in order. The invariants:

- An acknowledgement covers only deltas that are durable here: merges are written without
  waiting for the disk (readers and watches see them at once), and ``make_durable`` runs before
  every acknowledgement. Until then the sender keeps, and after a failure resends, the deltas.
- Acknowledgements coalesce: at most one per ``ack_interval_s`` on its own, as each costs both
  nodes a message and this one a WAL sync; a batch without deltas (the sender asking) is
  answered at once, and so is a stream's first batch.
- A delta this node refuses never ends the stream and is never acknowledged as merged: it is
  named once, in the next acknowledgement, as deferred (a timestamp ahead of this node's clock
  bound: the sender resends it later) or rejected (a broken rule, or past the subject limits:
  sending it again cannot help).
- A stream carries its sender's own writes only: every dot of a delta is one of the sender's
  actors (``<node>.<run>.<random>``). Other nodes' writes reach this node by their own streams,
  or as whole states through anti-entropy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from selfmodel.errors import Reason
from selfmodel.sync.v1 import sync_pb2
from sync import metrics
from sync.codec import delta_from_proto
from sync.ports import Replica, Screen

log = logging.getLogger("selfmodel.sync")

# See ReplicateRequest in sync.proto and the module docstring.
ACK_INTERVAL_S = 0.05


class StreamRefused(Exception):
    """The stream broke the protocol and ends; ``status`` names its gRPC status code, ``reason``
    and ``metadata`` its ErrorInfo (selfmodel.errors), if any."""

    def __init__(
        self,
        status: str,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.metadata = dict(metadata or {})


def actor_node(actor: str) -> str:
    """The node an actor belongs to: actors are ``<node>.<run>.<random>`` (node.store)."""
    return actor.rsplit(".", 2)[0] if actor.count(".") >= 2 else ""


def foreign_actors(actors: Collection[str], peer: str) -> list[str]:
    """The actors among ``actors`` that are not ``peer``'s own."""
    return sorted(a for a in actors if actor_node(a) != peer)


class DeltaReceiver:
    """Merges the delta streams of this node's peers into ``replica`` and acknowledges them."""

    def __init__(
        self,
        replica: Replica,
        screen: Screen,
        wall_ms: Callable[[], int],
        ack_interval_s: float = ACK_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._replica = replica
        self._screen = screen
        self._wall_ms = wall_ms  # stamped on each acknowledgement (sync.hlc.PeerOffsets)
        self._interval = ack_interval_s
        self._monotonic = monotonic

    def receive(
        self, peer: str, batches: Iterable[sync_pb2.ReplicateRequest]
    ) -> Iterator[sync_pb2.ReplicateResponse]:
        """The acknowledgements of ``peer``'s stream of ``batches``; raises StreamRefused."""
        acked_at = float("-inf")
        top = 0  # the stream's position
        ack = sync_pb2.ReplicateResponse()
        for batch in batches:
            if batch.origin != peer:
                raise StreamRefused(
                    "PERMISSION_DENIED",
                    f"{peer} may not send deltas of {batch.origin!r}",
                    Reason.PEER_FOREIGN_WRITE,
                    {"peer": peer, "origin": batch.origin},
                )
            if not batch.resent:
                top = max(top, batch.last_seq)
            if batch.deltas:
                self._merge(peer, batch, top, ack)
                if self._monotonic() - acked_at < self._interval:
                    continue  # acknowledged with a later batch, or when the sender asks
            self._replica.make_durable()
            ack.acked_seq = top
            ack.refused = len(ack.deferred_seqs) + len(ack.rejected_seqs)
            ack.wall_ms = self._wall_ms()
            yield ack
            acked_at, ack = self._monotonic(), sync_pb2.ReplicateResponse()

    def _merge(
        self, peer: str, batch: sync_pb2.ReplicateRequest, top: int, ack: sync_pb2.ReplicateResponse
    ) -> None:
        """Merges ``batch`` (not yet durable), naming in ``ack`` the deltas it refused."""
        if batch.last_seq - batch.first_seq + 1 != len(batch.deltas):
            raise StreamRefused(
                "INVALID_ARGUMENT",
                f"deltas: the batch holds {len(batch.deltas)} deltas for sequences "
                f"{batch.first_seq}..{batch.last_seq}",
            )
        metrics.DELTAS_RECEIVED.labels(peer).inc(len(batch.deltas))
        _check_own(peer, batch.deltas)
        metrics.BYTES_RECEIVED.labels(peer).inc(batch.ByteSize())
        seqs, deltas = [], []
        for i, msg in enumerate(batch.deltas):
            seq = batch.first_seq + i
            reason = self._screen.refused(msg, f"deltas[{i}] (seq {seq})", peer)
            if reason:
                ack.rejected_seqs.append(seq)
                ack.reason = ack.reason or reason
                metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "invalid").inc()
            else:
                seqs.append(seq)
                deltas.append(delta_from_proto(msg))
        # A resent delta is below the stream's position, which it must not move.
        merged = self._replica.merge_deltas(deltas, peer, None if batch.resent else top)
        deferred = {seqs[i] for i in merged.deferred}
        if deferred:
            ack.deferred_seqs.extend(sorted(deferred))
            ack.reason = ack.reason or merged.reason
            metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "clock").inc(len(deferred))
            self._screen.deferred(peer, merged.reason)
        if merged.rejected:
            ack.rejected_seqs.extend(seqs[i] for i in merged.rejected)
            ack.reason = ack.reason or merged.reason
            metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "limits").inc(len(merged.rejected))
        if batch.resent:
            ack.merged_seqs.extend(seq for seq in seqs if seq not in deferred)
            if seqs and not deferred:  # held back no longer: a later deferral is news
                self._screen.undeferred(peer)


def _check_own(peer: str, deltas: Iterable[sync_pb2.SubjectState]) -> None:
    for i, msg in enumerate(deltas):
        actors = {o.dot.actor for o in msg.observations} | {d.actor for d in msg.events}
        foreign = foreign_actors(actors, peer)
        if foreign:
            metrics.REPLICATION_ERRORS.labels(peer).inc()
            log.warning("refused a delta of %s from peer %s", foreign[0], peer)
            raise StreamRefused(
                "PERMISSION_DENIED",
                f"deltas[{i}]: peer {peer} may send dots of its own actors only, "
                f"got {foreign[0]!r}",
                Reason.PEER_FOREIGN_WRITE,
                {"peer": peer, "actor": foreign[0]},
            )


__all__ = [
    "ACK_INTERVAL_S",
    "DeltaReceiver",
    "StreamRefused",
    "actor_node",
    "foreign_actors",
]
