"""Bounds on a node's TCP connections, so that idle or half-open ones cannot use up its files.

gRPC core does the work, set through server options: at most ``max_connections`` connections
per listening port (``grpc.max_allowed_incoming_connections``: a connection past it is closed as
soon as it is accepted, those admitted are served as before), a connection that has not
finished its HTTP/2 handshake within ``handshake_timeout_s`` is closed, and one without calls
for ``connection_idle_s`` is sent GOAWAY (its client reconnects when it has a call). gRPC
offers no bound per client address; the handshake and idle timeouts are what free the slots
of a client that opens connections and then does nothing.

The bound is also kept under the process's open-file limit (RLIMIT_NOFILE), raised to its hard
limit at start: every port's connections and ``RESERVED_FILES`` for RocksDB, the WAL
descriptors and everything else must fit, or the bound is lowered, with a warning.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("selfmodel.node")

# Files kept for everything but connections: RocksDB's SST files and WAL, logs, the metrics
# server, the peers' channels.
RESERVED_FILES = 256


def open_file_limit() -> int:
    """The process's open-file limit, raised first to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_bound(wanted: int, ports: int, file_limit: int) -> int:
    """The connections per port to allow: ``wanted``, or fewer if that many would not fit in
    ``file_limit`` open files; at least 1."""
    fits = (file_limit - RESERVED_FILES) // max(1, ports)
    if wanted <= fits:
        return wanted
    bound = max(1, fits)
    log.warning(
        "max_connections %d per port does not fit in this process's open-file limit %d "
        "(%d port(s), %d files kept for the store): accepting %d per port; raise the limit "
        "(ulimit -n, LimitNOFILE=) to accept more",
        wanted,
        file_limit,
        ports,
        RESERVED_FILES,
        bound,
    )
    return bound


def server_options(
    max_connections: int, idle_s: float, handshake_s: float
) -> list[tuple[str, int]]:
    return [
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.max_connection_idle_ms", int(idle_s * 1000)),
        ("grpc.server_handshake_timeout_ms", int(handshake_s * 1000)),
    ]
