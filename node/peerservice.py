"""The peers' service (Sync in sync.proto): peers named in the cluster file stream deltas
(sync.receiver) and run anti-entropy and run claims against this node."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc

from node.engine import Engine
from node.errors import (
    BY_STATUS,
    InvalidArgument,
    Reason,
    SelfModelError,
    Unavailable,
    abort,
    aborted,
    internal,
    map_errors,
)
from node.peers import PeerAuth, PeerRefused
from node.refusals import Refusals
from node.store import BUCKETS
from node.syncports import EngineReplica
from node.validation import Limits
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from sync import metrics as sync_metrics
from sync.codec import state_from_proto, state_to_proto, subject_to_proto
from sync.delivery import Delta
from sync.receiver import DeltaReceiver, StreamRefused
from sync.settings import MAX_MESSAGE_BYTES

log = logging.getLogger("selfmodel.node")


class PeerServicer(sync_pb2_grpc.SyncServiceServicer):
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
        self._refusals = Refusals(engine.node, limits)
        self.receiver = DeltaReceiver(EngineReplica(engine), self._refusals, engine.clock.wall)

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
        self, request_iterator: Iterator[sync_pb2.ReplicateRequest], context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.ReplicateResponse]:
        peer = self._authorize(context)
        if self._on_peer_session is not None:
            self._on_peer_session(peer)
        with self._lock:
            if self._closed:
                node = self.engine.node
                abort(
                    context,
                    Unavailable(
                        f"node {node} is shutting down",
                        reason=Reason.NODE_STOPPING,
                        metadata={"node": node},
                    ),
                )
            self._streams.add(context)
        context.add_callback(lambda: self._forget_stream(context))
        try:
            yield from self.receiver.receive(peer, self._timed(peer, request_iterator))
        except StreamRefused as refused:  # the stream broke the protocol
            abort(context, _stream_error(refused))
        except SelfModelError as exc:  # a refusal (writes suspended on a full disk, say)
            abort(context, exc)
        except Exception:
            if aborted(context) or not context.is_active():
                raise
            log.exception("delta stream from %s failed", peer)
            abort(context, internal("Replicate"))

    def _timed(
        self, peer: str, batches: Iterator[sync_pb2.ReplicateRequest]
    ) -> Iterator[sync_pb2.ReplicateRequest]:
        """``batches``, noting how long each took to arrive: how soon a read pending for
        ``peer``'s writes is told to ask again (node.handoff.DeliveryDelays)."""
        deliveries = self.engine.handoffs.deliveries
        for batch in batches:
            if batch.sent_at_ms and not batch.resent:
                deliveries.note(peer, (self.engine.clock.wall() - batch.sent_at_ms) / 1000)
            yield batch

    def _forget_stream(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._streams.discard(context)

    @map_errors
    def GetBuckets(
        self, request: sync_pb2.GetBucketsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.GetBucketsResponse:
        peer = self._authorize(context)
        if self._on_peer_session is not None:
            self._on_peer_session(peer)
        return sync_pb2.GetBucketsResponse(
            hashes=self.engine.store.bucket_hashes(), wall_ms=self.engine.clock.wall()
        )

    @map_errors
    def GetDigests(
        self, request: sync_pb2.GetDigestsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.GetDigestsResponse:
        self._authorize(context)
        reply = sync_pb2.GetDigestsResponse()
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
    ) -> sync_pb2.ClaimRunResponse:
        peer = self._authorize(context)
        if request.run == 0:
            raise InvalidArgument("run", "must not be 0")
        if self._on_peer_session is not None:
            self._on_peer_session(peer)
        granted, recorded = self.engine.store.claim_run(
            peer, request.previous, request.run, request.incarnation
        )
        return sync_pb2.ClaimRunResponse(granted=granted, recorded_incarnation=recorded)

    @map_errors
    def ExchangeStates(
        self, request: sync_pb2.ExchangeStatesRequest, context: grpc.ServicerContext
    ) -> sync_pb2.ExchangeStatesResponse:
        peer = self._authorize(context)
        # A state that breaks a rule is left out (logged once); the others merge, so one bad
        # subject does not stop the repair of the rest; a subject refused by the merge
        # (clock, limits) is named in the reply.
        incoming = []
        for i, msg in enumerate(request.states):
            if self._refusals.valid(msg, f"states[{i}]", peer):
                incoming.append(state_from_proto(msg))
            else:
                sync_metrics.DELTAS_REFUSED_FROM_PEER.labels(peer, "invalid").inc()
        reply = sync_pb2.ExchangeStatesResponse()
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


def _stream_error(refused: StreamRefused) -> SelfModelError:
    """What a peer whose stream broke the protocol is told."""
    if refused.status == "INVALID_ARGUMENT":
        field, _, description = str(refused).partition(": ")
        return InvalidArgument(field, description)
    return BY_STATUS[refused.status](
        str(refused), reason=refused.reason or None, metadata=refused.metadata
    )


__all__ = ["PeerServicer"]
