"""The cluster file (TOML): the nodes, their domains, addresses, peers and the sync settings.

    [cluster]
    data = "data"                 # data root; a node's data defaults to <data>/<name>
    fsync = true
    [cluster.limits]              # every limit of a node (federation.limits.LIMITS): subject
    max_subject_bytes = 1048576   # sizes, message size, connections, disk floor, ids, pages...
    [cluster.sync]                # batch_size, retention_entries, retention_s, anti_entropy_s,
                                  # anti_entropy_yield_lag_s, backoff_max_s, ack_request_s,
                                  # linger_s, claim_wait_s, max_replication_lag_s
                                  # (federation.settings.SYNC)
    [cluster.learning]            # learned reliability: enabled (default false), window,
                                  # prior_agree, prior_disagree, floor, ceiling, interval_s
    [cluster.tls]                 # optional mutual TLS between nodes; {node} is the node's name
    ca = "certs/ca.crt"
    cert = "certs/{node}.crt"
    key = "certs/{node}.key"
    agents = false                # true: the agents' port too, with the node's certificate
    [cluster.auth]
    tokens = "tokens.toml"        # optional; without it nodes serve loopback only
    peer_secret = "peer.secret"   # where TLS is off: proves each node's name to its peers
                                  # (`selfmodel peer-secret create FILE`; see docs/security.md)

    [[node]]
    name = "sales"
    domain = "sales"
    address = "127.0.0.1:7070"    # agents (SelfModel, Admin, health, reflection)
    peer_address = "127.0.0.1:7170"  # Sync between nodes; required with TLS
    metrics = "127.0.0.1:9470"
    peers = ["support", "billing"]   # default: every other node (full replication)

Relative paths are relative to the file's folder (for the embedded default: the working folder).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from federation import settings as numeric
from node import peers
from node.config import NodeConfig
from node.governance import NO_SEED, Seed
from node.reliability import LearningSettings
from node.replication import PeerConfig
from selfmodel import channels
from sync.replicator import SyncSettings

DEFAULT_NODES = (  # name, agents' port, peers' port (with TLS), metrics port
    ("sales", 7070, 7170, 9470),
    ("support", 7071, 7171, 9471),
    ("billing", 7072, 7172, 9472),
)


def default_cluster_text(data: str = "data", tls: bool = False) -> str:
    """The embedded default: three domain nodes on loopback, data under ``data``.

    With ``tls`` the nodes talk Sync over mutual TLS on their own ports, with the certificates
    of ``selfmodel certs create`` under ``<data>/certs``.
    """
    lines = [
        "# The embedded default: three domain nodes on loopback.",
        "[cluster]",
        f'data = "{data}"',
        "fsync = true",
        "",
        "[cluster.sync]",
        "anti_entropy_s = 10",
    ]
    if tls:
        lines += [
            "",
            "[cluster.tls]",
            f'ca = "{data}/certs/ca.pem"',
            f'cert = "{data}/certs/{{node}}.pem"',
            f'key = "{data}/certs/{{node}}.key"',
        ]
    for name, port, peer_port, metrics_port in DEFAULT_NODES:
        lines += [
            "",
            "[[node]]",
            f'name = "{name}"',
            f'domain = "{name}"',
            f'address = "127.0.0.1:{port}"',
            *([f'peer_address = "127.0.0.1:{peer_port}"'] if tls else []),
            f'metrics = "127.0.0.1:{metrics_port}"',
        ]
    return "\n".join(lines) + "\n"


DEFAULT_CLUSTER = default_cluster_text()


class ClusterFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    domain: str
    address: str
    peer_address: str
    metrics: str | None
    data: Path
    peers: tuple[str, ...]
    # Where this node reaches each peer, when not at the peer's own peer_address (fault proxies).
    routes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cluster:
    nodes: tuple[NodeSpec, ...]
    fsync: bool = True
    sync: SyncSettings = field(default_factory=SyncSettings)
    tls: Mapping[str, TlsFiles] | None = None  # per node
    agents_tls: bool = False  # the agents' port over TLS too (with tls)
    tokens: Path | None = None
    peer_secret: Path | None = None  # file of the cluster's peer secrets (node.peers)
    policies: Seed = NO_SEED
    source: Path | None = None  # the file it was read from (None: embedded default)
    # [cluster.limits]: the limits given (federation.limits.LIMITS), each a NodeConfig setting.
    limits: Mapping[str, int | float] = field(default_factory=dict)
    learning: LearningSettings = field(default_factory=LearningSettings)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ClusterFileError(f"no node named {name!r} in the cluster file; it has {self.names()}")

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def agent_credentials(self) -> grpc.ChannelCredentials | None:
        """What an agent (or the launcher) needs to reach the nodes: their CA under agents TLS."""
        if self.tls is None or not self.agents_tls:
            return None
        return channels.agent_channel_credentials(next(iter(self.tls.values())).ca)

    def peers_of(self, name: str) -> tuple[PeerConfig, ...]:
        me = self.node(name)
        return tuple(PeerConfig(p, me.routes.get(p, self.node(p).peer_address)) for p in me.peers)


def load(path: Path | None, *, tls: bool = False) -> Cluster:
    """Reads a cluster file, or the embedded default (optionally with TLS) when ``path`` is None."""
    if path is None:
        return parse(tomllib.loads(default_cluster_text(tls=tls)), Path.cwd(), None)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClusterFileError(f"cannot read cluster file {path}: {exc}") from exc
    return parse(raw, path.resolve().parent, path.resolve())


def dial_address(listen: str) -> str:
    """Where a process on the node's own machine reaches an address the node listens on: a
    wildcard host (``0.0.0.0``, ``[::]``, empty) becomes loopback; any other stays as it is."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        return listen
    loopback = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host)
    return f"{loopback}:{port}" if loopback else listen


def positive_mb(value: Any) -> float | None:
    """``value`` as a number of MiB (cache_mb) when it is a positive, finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        return None
    return float(value)


# The keys each table takes besides the numeric ones of federation.settings (LIMITS, SYNC).
CLUSTER_KEYS = frozenset({"data", "fsync", "limits", "sync", "learning", "tls", "auth"})
TLS_KEYS = frozenset({"ca", "cert", "key", "agents"})
AUTH_KEYS = frozenset({"tokens", "peer_secret"})
NODE_KEYS = frozenset(
    {"name", "domain", "address", "peer_address", "metrics", "data", "peers", "routes"}
)


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def parse(raw: Mapping[str, Any], base: Path, source: Path | None) -> Cluster:
    cluster = raw.get("cluster", {})
    try:
        numeric.moved("cluster", cluster)
        for table in ("storage", "connections"):
            numeric.moved(f"cluster.{table}", cluster.get(table, {}))
        limits = numeric.parse_limits(cluster.get("limits", {}))
        sync = numeric.parse_sync(cluster.get("sync", {}))
        learning = numeric.parse_learning(cluster.get("learning", {}))
    except numeric.SettingError as exc:
        raise ClusterFileError(str(exc)) from None
    unknown = set(cluster) - CLUSTER_KEYS
    if unknown:
        raise ClusterFileError(f"unknown [cluster] keys {sorted(unknown)}")
    data_root = _path(base, cluster.get("data", "data"))
    specs = raw.get("node", [])
    if not specs:
        raise ClusterFileError("the cluster file names no [[node]]")
    names = [s.get("name", "") for s in specs]
    if len(set(names)) != len(names) or not all(names):
        raise ClusterFileError(f"every [[node]] needs a unique name, got {names}")
    nodes = []
    for s in specs:
        unknown = set(s) - NODE_KEYS
        if unknown:
            raise ClusterFileError(f"node {s['name']}: unknown keys {sorted(unknown)}")
        if "address" not in s:
            raise ClusterFileError(f"node {s['name']}: address is required (HOST:PORT)")
        peers = tuple(s.get("peers", [n for n in names if n != s["name"]]))
        for p in peers:
            if p not in names or p == s["name"]:
                raise ClusterFileError(
                    f"node {s['name']}: peer {p!r} is not another node of the file"
                )
        nodes.append(
            NodeSpec(
                name=s["name"],
                domain=s.get("domain", s["name"]),
                address=s["address"],
                peer_address=s.get("peer_address", s["address"]),
                metrics=s.get("metrics") or None,
                data=_path(base, s["data"]) if "data" in s else data_root / s["name"],
                peers=peers,
                routes=dict(s.get("routes", {})),
            )
        )
    tls = None
    agents_tls = False
    if "tls" in cluster:
        t = cluster["tls"]
        unknown = set(t) - TLS_KEYS
        if unknown:
            raise ClusterFileError(f"unknown [cluster.tls] keys {sorted(unknown)}")
        missing = {"ca", "cert", "key"} - set(t)
        if missing:
            raise ClusterFileError(
                f"[cluster.tls] needs ca, cert and key; missing {sorted(missing)}"
            )
        agents_tls = t.get("agents", False)
        if not isinstance(agents_tls, bool):
            raise ClusterFileError("[cluster.tls] agents must be true or false")
        tls = {
            n.name: TlsFiles(
                _path(base, t["ca"]),
                _path(base, t["cert"].format(node=n.name)),
                _path(base, t["key"].format(node=n.name)),
            )
            for n in nodes
        }
        for n in nodes:
            if n.peer_address == n.address:
                raise ClusterFileError(
                    f"node {n.name}: with [cluster.tls] give a peer_address for Sync apart from "
                    "the agents' address"
                )
    auth = cluster.get("auth", {})
    unknown = set(auth) - AUTH_KEYS
    if unknown:
        raise ClusterFileError(f"unknown [cluster.auth] keys {sorted(unknown)}")
    tokens = _path(base, auth["tokens"]) if "tokens" in auth else None
    peer_secret = _path(base, auth["peer_secret"]) if "peer_secret" in auth else None
    try:
        policies = Seed.from_config(raw.get("policies", {}))
    except ValueError as exc:
        raise ClusterFileError(f"[policies]: {exc}") from exc
    return Cluster(
        nodes=tuple(nodes),
        fsync=bool(cluster.get("fsync", True)),
        sync=sync,
        tls=tls,
        agents_tls=agents_tls,
        tokens=tokens,
        peer_secret=peer_secret,
        policies=policies,
        source=source,
        limits=limits,
        learning=learning,
    )


def node_config(cluster: Cluster, name: str, identify: Any = None) -> NodeConfig:
    """The NodeConfig of one node of the cluster file."""
    spec = cluster.node(name)
    config = NodeConfig(
        name=spec.name,
        domain=spec.domain,
        data_dir=spec.data,
        listen=spec.address,
        metrics_listen=spec.metrics,
        fsync=cluster.fsync,
        policies=cluster.policies,
        identify=identify,
        peers=cluster.peers_of(name),
        members=frozenset(cluster.names()),
        sync=cluster.sync,
        peer_listen=spec.peer_address if spec.peer_address != spec.address else None,
        learning=cluster.learning,
    )
    numeric.apply(config, cluster.limits)
    if cluster.peer_secret is not None:
        config.peer_secrets = peers.read_secrets(cluster.peer_secret)
    if cluster.tls is not None:
        files = cluster.tls[name]
        pem = (files.ca, files.cert, files.key)
        config.peer_server_credentials = channels.server_credentials(*pem)
        config.peer_channel_credentials = channels.channel_credentials(*pem)
        if cluster.agents_tls:
            config.server_credentials = channels.agent_server_credentials(files.cert, files.key)
    return config
