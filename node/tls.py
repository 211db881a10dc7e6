"""TLS: mutual between nodes, server-authenticated on the agents' port; gRPC credentials from
PEM files, and the verified peer's name.

The server side requires and verifies a client certificate issued by the cluster's CA, so a
peer without one, or with one from another CA, fails the handshake before any call runs. A
handshake failure never reaches Python, so it can only be counted by the connecting side; what
a node can count is an authenticated peer that is not in the cluster file (``require_peer``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from prometheus_client import Counter

from node.errors import PermissionDenied, Reason

PemSource = Path | str | bytes  # bytes: PEM content; str or Path: a file holding it

PEERS_REFUSED = Counter(
    "selfmodel_peers_refused_total",
    "Sync calls refused, by reason: no_certificate, no_credentials, bad_token (no valid peer "
    "token), unknown_node (not another node of the cluster file), no_peers, agents_port.",
    ["reason"],
)


def read_pem(source: PemSource) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def server_credentials(ca: PemSource, cert: PemSource, key: PemSource) -> grpc.ServerCredentials:
    """Serves with ``cert``/``key`` and requires every client to present a cert of ``ca``."""
    return grpc.ssl_server_credentials(
        [(read_pem(key), read_pem(cert))],
        root_certificates=read_pem(ca),
        require_client_auth=True,
    )


def channel_credentials(ca: PemSource, cert: PemSource, key: PemSource) -> grpc.ChannelCredentials:
    """Trusts only servers with a cert of ``ca`` and presents ``cert``/``key`` as the client."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca), private_key=read_pem(key), certificate_chain=read_pem(cert)
    )


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel over TLS with ``credentials``, else in plaintext."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def agent_server_credentials(cert: PemSource, key: PemSource) -> grpc.ServerCredentials:
    """The agents' port: serves with ``cert``/``key``; agents show tokens, not certs."""
    return grpc.ssl_server_credentials([(read_pem(key), read_pem(cert))])


def agent_channel_credentials(ca: PemSource) -> grpc.ChannelCredentials:
    """An agent's side: trusts only a node whose certificate ``ca`` issued."""
    return grpc.ssl_channel_credentials(root_certificates=read_pem(ca))


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


__all__ = [
    "agent_channel_credentials",
    "agent_server_credentials",
    "channel_credentials",
    "open_channel",
    "peer_common_name",
    "read_pem",
    "require_peer",
    "server_credentials",
]
