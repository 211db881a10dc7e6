"""Real node processes for integration and fault tests (see federation/harness.py)."""

import time

import grpc

from federation.harness import LocalCluster, NodeProcess, free_port, wait_healthy
from selfmodel.v1 import admin_pb2, admin_pb2_grpc

# Policies under which beliefs never fade: two reads of an unchanged model are then equal. Under
# the default half-life a confidence moves with the clock between them, now and then across the
# sixth digit it is rounded to.
NEVER_FADE = {"default": {"half_life_days": 0}}


def node_status(address: str) -> admin_pb2.NodeStatus:
    """Admin.GetStatus of the node serving plaintext at ``address``."""
    with grpc.insecure_channel(address) as channel:
        return admin_pb2_grpc.AdminStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=5.0
        )


def peers_connected(cluster: LocalCluster, node: str) -> bool:
    """Whether ``node``'s delta stream to every peer is up."""
    return all(p.connected for p in node_status(cluster.address(node)).peers)


def wait_acked(cluster: LocalCluster, node: str, peer: str, seq: int) -> None:
    """Until ``node`` knows that ``peer`` acknowledged its outbox up to ``seq``."""
    deadline = time.monotonic() + 10
    while True:
        status = node_status(cluster.address(node))
        if any(p.name == peer and p.acked_seq >= seq for p in status.peers):
            return
        assert time.monotonic() < deadline, f"{peer} never acknowledged {node}'s {seq}"
        time.sleep(0.05)


__all__ = [
    "LocalCluster",
    "NodeProcess",
    "free_port",
    "node_status",
    "peers_connected",
    "wait_acked",
    "wait_healthy",
]
