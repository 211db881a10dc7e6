"""This node's replication: the replicator wired over the store, the engine and gRPC links to
the peers (sync.replicator), and the node's side of the Sync protocol gathered in one surface:
the links (node.peerlink), the peers' service (node.peerservice), the run claim (node.runclaim)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from node.engine import Engine
from node.peerlink import SERVER_OPTIONS, GrpcPeerLink, PeerConfig, RunClaim
from node.peers import NODE_HEADER, PeerAuth
from node.peerservice import PeerServicer
from node.refusals import Refusals
from node.runclaim import claim_run
from node.syncports import EngineReplica
from node.validation import Limits
from sync import metrics as sync_metrics
from sync.hlc import PeerOffsets
from sync.replicator import Replicator
from sync.settings import MAX_MESSAGE_BYTES, SyncSettings


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
        refusals = Refusals(peer.name, limits)
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
        engine.store.delta_log,
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
    "PeerServicer",
    "RunClaim",
    "build_replicator",
    "claim_run",
]
