"""The node's side of replication: the sync ports over RocksDB and gRPC, and the Sync servicer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from node.engine import Engine
from node.errors import (
    InvalidArgument,
    PermissionDenied,
    Reason,
    SelfModelError,
    Unavailable,
    abort,
    internal,
)
from node.peers import NODE_HEADER, PeerAuth, PeerRefused, foreign_actors
from node.refusals import Refusals
from node.servicer import aborted, map_errors
from node.store import BUCKETS, Store
from node.tls import open_channel
from node.validation import Limits
from selfmodel.v1 import sync_pb2, sync_pb2_grpc
from sync import metrics as sync_metrics
from sync.codec import (
    delta_from_proto,
    state_from_proto,
    state_to_proto,
    subject_from_proto,
    subject_to_proto,
)
from sync.crdt import SubjectState
from sync.delivery import Delta
from sync.hlc import PeerOffsets
from sync.observation import Subject
from sync.ports import Ack, Batch, Exchanged, Merged, StatesRefused
from sync.replicator import MAX_MESSAGE_BYTES, Replicator, SyncSettings

log = logging.getLogger("selfmodel.node")

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
# A receiver acknowledges a delta stream at most this often (see ReplicateBatch in sync.proto):
# each acknowledgement costs both nodes a message, and the receiver a WAL sync.
ACK_INTERVAL_S = 0.05


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
    name: str
    address: str


class StoreOutbox:
    """sync.ports.DeltaLog over the store's outbox column family."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, after: int, limit: int, max_bytes: int) -> Batch | None:
        entries = self.store.outbox(after, limit)
        if not entries:
            return None
        size = len(entries[0].delta)
        for n, entry in enumerate(entries[1:], 1):
            size += len(entry.delta)
            if size > max_bytes:
                entries = entries[:n]
                break
        return Batch(
            entries[0].seq, entries[-1].seq, [e.delta for e in entries], entries[0].written_ms
        )

    def first_seq(self) -> int:
        return self.store.outbox_first()

    def last_seq(self) -> int:
        return self.store.outbox_seq

    def wait(self, after: int, timeout_s: float) -> bool:
        return self.store.wait_outbox(after, timeout_s)

    def trim(self, upto: int) -> None:
        self.store.trim_outbox(upto)

    def oldest_unacked_ms(self, acked: int) -> int | None:
        if acked >= self.store.outbox_seq:
            return None
        entries = self.store.outbox(acked, 1)
        return entries[0].written_ms if entries else None


class EngineReplica:
    """sync.ports.Replica over the engine (merges) and the store (digests, positions)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store

    def merge(self, states: Iterable[SubjectState], source: str = "") -> Merged:
        outcome = self.engine.merge_remote((Delta(s) for s in states), source=source)
        return Merged(outcome.merged, outcome.held_back + len(outcome.limited))

    def states(self, subjects: Iterable[Subject]) -> list[SubjectState]:
        return [s for s in (self.store.load(subject) for subject in subjects) if s is not None]

    def bucket_hashes(self) -> list[bytes]:
        return self.store.bucket_hashes()

    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]:
        return self.store.bucket_digests(bucket)

    def acked(self, peer: str) -> int:
        return self.store.position("acked", peer)

    def set_acked(self, peer: str, seq: int) -> None:
        self.store.set_position("acked", peer, seq)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_batch_origin(origin: str) -> bytes:
    raw = origin.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def encode_batch(origin: bytes, batch: Batch) -> bytes:
    """The ReplicateBatch of a run of outbox entries, serialized without parsing its deltas.

    The bytes protobuf's own serializer would produce (fields in number order, zeros left
    out): the stored deltas are already serialized SubjectStates, so decoding them only to
    encode them again would cost the sender a parse and a serialization per delta.
    """
    parts = [origin]
    if batch.first_seq:
        parts += (b"\x10", _varint(batch.first_seq))
    if batch.last_seq:
        parts += (b"\x18", _varint(batch.last_seq))
    for raw in batch.deltas:
        parts += (b"\x22", _varint(len(raw)), raw)
    if batch.resent:
        parts.append(b"\x30\x01")
    return b"".join(parts)


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
        self._refusals = refusals or Refusals(address)
        # The same limit as the node's server: what one node sends, the other takes.
        options = [
            *_KEEPALIVE,
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel = open_channel(address, credentials, options)
        self._stub = sync_pb2_grpc.SyncStub(self._channel)
        # Sends batches already serialized (encode_batch): the deltas are stored encoded.
        self._replicate = self._channel.stream_stream(
            "/selfmodel.v1.Sync/Replicate",
            request_serializer=None,
            response_deserializer=sync_pb2.ReplicateAck.FromString,
        )
        self._md = auth.metadata()
        self._me = auth.node
        self._limits = limits or Limits()
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
        msg = sync_pb2.StateExchange(states=[state_to_proto(s) for s in states])
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
                if self._refusals.valid(s, f"ExchangeStates reply states[{i}]", self._limits)
            ],
            [(subject_from_proto(r.subject), r.reason) for r in reply.refused],
        )

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._channel.close()


class SyncServicer(sync_pb2_grpc.SyncServicer):
    """Receives deltas and anti-entropy calls from peers named in the cluster file."""

    def __init__(
        self,
        engine: Engine,
        auth: PeerAuth,
        limits: Limits,
        on_peer_session: Callable[[str], None] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.limits = limits
        self._max_reply = max_message_bytes // 2
        # Told when a peer starts a delta stream or an anti-entropy round: it is reachable.
        self._on_peer_session = on_peer_session
        self._streams: set[grpc.ServicerContext] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._refusals = Refusals(engine.node)

    def close(self) -> None:
        """Ends every incoming delta stream, so a graceful shutdown does not wait on them."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for context in streams:
            context.cancel()  # type: ignore[no-untyped-call]

    def _authorize(self, context: grpc.ServicerContext) -> str:
        try:
            return self.auth.authenticate(context)
        except PeerRefused as refused:
            abort(context, refused.error())

    def Replicate(
        self, request_iterator: Iterator[sync_pb2.ReplicateBatch], context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.ReplicateAck]:
        peer = self._authorize(context)
        if self._on_peer_session is not None:
            self._on_peer_session(peer)
        with self._lock:
            if self._closed:
                abort(
                    context,
                    Unavailable(
                        f"node {self.engine.node} is shutting down",
                        reason=Reason.NODE_STOPPING,
                        metadata={"node": self.engine.node},
                    ),
                )
            self._streams.add(context)
        context.add_callback(lambda: self._forget_stream(context))
        try:
            yield from self._replicate(peer, request_iterator, context)
        except SelfModelError as exc:  # a refusal (writes suspended on a full disk, say)
            abort(context, exc)
        except Exception:
            if aborted(context) or not context.is_active():
                raise
            log.exception("delta stream from %s failed", peer)
            abort(context, internal("Replicate"))

    def _replicate(
        self,
        peer: str,
        request_iterator: Iterator[sync_pb2.ReplicateBatch],
        context: grpc.ServicerContext,
    ) -> Iterator[sync_pb2.ReplicateAck]:
        """Merges each batch and acknowledges the stream's position, naming the deltas it
        refused: deferred (a timestamp ahead of this node's clock bound) or rejected (invalid).
        A refused delta is never merged nor acknowledged as merged, and never ends the stream.
        """
        acked_at = -ACK_INTERVAL_S
        top = 0  # the stream's position: the last sequence of its latest batch in order
        ack = sync_pb2.ReplicateAck()
        for batch in request_iterator:
            if batch.origin != peer:
                raise PermissionDenied(
                    f"{peer} may not send deltas of {batch.origin}",
                    reason=Reason.PEER_FOREIGN_WRITE,
                    metadata={"peer": peer, "origin": batch.origin},
                )
            if not batch.resent:
                top = max(top, batch.last_seq)
            if batch.deltas:
                if batch.last_seq - batch.first_seq + 1 != len(batch.deltas):
                    raise InvalidArgument(
                        "deltas",
                        f"the batch holds {len(batch.deltas)} deltas for sequences "
                        f"{batch.first_seq}..{batch.last_seq}",
                    )
                sync_metrics.DELTAS_RECEIVED.labels(peer).inc(len(batch.deltas))
                self._check_own(peer, batch.deltas)
                sync_metrics.BYTES_RECEIVED.labels(peer).inc(batch.ByteSize())
                seqs, deltas = [], []
                for i, msg in enumerate(batch.deltas):
                    seq = batch.first_seq + i
                    if self._refusals.valid(msg, f"deltas[{i}] (seq {seq})", self.limits, peer):
                        seqs.append(seq)
                        deltas.append(delta_from_proto(msg))
                    else:
                        ack.rejected_seqs.append(seq)
                        ack.reason = ack.reason or self._refusals.last
                        sync_metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "invalid").inc()
                # Watches and readers here see the batch as soon as RocksDB has it; the origin
                # learns it may trim only once it is on disk here (until then it resends it).
                extra = [] if batch.resent else [Store.position_row("applied", peer, top)]
                outcome = self.engine.merge_remote(deltas, extra=extra, durable=False, source=peer)
                if batch.sent_at_ms and not batch.resent:  # how soon a pending read may ask again
                    delay_ms = self.engine.clock.wall() - batch.sent_at_ms
                    self.engine.handoffs.deliveries.note(peer, delay_ms / 1000)
                deferred = {seqs[i] for i in outcome.refused}
                if deferred:
                    ack.deferred_seqs.extend(sorted(deferred))
                    ack.reason = ack.reason or outcome.reason
                    sync_metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "clock").inc(len(deferred))
                    self._refusals.deferred(peer, outcome.reason)
                if outcome.limited:  # past this node's subject limits: resending cannot help
                    ack.rejected_seqs.extend(seqs[i] for i in outcome.limited)
                    ack.reason = ack.reason or outcome.reasons[0][1]
                    sync_metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "limits").inc(
                        len(outcome.limited)
                    )
                if batch.resent:
                    ack.merged_seqs.extend(seq for seq in seqs if seq not in deferred)
                    if seqs and not deferred:  # held back no longer: a later deferral is news
                        self._refusals.forget(peer, "clock")
                if time.monotonic() - acked_at < ACK_INTERVAL_S:
                    continue  # acknowledged with a later batch, or when the origin asks
            self.engine.store.sync_written()
            ack.acked_seq = top
            ack.refused = len(ack.deferred_seqs) + len(ack.rejected_seqs)
            ack.wall_ms = self.engine.clock.wall()
            yield ack
            acked_at, ack = time.monotonic(), sync_pb2.ReplicateAck()

    def _check_own(self, peer: str, deltas: Sequence[sync_pb2.SubjectState]) -> None:
        """A delta stream carries the sender's own writes only: every new observation and event
        is a dot of one of its actors (``<peer>.<run>.<random>``). Other nodes' writes reach a
        node from their own streams, or as whole states through anti-entropy."""
        for i, msg in enumerate(deltas):
            actors = {o.dot.actor for o in msg.observations} | {d.actor for d in msg.events}
            foreign = foreign_actors(actors, peer)
            if foreign:
                sync_metrics.REPLICATION_ERRORS.labels(peer).inc()
                log.warning("refused a delta of %s from peer %s", foreign[0], peer)
                raise PermissionDenied(
                    f"deltas[{i}]: peer {peer} may send dots of its own actors only, "
                    f"got {foreign[0]}",
                    reason=Reason.PEER_FOREIGN_WRITE,
                    metadata={"peer": peer, "actor": foreign[0]},
                )

    def _forget_stream(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._streams.discard(context)

    @map_errors
    def GetBuckets(
        self, request: sync_pb2.GetBucketsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.Buckets:
        peer = self._authorize(context)
        if self._on_peer_session is not None:
            self._on_peer_session(peer)
        return sync_pb2.Buckets(
            hashes=self.engine.store.bucket_hashes(), wall_ms=self.engine.clock.wall()
        )

    @map_errors
    def GetDigests(
        self, request: sync_pb2.GetDigestsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.Digests:
        self._authorize(context)
        reply = sync_pb2.Digests()
        for bucket in request.buckets:
            if bucket >= BUCKETS:
                raise InvalidArgument("buckets", f"{bucket} is out of range [0, {BUCKETS})")
            for subject, digest in self.engine.store.bucket_digests(bucket):
                d = reply.digests.add(digest=digest)
                subject_to_proto(subject, d.subject)
        return reply

    @map_errors
    def ClaimRun(
        self, request: sync_pb2.ClaimRunRequest, context: grpc.ServicerContext
    ) -> sync_pb2.ClaimRunReply:
        peer = self._authorize(context)
        if request.run == 0:
            raise InvalidArgument("run", "must not be 0")
        if self._on_peer_session is not None:
            self._on_peer_session(peer)
        granted, recorded = self.engine.store.claim_run(
            peer, request.previous, request.run, request.incarnation
        )
        return sync_pb2.ClaimRunReply(granted=granted, recorded_incarnation=recorded)

    @map_errors
    def ExchangeStates(
        self, request: sync_pb2.StateExchange, context: grpc.ServicerContext
    ) -> sync_pb2.StateExchange:
        peer = self._authorize(context)
        # A state that breaks a rule is left out (logged once); the others merge, so one bad
        # subject does not stop the repair of the rest; a subject refused by the merge
        # (clock, limits) is named in the reply.
        incoming = []
        for i, msg in enumerate(request.states):
            if self._refusals.valid(msg, f"states[{i}]", self.limits, peer):
                incoming.append(state_from_proto(msg))
            else:
                sync_metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "invalid").inc()
        reply = sync_pb2.StateExchange()
        outcome = self.engine.merge_remote((Delta(s) for s in incoming), source=peer)
        for subject, reason in outcome.reasons:
            subject_to_proto(subject, reply.refused.add(reason=reason).subject)
        size = 0
        for subject in dict.fromkeys(s.subject for s in incoming):
            mine = self.engine.store.load(subject)
            if mine is not None:
                msg = state_to_proto(mine)
                size += msg.ByteSize()
                if size > self._max_reply:  # left to this node's own anti-entropy to the caller
                    break
                reply.states.append(msg)
        return reply


CLAIM_TIMEOUT_S = 2.0
CLAIM_RETRY_S = 0.2  # between claims to a peer not up yet


def claim_run(
    store: Store,
    peers: Sequence[PeerConfig],
    auth: PeerAuth,
    credentials: grpc.ChannelCredentials | None,
    timeout_s: float = CLAIM_TIMEOUT_S,
    wait_s: float = 0.0,
) -> bool:
    """At start, before any write: asks every peer to record this run as the node's latest.

    True only if every peer was reached and granted the claim to follow the previous run,
    which must have closed cleanly: then the node may resume that run's actor (Store.resume_actor).
    A peer that is down, slow or without a record of the previous run means a new actor, which
    is always safe; the claim is sent even then, so that the peers know this run.

    When there is a run to follow, a peer that cannot be reached (or does not answer in time)
    is asked again until ``wait_s`` has passed: nodes of a cluster started together serve
    ClaimRun before they decide their own claims, so they vouch for each other.
    """
    previous = store.previous_run if store.resumable is not None else 0
    run = RunClaim.of(store)
    deadline = time.monotonic() + (wait_s if previous else 0.0)

    def ask(peer: PeerConfig) -> bool:
        while True:
            link = GrpcPeerLink(auth, peer.address, credentials)
            try:
                return link.claim_run(previous, run, timeout_s)
            except grpc.RpcError as exc:
                retry = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not retry or time.monotonic() + CLAIM_RETRY_S >= deadline:
                    log.info(
                        "peer %s did not take this run's claim: %s", peer.name, exc.code().name
                    )
                    return False
            finally:
                link.close()
            time.sleep(CLAIM_RETRY_S)

    with ThreadPoolExecutor(max_workers=len(peers) or 1) as pool:
        granted = list(pool.map(ask, peers))
    return previous != 0 and all(granted)


def build_replicator(
    engine: Engine,
    peers: Sequence[PeerConfig],
    settings: SyncSettings,
    auth: PeerAuth,
    credentials: grpc.ChannelCredentials | None,
    limits: Limits,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> Replicator:
    run = RunClaim.of(engine.store)

    clock = engine.clock
    offsets = clock.peer_offsets = PeerOffsets(len(peers))

    def connector(peer: PeerConfig) -> Callable[[], GrpcPeerLink]:
        refusals = Refusals(peer.name)
        gauge = sync_metrics.PEER_CLOCK_OFFSET.labels(peer.name)

        def on_peer_wall(peer_wall_ms: int) -> None:
            now = clock.wall()
            offsets.sample(peer.name, peer_wall_ms, now)
            gauge.set((offsets.ahead_ms(peer.name, now) or 0) / 1000)

        return lambda: GrpcPeerLink(
            auth,
            peer.address,
            credentials,
            run,
            limits,
            max_message_bytes,
            refusals,
            on_peer_wall,
        )

    return Replicator(
        StoreOutbox(engine.store),
        EngineReplica(engine),
        {p.name: connector(p) for p in peers},
        settings,
        max_message_bytes,
    )


__all__ = [
    "NODE_HEADER",
    "SERVER_OPTIONS",
    "EngineReplica",
    "GrpcPeerLink",
    "PeerConfig",
    "RunClaim",
    "StoreOutbox",
    "SyncServicer",
    "build_replicator",
    "claim_run",
]
