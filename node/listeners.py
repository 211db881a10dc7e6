"""The node's listeners: its gRPC servers and the ports they bind, and the metrics endpoint."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from prometheus_client import start_http_server

from node import connections
from node.config import ConfigError, NodeConfig, split_address
from node.peerlink import SERVER_OPTIONS


def grpc_server(
    config: NodeConfig, max_workers: int, max_rpcs: int, max_connections: int
) -> grpc.Server:
    """A threaded server with the node's message bound, and its connection bounds."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        *SERVER_OPTIONS,
        *connections.server_options(
            max_connections, config.connection_idle_s, config.handshake_timeout_s
        ),
    ]
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=options,
        maximum_concurrent_rpcs=max_rpcs,
    )


def bind(
    server: grpc.Server, peer_server: grpc.Server | None, config: NodeConfig
) -> tuple[int, int | None]:
    """Binds the agents' port (over TLS with ``server_credentials``) and, with a server of its
    own, the peers' port; the ports bound, or ConfigError naming the addresses."""
    where = f"{config.listen} / {config.peer_listen}"
    try:
        if config.server_credentials is None:
            bound = server.add_insecure_port(config.listen)
        else:
            bound = server.add_secure_port(config.listen, config.server_credentials)
        peer_port = None
        if peer_server is not None and config.peer_listen:
            if config.peer_server_credentials is None:
                peer_port = peer_server.add_insecure_port(config.peer_listen)
            else:
                peer_port = peer_server.add_secure_port(
                    config.peer_listen, config.peer_server_credentials
                )
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {where}: {exc}") from exc
    if bound == 0 or peer_port == 0:
        raise ConfigError(f"cannot listen on {where}")
    return bound, peer_port


def serve_metrics(config: NodeConfig) -> tuple[Any, int | None]:
    """The Prometheus HTTP endpoint on ``metrics_listen`` (none without it), and its port."""
    if not config.metrics_listen:
        return None, None
    host, port = split_address(config.metrics_listen)
    server, _ = start_http_server(port, addr=host)
    return server, server.server_port


__all__ = ["bind", "grpc_server", "serve_metrics"]
