"""Admin.GetStatus: what a node reports of itself and of each peer's stream."""

from __future__ import annotations

from node.clock import clock_refusal
from node.config import NodeConfig
from node.engine import Engine
from selfmodel.admin.v1 import admin_pb2
from sync.replicator import Replicator


def node_status(
    config: NodeConfig, engine: Engine, replicator: Replicator | None
) -> admin_pb2.GetStatusResponse:
    status = admin_pb2.GetStatusResponse(
        node=config.name,
        domain=config.domain,
        actor=engine.actor,
        incarnation=engine.store.incarnation,
        subjects=engine.store.estimate_subjects(),
        outbox_seq=engine.store.outbox_seq,
        serving=engine.store.suspended is None and not clock_refusal(engine.clock),
        problems=[
            *([f"writes suspended: {engine.store.suspended}"] if engine.store.suspended else []),
            *engine.store.problems,
        ],
        clock_ahead_ms=engine.clock.ahead_ms(),
        writes_refused=clock_refusal(engine.clock) or _held_back(replicator),
    )
    addresses = {p.name: p.address for p in config.peers}
    offsets, wall = engine.clock.peer_offsets, engine.clock.wall()

    def offset(peer: str) -> int:
        ahead = offsets.ahead_ms(peer, wall) if offsets is not None else None
        return ahead or 0

    for peer in replicator.states() if replicator is not None else []:
        status.peers.add(
            name=peer.name,
            address=addresses.get(peer.name, ""),
            connected=peer.connected,
            acked_seq=peer.acked,
            outbox_depth=max(0, engine.store.outbox_seq - peer.acked),
            lag_seconds=peer.lag_s,
            failing_sessions=peer.failing_sessions,
            skipped_subjects=peer.skipped_subjects,
            deltas_pending=peer.pending,
            deltas_refused_clock=peer.refused_clock,
            deltas_refused_invalid=peer.refused_invalid,
            last_refusal=peer.last_refusal,
            clock_offset_ms=offset(peer.name),
        )
    return status


def _held_back(replicator: Replicator | None) -> str:
    """Why admission holds agent writes back now (sync.admission), or ""."""
    held = replicator.admission.held if replicator is not None else None
    if held is None:
        return ""
    return (
        f"replication behind: the delta stream to peer {held.peer} is {held.lag_s:.1f} s "
        f"behind (max_replication_lag_s = {held.max_lag_s:g})"
    )


__all__ = ["node_status"]
