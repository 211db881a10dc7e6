"""The link to a peer's Sync service over gRPC (sync.ports.PeerLink), and its keepalive."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from node.peers import PeerAuth
from node.refusals import Refusals
from node.store import Store
from node.validation import Limits
from selfmodel.channels import open_channel
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from sync.codec import (
    encode_batch,
    encode_batch_origin,
    state_from_proto,
    state_to_proto,
    subject_from_proto,
)
from sync.crdt import SubjectState
from sync.observation import Subject
from sync.ports import Ack, Batch, Exchanged, StatesRefused
from sync.settings import MAX_MESSAGE_BYTES

_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A fresh connection per link: a connection stalled by a broken network must not be shared
    # by the next session's channel (gRPC pools subchannels across channels by default).
    ("grpc.use_local_subchannel_pool", 1),
    # Reconnect quickly after a peer comes back; our own backoff spaces the sessions.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
CALL_TIMEOUT_S = 30.0
# What a peer answers to states it will not take (a message too large, a malformed state): the
# same states would be refused again, unlike after UNAVAILABLE or DEADLINE_EXCEEDED.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.INTERNAL,
    }
)


@dataclass(frozen=True, slots=True)
class RunClaim:
    """This run, as a node claims it at its peers (Sync.ClaimRun), and where to note the
    incarnations they had on record for the node (Store.note_incarnation)."""

    incarnation: int
    run: int
    note_incarnation: Callable[[int], None]

    @classmethod
    def of(cls, store: Store) -> RunClaim:
        return cls(store.incarnation, store.run, store.note_incarnation)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A peer as the cluster file names it, and the address this node reaches it at."""

    name: str
    address: str


class GrpcPeerLink:
    """sync.ports.PeerLink over a gRPC channel to the peer's Sync service."""

    def __init__(
        self,
        auth: PeerAuth,
        address: str,
        credentials: grpc.ChannelCredentials | None,
        run: RunClaim | None = None,
        limits: Limits | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        refusals: Refusals | None = None,
        on_peer_wall: Callable[[int], None] | None = None,
    ) -> None:
        # Told the peer's wall clock from each reply that carries it (sync.hlc.PeerOffsets).
        self._on_peer_wall = on_peer_wall
        self._refusals = refusals or Refusals(address, limits or Limits())
        # The same limit as the node's server: what one node sends, the other takes.
        options = [
            *_KEEPALIVE,
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel = open_channel(address, credentials, options)
        self._stub = sync_pb2_grpc.SyncServiceStub(self._channel)
        # Sends batches already serialized (encode_batch): the deltas are stored encoded.
        self._replicate = self._channel.stream_stream(
            "/selfmodel.sync.v1.SyncService/Replicate",
            request_serializer=None,
            response_deserializer=sync_pb2.ReplicateResponse.FromString,
        )
        self._md = auth.metadata()
        self._me = auth.node
        self._run = run  # recorded by the peer before each delta stream
        self._call: Any = None

    def replicate(self, batches: Iterator[Batch]) -> Iterator[Ack]:
        if self._run is not None:  # a peer this run's start missed learns of it here
            try:
                self.claim_run(0, self._run, CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # a peer of an older version
                    raise
        origin = encode_batch_origin(self._me)
        call = self._replicate((encode_batch(origin, b) for b in batches), metadata=self._md)
        self._call = call
        for ack in call:
            if ack.wall_ms and self._on_peer_wall is not None:
                self._on_peer_wall(ack.wall_ms)
            yield Ack(
                ack.acked_seq, ack.deferred_seqs, ack.rejected_seqs, ack.merged_seqs, ack.reason
            )

    def buckets(self) -> list[bytes]:
        reply = self._stub.GetBuckets(
            sync_pb2.GetBucketsRequest(), timeout=CALL_TIMEOUT_S, metadata=self._md
        )
        if reply.wall_ms and self._on_peer_wall is not None:
            self._on_peer_wall(reply.wall_ms)
        return list(reply.hashes)

    def digests(self, buckets: Sequence[int]) -> list[tuple[Subject, bytes]]:
        reply = self._stub.GetDigests(
            sync_pb2.GetDigestsRequest(buckets=list(buckets)),
            timeout=CALL_TIMEOUT_S,
            metadata=self._md,
        )
        return [(subject_from_proto(d.subject), d.digest) for d in reply.digests]

    def claim_run(self, previous: int, run: RunClaim, timeout_s: float) -> bool:
        """Sync.ClaimRun: the peer records ``run`` as ours; True if it granted the claim."""
        request = sync_pb2.ClaimRunRequest(
            previous=previous, run=run.run, incarnation=run.incarnation
        )
        reply = self._stub.ClaimRun(request, timeout=timeout_s, metadata=self._md)
        if reply.recorded_incarnation >= run.incarnation:
            run.note_incarnation(reply.recorded_incarnation)
        return bool(reply.granted)

    def exchange(self, states: Sequence[SubjectState]) -> Exchanged:
        msg = sync_pb2.ExchangeStatesRequest(states=[state_to_proto(s) for s in states])
        try:
            reply = self._stub.ExchangeStates(msg, timeout=CALL_TIMEOUT_S, metadata=self._md)
        except grpc.RpcError as exc:
            if exc.code() in _REFUSALS:
                raise StatesRefused(f"{exc.code().name}: {exc.details()}") from exc
            raise
        # The peer's states hold to the same rules as a caller's: one that breaks them is left
        # out (and logged once), the others merge.
        return Exchanged(
            [
                state_from_proto(s)
                for i, s in enumerate(reply.states)
                if self._refusals.valid(s, f"ExchangeStates reply states[{i}]")
            ],
            [(subject_from_proto(r.subject), r.reason) for r in reply.refused],
        )

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._channel.close()


__all__ = ["CALL_TIMEOUT_S", "SERVER_OPTIONS", "GrpcPeerLink", "PeerConfig", "RunClaim"]
