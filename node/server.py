"""Server bootstrap: ports, health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
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

from node import metrics, transport
from node.clock import clock_refusal, start_clock
from node.decoding import StrictDecoding
from node.engine import Engine
from node.interceptors import Chain, Gate, wrapping
from node.policy import PolicyBook
from node.replication import (
    SERVER_OPTIONS,
    PeerConfig,
    SyncServicer,
    build_replicator,
    claim_run,
    header_peer_name,
)
from node.servicer import (
    AdminServicer,
    Principal,
    SelfModelServicer,
    SerializedReplies,
    identify_by_header,
)
from node.store import Store
from node.validation import Limits
from selfmodel.v1 import admin_pb2, admin_pb2_grpc, selfmodel_pb2, selfmodel_pb2_grpc, sync_pb2_grpc
from sync import native
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
    max_message_bytes: int = 4 * 1024 * 1024
    grace_s: float = 10.0
    # Set by the security layer: resolves a call's principal (None: development, x-agent-id).
    identify: Callable[[grpc.ServicerContext, Limits], Principal] | None = None
    # TLS on the agents' port (server-authenticated: agents verify the node, tokens stay
    # secret on the wire); None serves it in plaintext.
    server_credentials: grpc.ServerCredentials | None = None
    max_clock_offset_ms: int = 60_000
    # Write with a saved clock ahead of the wall clock (beyond max_clock_offset_ms) at once,
    # instead of refusing writes until the wall clock catches up (--accept-saved-clock).
    accept_saved_clock: bool = False
    # For tests only (node.clock.CLOCK_OFFSET_ENV): milliseconds added to the wall clock read.
    clock_offset_ms: int = 0
    # Federation: the peers this node streams to, every node of the cluster, sync settings.
    peers: tuple[PeerConfig, ...] = ()
    members: frozenset[str] = frozenset()
    sync: SyncSettings = field(default_factory=SyncSettings)
    # Sync on its own port with mutual TLS (peer_listen), or on the agents' port without TLS.
    peer_listen: str | None = None
    peer_server_credentials: grpc.ServerCredentials | None = None
    peer_channel_credentials: grpc.ChannelCredentials | None = None
    peer_identity: Callable[[grpc.ServicerContext], str | None] = header_peer_name


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
    _metrics_server: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)

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
        if self.replicator is not None:
            self.replicator.stop()
        if self.sync_servicer is not None:
            self.sync_servicer.close()
        self.engine.close_watches()
        self.server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("node %s stopped", self.config.name)


def start(config: NodeConfig) -> RunningNode:
    host, _ = split_address(config.listen)
    if config.identify is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve {config.listen} without credentials: without a token file a node "
            "binds loopback only (127.0.0.1 or ::1); pass a token file to serve other addresses "
            "(selfmodel node --tokens FILE; create tokens with `selfmodel token create`)"
        )
    if config.peer_listen and config.peer_server_credentials is None:
        peer_host, _ = split_address(config.peer_listen)
        if not is_loopback(peer_host):
            raise ConfigError(
                f"refusing to serve Sync on {config.peer_listen} without mutual TLS: give the "
                "cluster file a [cluster.tls] section, or bind loopback"
            )
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
    engine = Engine(
        store, config.policies, clock=clock, now_ms=clock.wall, max_watchers=config.max_watchers
    )
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        *SERVER_OPTIONS,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_watchers + 64, thread_name_prefix="rpc"),
        options=options,
        maximum_concurrent_rpcs=config.max_watchers + 1024,
    )
    # Until the node has decided its actor (below), only run claims, health and reflection.
    gate = Gate(
        f"node {config.name} is starting: it is asking its peers to vouch for its previous run",
        ("/selfmodel.v1.Sync/ClaimRun", "/grpc.health.v1.Health/", "/grpc.reflection."),
    )
    # Every service registers through this, so its handlers are counted and timed, wait for
    # the gate, decode requests strictly and may answer pre-serialized replies (wrapped once,
    # not per call).
    services = wrapping(
        server, Chain(metrics.ServerMetrics(), gate, StrictDecoding(), SerializedReplies())
    )
    identify = config.identify or identify_by_header
    selfmodel_pb2_grpc.add_SelfModelServicer_to_server(
        SelfModelServicer(engine, config.limits, identify, domain=config.domain), services
    )
    replicator = None
    if config.peers:
        replicator = build_replicator(
            engine, config.peers, config.sync, config.peer_channel_credentials, config.limits
        )
    sync_servicer = SyncServicer(
        engine,
        config.members or frozenset(p.name for p in config.peers),
        config.peer_identity,
        config.limits,
        on_peer_session=replicator.peer_seen if replicator is not None else None,
    )
    sync_pb2_grpc.add_SyncServicer_to_server(sync_servicer, services)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(
            engine, lambda: node_status(config, engine, replicator), identify, config.limits
        ),
        services,
    )
    health_servicer = health.HealthServicer()
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
        if config.peer_listen:
            if config.peer_server_credentials is None:
                peer_port = server.add_insecure_port(config.peer_listen)
            else:
                peer_port = server.add_secure_port(
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
    server.start()
    try:
        decide_actor(config, store)
    except BaseException:
        server.stop(0).wait()
        store.close()
        raise
    gate.open()
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

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
        metrics_server,
    )


def decide_actor(config: NodeConfig, store: Store) -> None:
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
        config.peer_channel_credentials,
        wait_s=config.sync.claim_wait_s if resumable else 0.0,
    )
    if resumable and (granted or not members):
        store.resume_actor()
    log.info(
        "node %s: run %d, actor %s (%s), %s, %s",
        config.name,
        store.run,
        store.actor,
        "resumed" if store.actor == store.resumable else "new",
        native.described(),
        transport.described(),
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
        serving=True,
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
            deltas_pending=peer.pending,
            deltas_refused_clock=peer.refused_clock,
            deltas_refused_invalid=peer.refused_invalid,
            last_refusal=peer.last_refusal,
            clock_offset_ms=offset(peer.name),
        )
    return status


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset and cgroups write it: ``1``, ``0,2``, ``0-3``."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last if sep else first) + 1))
    except ValueError:
        raise ConfigError(f"--cpus {text!r}: give CPU numbers, e.g. 1, 0,2 or 0-3") from None
    if not cpus or min(cpus) < 0:
        raise ConfigError(f"--cpus {text!r}: give CPU numbers, e.g. 1, 0,2 or 0-3")
    return frozenset(cpus)


def pin_to_cpus(cpus: frozenset[int], pid: int | None = None) -> None:
    """Runs every thread of this process (or of process ``pid``), and every thread it starts
    later, on ``cpus`` only.

    A node's throughput is bounded by its GIL, which its threads hand to one another several
    times per call (the gRPC poll thread, the handler, the group commit). On one CPU a
    handoff is a switch on a core whose caches are warm; across CPUs it wakes a thread on
    another core, which costs far more (an inter-processor interrupt, dearer still on a VM).
    Measured with benchmarks/node_latency.py: one CPU takes a node's context switches per
    durable Observe from 28 to 12 and its durable writes per second up by 40%. Threads started
    later inherit the mask of the thread that starts them, so pin before starting the node.
    """
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise ConfigError(
            f"--cpus {','.join(map(str, sorted(cpus)))}: this process may run only on CPUs "
            f"{','.join(map(str, sorted(allowed)))}"
        )
    _each_thread(lambda tid: os.sched_setaffinity(tid, cpus), pid)


def schedule_as_batch() -> None:
    """Runs every thread of this process, and every thread it starts later, under Linux's
    SCHED_BATCH policy: a thread woken by another does not preempt it.

    A node's threads hand the GIL to one another several times per call. Under the default
    policy a woken thread preempts the thread that woke it, finds the GIL still held by that
    thread, and sleeps again: two switches where one would do (a group commit's followers, each
    released by the leader, pay this on every write). Under SCHED_BATCH the woken thread runs
    once its waker blocks, and takes the GIL at once. Measured on one CPU with 8 writers
    (benchmarks/RESULTS.md, eighth session): a durable Observe's context switches fell from
    12.7 to 7.5, and the node served about 7% more of them (a bare gRPC server gains about
    6%). The cost is the same rule towards other processes: the node's threads no longer preempt
    them on waking, so give the node a CPU of its own (--cpus). Threads inherit the policy of
    the thread that starts them, so set it before starting the node.
    """
    try:
        _each_thread(lambda tid: os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0)))
    except PermissionError as exc:
        raise ConfigError(
            f"--sched-batch: this process may not change its scheduling policy ({exc})"
        ) from exc


def _each_thread(apply: Callable[[int], None], pid: int | None = None) -> None:
    """Calls ``apply`` with the id of every thread of this process (or of process ``pid``)."""
    for tid in os.listdir(f"/proc/{'self' if pid is None else pid}/task"):
        try:
            apply(int(tid))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


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
