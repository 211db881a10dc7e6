"""Real node processes for integration and fault tests (see federation/harness.py)."""

from federation.harness import LocalCluster, NodeProcess, free_port, wait_healthy

__all__ = ["LocalCluster", "NodeProcess", "free_port", "wait_healthy"]
