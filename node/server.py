"""Server bootstrap: ports, health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import gc
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from node import connections, metrics
from node.auth import TokenBook
from node.clock import clock_refusal, start_clock
from node.decoding import StrictDecoding
from node.engine import Engine
from node.interceptors import Chain, Gate, wrapping
from node.peers import PeerAuth, PeerAuthError, decide, refusing
from node.policy import PolicyBook
from node.replication import (
    SERVER_OPTIONS,
    PeerConfig,
    SyncServicer,
    build_replicator,
    claim_run,
)
from node.servicer import (
    AdminServicer,
    Principal,
    SelfModelServicer,
    SerializedReplies,
    identify_by_header,
)
from node.store import Store
from node.store.diskwatch import DiskWatch
from node.validation import Limits
from selfmodel.v1 import admin_pb2, admin_pb2_grpc, selfmodel_pb2, selfmodel_pb2_grpc, sync_pb2_grpc
from sync.bounds import SubjectLimits
from sync.replicator import Replicator, SyncSettings

log = logging.getLogger("selfmodel.node")

SERVICES = ("selfmodel.v1.SelfModel", "selfmodel.v1.Admin", "selfmodel.v1.Sync")


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
    policies: PolicyBook = field(default_factory=PolicyBook)
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


@dataclass
class RunningNode:
    config: NodeConfig
    server: grpc.Server
    engine: Engine
    store: Store
    health: health.HealthServicer
    port: int
    metrics_port: int | None
    replicator: Replicator | None = None
    sync_servicer: SyncServicer | None = None
    peer_port: int | None = None
    peer_server: grpc.Server | None = None  # serves Sync on peer_listen
    disk_watch: DiskWatch | None = None
    _metrics_server: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _stop_token_watch: Callable[[], None] | None = None

    @property
    def address(self) -> str:
        host, _ = split_address(self.config.listen)
        return f"{host}:{self.port}" if ":" not in host else f"[{host}]:{self.port}"

    def stop(self, grace_s: float | None = None) -> None:
        """Health goes NOT_SERVING, watches end, in-flight calls finish, RocksDB closes cleanly."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self._stop_token_watch is not None:
            self._stop_token_watch()
        if self.replicator is not None:
            self.replicator.stop()
        if self.sync_servicer is not None:
            self.sync_servicer.close()
        self.engine.close_watches()
        grace = self.config.grace_s if grace_s is None else grace_s
        stopped = [s.stop(grace) for s in (self.server, self.peer_server) if s is not None]
        for done in stopped:
            done.wait()
        if self.disk_watch is not None:
            self.disk_watch.stop()
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("node %s stopped", self.config.name)


def start(config: NodeConfig) -> RunningNode:
    host, _ = split_address(config.listen)
    if config.subject_limits.max_bytes > config.max_message_bytes // 2:
        raise ConfigError(
            f"max_subject_bytes ({config.subject_limits.max_bytes}) must be at most half of "
            f"max_message_bytes ({config.max_message_bytes}): a subject's GetSelfModel reply "
            "takes up to about 1.5 times its state"
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
    store = Store(
        config.data_dir,
        config.name,
        sync=config.fsync,
        outbox=bool(config.peers),
        cache_mb=config.cache_mb,
    )
    clock = start_clock(config, store.hlc_high_water)
    limits = config.limits
    engine = Engine(
        store,
        config.policies,
        clock=clock,
        now_ms=clock.wall,
        max_watchers=config.max_watchers,
        subject_limits=config.subject_limits,
        members=config.members | {p.name for p in config.peers},
        max_handoff_lead=limits.max_handoff_lead,
    )
    # Until the node has decided its actor (below), only run claims, health and reflection.
    gate = Gate(
        f"node {config.name} is starting: it is asking its peers to vouch for its previous run",
        ("/selfmodel.v1.Sync/ClaimRun", "/grpc.health.v1.Health/", "/grpc.reflection."),
        node=config.name,
    )
    # Every service registers through this, so its handlers are counted and timed, wait for
    # the gate, decode requests strictly and may answer pre-serialized replies (wrapped once,
    # not per call).
    chain = Chain(metrics.ServerMetrics(), gate, StrictDecoding(), SerializedReplies())
    max_connections = connections.connection_bound(
        config.max_connections, 2 if config.peer_listen else 1, connections.open_file_limit()
    )
    # A watch holds a thread while open (a handoff read never waits: node.handoff): watches
    # are bounded, and 64 threads beyond them stay for every other call.
    held = config.max_watchers
    server = _grpc_server(config, held + 64, held + 1024, max_connections)
    services = wrapping(server, chain)
    identify = config.identify or identify_by_header
    selfmodel_pb2_grpc.add_SelfModelServicer_to_server(
        SelfModelServicer(
            engine, config.limits, identify, domain=config.domain, tokens=config.tokens
        ),
        services,
    )
    replicator = None
    if config.peers:
        replicator = build_replicator(
            engine,
            config.peers,
            config.sync,
            auth,
            config.peer_channel_credentials,
            config.limits,
            config.max_message_bytes,
        )
    sync_servicer = SyncServicer(
        engine,
        auth,
        config.limits,
        on_peer_session=replicator.peer_seen if replicator is not None else None,
        max_message_bytes=config.max_message_bytes,
    )
    health_servicer = health.HealthServicer()
    # With a peers' port of its own, Sync is served there only: the agents' port refuses it.
    peer_server = None
    if config.peer_listen:
        # A thread per call (delta streams hold theirs), so none waits behind another's stream.
        calls = 8 * len(auth.members) + 64
        peer_server = _grpc_server(config, calls, calls, max_connections)
        peer_services = wrapping(peer_server, chain)
        sync_pb2_grpc.add_SyncServicer_to_server(sync_servicer, peer_services)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, peer_services)
        wrong_port = refusing(
            config.name,
            "agents_port",
            f"node {config.name} serves Sync on its peers' port {config.peer_listen}, "
            "not on the agents' port",
        )
        sync_pb2_grpc.add_SyncServicer_to_server(
            SyncServicer(engine, wrong_port, config.limits), services
        )
    else:
        sync_pb2_grpc.add_SyncServicer_to_server(sync_servicer, services)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(
            engine, lambda: node_status(config, engine, replicator), identify, config.limits
        ),
        services,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = (
        selfmodel_pb2.DESCRIPTOR.services_by_name["SelfModel"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, services)
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
        store.close()
        raise ConfigError(
            f"cannot listen on {config.listen} / {config.peer_listen}: {exc}"
        ) from exc
    if bound == 0 or peer_port == 0:
        store.close()
        raise ConfigError(f"cannot listen on {config.listen} / {config.peer_listen}")
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    servers = [s for s in (server, peer_server) if s is not None]
    for s in servers:
        s.start()
    try:
        decide_actor(config, store, auth)
    except BaseException:
        for s in servers:
            s.stop(0).wait()
        store.close()
        raise
    gate.open()
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    disk_watch = DiskWatch(
        store,
        health_servicer,
        min_free_bytes=int(config.min_free_mb * 2**20),
        probe_s=config.disk_probe_s,
    )
    disk_watch.start()
    threading.Thread(target=_verify, args=(store,), name="verify", daemon=True).start()

    metrics_server, metrics_port = None, None
    metrics.watch_store(
        store.size_bytes,
        store.estimate_subjects,
        lambda: store.context_entries_max,
        store.cache_bytes,
    )
    if config.metrics_listen:
        mhost, mport = split_address(config.metrics_listen)
        metrics_server, _ = start_http_server(mport, addr=mhost)
        metrics_port = metrics_server.server_port
    if replicator is not None:
        replicator.start()
    stop_token_watch = None
    if config.tokens is not None:
        stop_token_watch = config.tokens.watch(engine.wake_watches)
    _settle_garbage_collector()
    return RunningNode(
        config,
        server,
        engine,
        store,
        health_servicer,
        bound,
        metrics_port,
        replicator,
        sync_servicer,
        peer_port,
        peer_server,
        disk_watch,
        metrics_server,
        _stop_token_watch=stop_token_watch,
    )


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


def _grpc_server(
    config: NodeConfig, max_workers: int, max_rpcs: int, max_connections: int
) -> grpc.Server:
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


def _verify(store: Store) -> None:
    """Reads every stored state once after start, so that a subject whose SST block is
    corrupt is found (and repaired from peers: Store.quarantine) without waiting for a read;
    paced (about a minute per million subjects) so the node's calls keep the GIL."""
    try:
        found = store.verify(pause_s=0.05)
    except Exception as exc:  # the store closed meanwhile, say: the next start verifies again
        log.info("node %s: verifying the store stopped: %s", store.node, exc)
        return
    log.info("node %s: store verified, %d corrupt subject(s) found", store.node, found)


def decide_actor(config: NodeConfig, store: Store, auth: PeerAuth) -> None:
    """Resumes the previous run's actor if that is safe, else keeps the new one; logs which.

    Resume only if every node that may have this node's dots first hand vouched for it: its
    peers, and any member that could call its Sync service (one that lists it as a peer while
    it does not list that one is never asked, so never resume then). Without any, no other
    copy of this directory can have sent its dots anywhere. Peers started at the same moment
    are asked again for up to ``claim_wait_s``, while this node answers their claims.
    """
    peer_names = {p.name for p in config.peers}
    members = (config.members or frozenset(peer_names)) - {config.name}
    resumable = store.resumable is not None and members <= peer_names
    granted = bool(config.peers) and claim_run(
        store,
        config.peers,
        auth,
        config.peer_channel_credentials,
        wait_s=config.sync.claim_wait_s if resumable else 0.0,
    )
    if resumable and (granted or not members):
        store.resume_actor()
    log.info(
        "node %s: run %d, actor %s (%s)",
        config.name,
        store.run,
        store.actor,
        "resumed" if store.actor == store.resumable else "new",
    )


def _settle_garbage_collector() -> None:
    """Moves everything alive at start (modules, gRPC, protobuf descriptors) out of the cyclic
    collector's sight, and collects the young generation less often.

    Without it a full collection walks every object the node imported, stopping all its
    threads for 15-20 ms now and then, and the second generation 1-2 ms every few seconds:
    the tail of replication latency (measured with benchmarks/replication.py). The node's own
    data are mostly acyclic (frozen dataclasses, bytes), freed by reference counting anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def node_status(
    config: NodeConfig, engine: Engine, replicator: Replicator | None
) -> admin_pb2.NodeStatus:
    status = admin_pb2.NodeStatus(
        node=config.name,
        domain=config.domain,
        actor=engine.actor,
        incarnation=engine.store.incarnation,
        subjects=engine.store.estimate_subjects(),
        outbox_seq=engine.store.outbox_seq,
        serving=engine.store.suspended is None and not clock_refusal(engine.clock),
        problems=[
            *([f"writes suspended: {engine.store.suspended}"] if engine.store.suspended else []),
            *engine.store.problems,
        ],
        clock_ahead_ms=engine.clock.ahead_ms(),
        writes_refused=clock_refusal(engine.clock),
    )
    addresses = {p.name: p.address for p in config.peers}
    offsets, wall = engine.clock.peer_offsets, engine.clock.wall()

    def offset(peer: str) -> int:
        ahead = offsets.ahead_ms(peer, wall) if offsets is not None else None
        return ahead or 0

    for peer in replicator.states() if replicator is not None else []:
        status.peers.add(
            name=peer.name,
            address=addresses.get(peer.name, ""),
            connected=peer.connected,
            acked_seq=peer.acked,
            outbox_depth=max(0, engine.store.outbox_seq - peer.acked),
            lag_seconds=peer.lag_s,
            failing_sessions=peer.failing_sessions,
            skipped_subjects=peer.skipped_subjects,
            deltas_pending=peer.pending,
            deltas_refused_clock=peer.refused_clock,
            deltas_refused_invalid=peer.refused_invalid,
            last_refusal=peer.last_refusal,
            clock_offset_ms=offset(peer.name),
        )
    return status


def serve(config: NodeConfig) -> None:
    """Runs a node until SIGTERM or SIGINT, then shuts it down gracefully."""
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down node %s", signum, config.name)
        done.set()

    # Before start, which may wait for peers (claim_wait_s): a stop asked for meanwhile is then
    # a clean one as soon as the node has started, not the default handler's abrupt exit.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node = start(config)
    line = f"selfmodel node {config.name} listening on {node.address}"
    if node.metrics_port is not None:
        mhost, _ = split_address(config.metrics_listen or ":0")
        line += f" metrics http://{mhost}:{node.metrics_port}/metrics"
    if node.peer_port is not None:
        line += f" peers {split_address(config.peer_listen or ':0')[0]}:{node.peer_port}"
    print(line, flush=True)
    # Python runs a signal's handler in the main thread, between bytecodes, and the kernel may
    # hand the signal to any thread (gRPC's among them): then nothing interrupts a wait here.
    # Waiting without a timeout lost the Ctrl-C of about one `cluster up` in three, and the
    # node was killed 15 s later instead of closing cleanly. So wait in short steps.
    while not done.wait(0.2):
        pass
    node.stop()
    sys.stdout.flush()
