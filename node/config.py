"""A node's configuration, and the checks it passes before the node serves anything."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from node.governance import NO_SEED, Seed
from node.peers import PeerAuth, PeerAuthError, decide
from node.reliability import LearningSettings
from node.validation import Limits
from sync.bounds import SubjectLimits
from sync.settings import SyncSettings

if TYPE_CHECKING:
    from node.auth import Principal, TokenBook
    from node.peerlink import PeerConfig

log = logging.getLogger("selfmodel.node")


class ConfigError(Exception):
    pass


@dataclass
class NodeConfig:
    name: str = "local"
    domain: str = ""
    data_dir: Path = Path("data/local")
    listen: str = "127.0.0.1:7070"
    metrics_listen: str | None = "127.0.0.1:0"
    fsync: bool = True
    cache_mb: float = 256.0  # memory for subject states kept in memory (node.store.cache_cost)
    # Memory for resolved snapshots and their serialized replies (node.snapshots).
    snapshot_cache_mb: float = 64.0
    # RocksDB's blocks cached and memtables, of every column family (node.store.tables.Memory).
    rocksdb_cache_mb: float = 128.0
    # The cluster file's [policies]: the seed under the cluster's replicated settings
    # (node.governor).
    policies: Seed = NO_SEED
    # Learned reliability (node.learning): off unless enabled.
    learning: LearningSettings = field(default_factory=LearningSettings)
    limits: Limits = field(default_factory=Limits)
    max_watchers: int = 256
    # Every message this node sends or takes, from agents and peers alike; the subject limits
    # keep a subject's state (and its GetSelfModel reply) well under it (sync.bounds).
    max_message_bytes: int = 4 * 1024 * 1024
    subject_limits: SubjectLimits = field(default_factory=SubjectLimits)
    grace_s: float = 10.0
    # Set by the security layer: resolves a call's principal (None: development, x-agent-id).
    identify: Callable[[grpc.ServicerContext, Limits], Principal] | None = None
    # The token file: identifies callers (when ``identify`` is None) and, on each reload, has
    # open watches check their caller again.
    tokens: TokenBook | None = None
    # TLS on the agents' port (server-authenticated: agents verify the node, tokens stay
    # secret on the wire); None serves it in plaintext.
    server_credentials: grpc.ServerCredentials | None = None
    max_clock_offset_ms: int = 60_000
    # Writes are suspended while the data directory's disk has less free space than this, and
    # resume (checked every disk_probe_s) once it has it again (node.store.diskwatch).
    min_free_mb: float = 64.0
    disk_probe_s: float = 5.0
    # TCP connections per listening port, and when idle or half-open ones are closed
    # (node.connections); the bound is lowered to fit the open-file limit.
    max_connections: int = 1024
    connection_idle_s: float = 300.0
    handshake_timeout_s: float = 10.0
    # Write with a saved clock ahead of the wall clock (beyond max_clock_offset_ms) at once,
    # instead of refusing writes until the wall clock catches up (--accept-saved-clock).
    accept_saved_clock: bool = False
    # For tests only (node.clock.CLOCK_OFFSET_ENV): milliseconds added to the wall clock read.
    clock_offset_ms: int = 0
    # Federation: the peers this node streams to, every node of the cluster, sync settings.
    peers: tuple[PeerConfig, ...] = ()
    members: frozenset[str] = frozenset()
    sync: SyncSettings = field(default_factory=SyncSettings)
    # Sync on its own port (peer_listen), or on the agents' port. Peers authenticate by
    # mutual TLS (the credentials: the certificate names the caller) or by peer tokens of the
    # cluster's secrets (node.peers); neither: loopback development only.
    peer_listen: str | None = None
    peer_server_credentials: grpc.ServerCredentials | None = None
    peer_channel_credentials: grpc.ChannelCredentials | None = None
    peer_secrets: tuple[bytes, ...] = ()


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admit(config: NodeConfig) -> PeerAuth:
    """Refuses (ConfigError naming the setting) a configuration that would serve beyond
    loopback without credentials, or that cannot hold its own limits; warns loudly of what is
    off. Takes the callers' identities from the token file; returns how peers authenticate."""
    host, _ = split_address(config.listen)
    if config.subject_limits.max_bytes > config.max_message_bytes // 2:
        raise ConfigError(
            f"max_subject_bytes ({config.subject_limits.max_bytes}) must be at most half of "
            f"max_message_bytes ({config.max_message_bytes}): a subject's GetSelfModel reply "
            "takes up to about 1.5 times its state"
        )
    if config.limits.max_rollup_bytes > config.max_message_bytes // 4:
        raise ConfigError(
            f"max_rollup_bytes ({config.limits.max_rollup_bytes}) must be at most a quarter of "
            f"max_message_bytes ({config.max_message_bytes}): a group's read carries its own "
            "beliefs (up to 1.5 times max_subject_bytes) beside its roll-up"
        )
    if config.identify is None and config.tokens is not None:
        config.identify = config.tokens.identify
    if config.identify is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve {config.listen} without credentials: without a token file a node "
            "binds loopback only (127.0.0.1 or ::1); pass a token file to serve other addresses "
            "(selfmodel node --tokens FILE; create tokens with `selfmodel token create`)"
        )
    if config.identify is None and config.metrics_listen:
        metrics_host, _ = split_address(config.metrics_listen)
        if not is_loopback(metrics_host):
            raise ConfigError(
                f"refusing to serve metrics on {config.metrics_listen} without a token file: "
                "without one a node binds loopback only; bind metrics to 127.0.0.1, or pass a "
                "token file (selfmodel node --tokens FILE)"
            )
    auth = peer_auth(config)
    if config.server_credentials is not None and config.peers and not config.peer_listen:
        raise ConfigError(
            f"node {config.name}: with TLS on the agents' port, Sync needs a port of its own: "
            "give the node a peer_address and the cluster file a [cluster.tls] section"
        )
    if config.identify is not None and config.server_credentials is None and not is_loopback(host):
        log.warning(
            "TLS IS OFF on %s: bearer tokens cross the network in the clear; serve the agents' "
            "port with --tls-cert and --tls-key",
            config.listen,
        )
    if config.identify is None:
        log.warning(
            "AUTHENTICATION IS OFF: node %s trusts the x-agent-id header; loopback only, "
            "for local development",
            config.name,
        )
    return auth


def peer_auth(config: NodeConfig) -> PeerAuth:
    """How the node authenticates its peers (node.peers.decide), or ConfigError naming the
    setting to add; a development cluster trusting node headers is logged loudly."""
    members = config.members or frozenset(p.name for p in config.peers)
    hosts = [split_address(a)[0] for a in (config.listen, config.peer_listen) if a]
    try:
        auth = decide(
            config.name,
            members - {config.name},
            tls=config.peer_server_credentials is not None,
            secrets=config.peer_secrets,
            tokens=config.identify is not None,
            exposed=not all(is_loopback(h) for h in hosts),
        )
    except PeerAuthError as exc:
        raise ConfigError(str(exc)) from None
    if auth.trust_header:
        log.warning(
            "PEER AUTHENTICATION IS OFF: node %s trusts the x-selfmodel-node header on Sync; "
            "loopback only, for local development",
            config.name,
        )
    elif auth.secrets and not auth.tls and config.peer_listen:
        peer_host, _ = split_address(config.peer_listen)
        if not is_loopback(peer_host):
            log.warning(
                "TLS IS OFF between nodes on %s: peer tokens and replicated data cross the "
                "network in the clear; add [cluster.tls] on an untrusted network",
                config.peer_listen,
            )
    return auth


__all__ = ["ConfigError", "NodeConfig", "admit", "is_loopback", "peer_auth", "split_address"]
