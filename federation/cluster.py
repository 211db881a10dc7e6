"""The cluster file (TOML): the nodes, their domains, addresses, peers and the sync settings.

    [cluster]
    data = "data"                 # data root; a node's data defaults to <data>/<name>
    fsync = true
    max_clock_offset_ms = 60000
    cache_mb = 256                # memory per node for subject states kept in memory
    snapshot_cache_mb = 64        # memory per node for resolved snapshots (node.snapshots)
    max_subject_slots = 1000      # per subject (sync.bounds.SubjectLimits); a write past a
    max_subject_observations = 2000  # limit is refused with RESOURCE_EXHAUSTED
    max_subject_bytes = 1048576   # encoded state; at most half of max_message_bytes
    max_message_bytes = 4194304   # every gRPC message a node sends or takes (agents and peers)
    [cluster.sync]                # batch_size, retention_entries, retention_s, anti_entropy_s,
                                  # backoff_max_s, ack_request_s, claim_wait_s
                                  # (see sync.replicator.SyncSettings)
    [cluster.tls]                 # optional mutual TLS between nodes; {node} is the node's name
    ca = "certs/ca.crt"
    cert = "certs/{node}.crt"
    key = "certs/{node}.key"
    agents = false                # true: the agents' port too, with the node's certificate
    [cluster.auth]
    tokens = "tokens.toml"        # optional; without it nodes serve loopback only
    peer_secret = "peer.secret"   # where TLS is off: proves each node's name to its peers
                                  # (`selfmodel peer-secret create FILE`; see docs/security.md)
    [cluster.storage]             # min_free_mb, probe_s (docs/operating.md)
    [cluster.connections]         # max, idle_s, handshake_s (docs/operating.md)

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

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from node import peers
from node.config import NodeConfig
from node.policy import PolicyBook
from node.replication import PeerConfig
from node.validation import Limits
from selfmodel import channels
from sync.bounds import SubjectLimits
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
    max_clock_offset_ms: int = 60_000
    cache_mb: float = 256.0
    snapshot_cache_mb: float = 64.0
    subject_limits: SubjectLimits = field(default_factory=SubjectLimits)
    max_message_bytes: int = 4 * 1024 * 1024
    sync: SyncSettings = field(default_factory=SyncSettings)
    tls: Mapping[str, TlsFiles] | None = None  # per node
    agents_tls: bool = False  # the agents' port over TLS too (with tls)
    tokens: Path | None = None
    peer_secret: Path | None = None  # file of the cluster's peer secrets (node.peers)
    policies: PolicyBook = field(default_factory=PolicyBook)
    source: Path | None = None  # the file it was read from (None: embedded default)
    # NodeConfig fields set by [cluster.storage] and [cluster.connections] (NODE_TABLES).
    node_settings: Mapping[str, float] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)  # [cluster.limits]
    max_watchers: int = 256  # [cluster.limits] max_watchers: open watches per node

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


def _cache_mb(value: Any, name: str = "cache_mb") -> float:
    mb = positive_mb(value)
    if mb is None:
        raise ClusterFileError(f"[cluster] {name} must be a positive number, got {value!r}")
    return mb


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ClusterFileError(f"[cluster] {name} must be a positive whole number, got {value!r}")
    return value


def subject_limits(base: SubjectLimits, **settings: int | None) -> SubjectLimits:
    """``base`` with the settings given (``max_subject_slots``, ``max_subject_observations``,
    ``max_subject_bytes``; None: unchanged)."""
    given = {name.removeprefix("max_subject_"): v for name, v in settings.items() if v is not None}
    return dataclasses.replace(base, **{f"max_{k}": v for k, v in given.items()})


# Each table's keys, and the NodeConfig field each sets (a positive number).
NODE_TABLES: dict[str, dict[str, str]] = {
    "storage": {"min_free_mb": "min_free_mb", "probe_s": "disk_probe_s"},
    "connections": {
        "max": "max_connections",
        "idle_s": "connection_idle_s",
        "handshake_s": "handshake_timeout_s",
    },
}


def _node_settings(cluster: Mapping[str, Any]) -> dict[str, float]:
    settings: dict[str, float] = {}
    for table, keys in NODE_TABLES.items():
        raw = cluster.get(table, {})
        unknown = set(raw) - set(keys)
        if unknown:
            raise ClusterFileError(
                f"[cluster.{table}]: unknown keys {sorted(unknown)}; it takes {sorted(keys)}"
            )
        for key, value in raw.items():
            minimum: float = {"min_free_mb": 0, "max": 1}.get(key, 0.001)
            kinds = int if key == "max" else int | float
            if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
                raise ClusterFileError(
                    f"[cluster.{table}] {key} must be a number of at least {minimum}, got {value!r}"
                )
            settings[keys[key]] = value
    return settings


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def parse(raw: Mapping[str, Any], base: Path, source: Path | None) -> Cluster:
    cluster = raw.get("cluster", {})
    limit_keys = (
        "max_subject_slots",
        "max_subject_observations",
        "max_subject_bytes",
        "max_message_bytes",
    )
    known = {
        "data",
        "fsync",
        "max_clock_offset_ms",
        "cache_mb",
        "snapshot_cache_mb",
        "sync",
        "tls",
        "auth",
        *limit_keys,
        *NODE_TABLES,
        "limits",
    }
    unknown = set(cluster) - known
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
        unknown = set(s) - {
            "name",
            "domain",
            "address",
            "peer_address",
            "metrics",
            "data",
            "peers",
            "routes",
        }
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
    sync_raw = cluster.get("sync", {})
    try:
        sync = SyncSettings(**sync_raw)
    except TypeError as exc:
        raise ClusterFileError(f"[cluster.sync]: {exc}") from exc
    tls = None
    agents_tls = False
    if "tls" in cluster:
        t = cluster["tls"]
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
    limits, max_watchers = _limits(cluster.get("limits", {}))
    auth = cluster.get("auth", {})
    unknown = set(auth) - {"tokens", "peer_secret"}
    if unknown:
        raise ClusterFileError(f"unknown [cluster.auth] keys {sorted(unknown)}")
    tokens = _path(base, auth["tokens"]) if "tokens" in auth else None
    peer_secret = _path(base, auth["peer_secret"]) if "peer_secret" in auth else None
    try:
        policies = PolicyBook.from_config(raw.get("policies", {}))
    except ValueError as exc:
        raise ClusterFileError(f"[policies]: {exc}") from exc
    sizes = {k: _positive_int(k, cluster[k]) for k in limit_keys if k in cluster}
    max_message_bytes = sizes.pop("max_message_bytes", 4 * 1024 * 1024)
    return Cluster(
        nodes=tuple(nodes),
        fsync=bool(cluster.get("fsync", True)),
        max_clock_offset_ms=int(cluster.get("max_clock_offset_ms", 60_000)),
        cache_mb=_cache_mb(cluster.get("cache_mb", 256)),
        snapshot_cache_mb=_cache_mb(cluster.get("snapshot_cache_mb", 64), "snapshot_cache_mb"),
        subject_limits=subject_limits(SubjectLimits(), **sizes),
        max_message_bytes=max_message_bytes,
        sync=sync,
        tls=tls,
        agents_tls=agents_tls,
        tokens=tokens,
        peer_secret=peer_secret,
        policies=policies,
        source=source,
        node_settings=_node_settings(cluster),
        limits=limits,
        max_watchers=max_watchers,
    )


def _limits(raw: Mapping[str, Any]) -> tuple[Limits, int]:
    """``[cluster.limits]``: any field of node.validation.Limits, and ``max_watchers``; each a
    positive number of the field's type."""
    defaults = Limits()
    fields = {"max_watchers": 256, **{k: getattr(defaults, k) for k in Limits.__slots__}}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ClusterFileError(
            f"unknown [cluster.limits] keys {sorted(unknown)}; known: {', '.join(sorted(fields))}"
        )
    for key, value in raw.items():
        kind = type(fields[key])
        ok = type(value) in ((int, float) if kind is float else (int,))
        if not ok or not math.isfinite(value) or value <= 0:
            raise ClusterFileError(
                f"[cluster.limits] {key} must be a positive {kind.__name__}, got {value!r}"
            )
    values = dict(raw)
    max_watchers = int(values.pop("max_watchers", 256))
    return Limits(**values), max_watchers


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
        cache_mb=cluster.cache_mb,
        snapshot_cache_mb=cluster.snapshot_cache_mb,
        subject_limits=cluster.subject_limits,
        max_message_bytes=cluster.max_message_bytes,
        policies=cluster.policies,
        identify=identify,
        max_clock_offset_ms=cluster.max_clock_offset_ms,
        peers=cluster.peers_of(name),
        members=frozenset(cluster.names()),
        sync=cluster.sync,
        peer_listen=spec.peer_address if spec.peer_address != spec.address else None,
        limits=cluster.limits,
        max_watchers=cluster.max_watchers,
    )
    if cluster.peer_secret is not None:
        config.peer_secrets = peers.read_secrets(cluster.peer_secret)
    for setting, value in cluster.node_settings.items():
        setattr(config, setting, type(getattr(config, setting))(value))
    if cluster.tls is not None:
        files = cluster.tls[name]
        pem = (files.ca, files.cert, files.key)
        config.peer_server_credentials = channels.server_credentials(*pem)
        config.peer_channel_credentials = channels.channel_credentials(*pem)
        if cluster.agents_tls:
            config.server_credentials = channels.agent_server_credentials(files.cert, files.key)
    return config
