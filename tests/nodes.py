"""Real node processes for integration and fault tests (see federation/harness.py)."""

import grpc

from federation.harness import LocalCluster, NodeProcess, free_port, wait_healthy
from selfmodel.v1 import admin_pb2, admin_pb2_grpc


def node_status(address: str) -> admin_pb2.NodeStatus:
    """Admin.GetStatus of the node serving plaintext at ``address``."""
    with grpc.insecure_channel(address) as channel:
        return admin_pb2_grpc.AdminStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=5.0
        )


__all__ = ["LocalCluster", "NodeProcess", "free_port", "node_status", "wait_healthy"]
