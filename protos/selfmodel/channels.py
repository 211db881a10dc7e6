"""gRPC channels and TLS credentials from PEM files, for nodes and agents alike.

Between nodes TLS is mutual: a node serves with its certificate and requires a client
certificate of the cluster's CA. On the agents' port it is server-authenticated: agents verify
the node and show bearer tokens, not certificates. This module imports gRPC only, so an agent's
process never loads the node (RocksDB, metrics) to reach one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

PemSource = Path | str | bytes  # bytes: PEM content; str or Path: a file holding it
ChannelOptions = Sequence[tuple[str, Any]]


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


def agent_server_credentials(cert: PemSource, key: PemSource) -> grpc.ServerCredentials:
    """The agents' port: serves with ``cert``/``key``; agents show tokens, not certs."""
    return grpc.ssl_server_credentials([(read_pem(key), read_pem(cert))])


def agent_channel_credentials(ca: PemSource) -> grpc.ChannelCredentials:
    """An agent's side: trusts only a node whose certificate ``ca`` issued."""
    return grpc.ssl_channel_credentials(root_certificates=read_pem(ca))


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A channel over TLS with ``credentials``, else in plaintext."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.aio.Channel:
    """The asyncio flavour of ``open_channel``."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


__all__ = [
    "ChannelOptions",
    "PemSource",
    "agent_channel_credentials",
    "agent_server_credentials",
    "channel_credentials",
    "open_aio_channel",
    "open_channel",
    "read_pem",
    "server_credentials",
]
