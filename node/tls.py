"""The verified peer's name on a Sync call, and refusing callers that are not the cluster's nodes.

The server side requires and verifies a client certificate issued by the cluster's CA
(``selfmodel.channels.server_credentials``), so a peer without one, or with one from another
CA, fails the handshake before any call runs. A handshake failure never reaches Python, so it can
only be counted by the connecting side; what a node can count is an authenticated peer that is
not in the cluster file (``require_peer``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import grpc
from prometheus_client import Counter

from node.errors import PermissionDenied, Reason

PEERS_REFUSED = Counter(
    "selfmodel_peers_refused_total",
    "Sync calls refused, by reason: no_certificate, no_credentials, bad_token (no valid peer "
    "token), unknown_node (not another node of the cluster file), no_peers, agents_port.",
    ["reason"],
)


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the caller's verified client certificate; None on a plaintext or anonymous call."""
    auth = cast(dict[str, list[bytes]], context.auth_context())
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth.get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


def require_peer(context: grpc.ServicerContext, allowed: Collection[str]) -> str:
    """The calling node's name, or PermissionDenied (counted) when it is not one of ``allowed``."""
    name = peer_common_name(context)
    if name is None:
        PEERS_REFUSED.labels("no_certificate").inc()
        raise PermissionDenied(
            "node-to-node calls need mutual TLS: connect with a certificate of the cluster's CA",
            reason=Reason.PEER_DENIED,
            metadata={"cause": "no_certificate"},
        )
    if name not in allowed:
        PEERS_REFUSED.labels("unknown_node").inc()
        raise PermissionDenied(
            f"certificate of node {name!r}, which is not in the cluster file: add it there first",
            reason=Reason.PEER_DENIED,
            metadata={"cause": "unknown_node"},
        )
    return name


__all__ = ["PEERS_REFUSED", "peer_common_name", "require_peer"]
