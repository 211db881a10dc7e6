"""Real node processes for integration and fault tests (see tests/harness.py)."""

import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.harness import LocalCluster, NodeProcess, free_port, wait_healthy

# Policies under which beliefs never fade: two reads of an unchanged model are then equal. Under
# the default half-life a confidence moves with the clock between them, now and then across the
# sixth digit it is rounded to.
NEVER_FADE = {"default": {"half_life_days": 0}}
T = TypeVar("T")


def node_status(address: str) -> admin_pb2.GetStatusResponse:
    """Admin.GetStatus of the node serving plaintext at ``address``."""
    with grpc.insecure_channel(address) as channel:
        return admin_pb2_grpc.AdminServiceStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=5.0
        )


def peers_connected(cluster: LocalCluster, node: str) -> bool:
    """Whether ``node``'s delta stream to every peer is up."""
    return all(p.connected for p in node_status(cluster.address(node)).peers)


def positions(cluster: LocalCluster, node: str, peer: str) -> tuple[int, int]:
    """``node``'s outbox head, and how far ``peer`` has acknowledged it."""
    status = node_status(cluster.address(node))
    [acked] = [p.acked_seq for p in status.peers if p.name == peer]
    return status.outbox_seq, acked


def wait_until(predicate: Callable[[], T], what: str, timeout_s: float = 15.0) -> T:
    """Polls ``predicate`` until it holds (returning its value); fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        time.sleep(0.05)
    return value


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
    "positions",
    "wait_acked",
    "wait_healthy",
    "wait_until",
]
