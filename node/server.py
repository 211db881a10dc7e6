"""Server bootstrap: the services wired over one engine and store, health, the run's actor,
graceful shutdown. The configuration's checks are node.config's, the listeners node.listeners'."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node import connections, groups, listeners, metrics
from node.adminservice import AdminServicer
from node.admission import WriteAdmission
from node.clock import start_clock
from node.config import ConfigError, NodeConfig, admit, split_address
from node.decoding import StrictDecoding
from node.engine import Engine
from node.governor import Governor
from node.identity import identify_by_header
from node.interceptors import Chain, Gate, SerializedReplies, wrapping
from node.learning import Learning
from node.peers import PeerAuth, refusing
from node.replication import (
    PeerServicer,
    build_replicator,
    claim_run,
)
from node.servicer import SelfModelServicer
from node.status import node_status
from node.store import Store
from node.store.diskwatch import DiskWatch
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.sync.v1 import sync_pb2_grpc
from selfmodel.v1 import selfmodel_pb2, selfmodel_pb2_grpc
from sync.replicator import Replicator

log = logging.getLogger("selfmodel.node")

SERVICES = (
    "selfmodel.v1.SelfModelService",
    "selfmodel.admin.v1.AdminService",
    "selfmodel.sync.v1.SyncService",
)


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
    peer_servicer: PeerServicer | None = None
    peer_port: int | None = None
    peer_server: grpc.Server | None = None  # serves Sync on peer_listen
    disk_watch: DiskWatch | None = None
    _metrics_server: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _stop_token_watch: Callable[[], None] | None = None
    learning: Learning | None = None  # learned reliability, when enabled

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
        if self.peer_servicer is not None:
            self.peer_servicer.close()
        self.engine.close_watches()
        grace = self.config.grace_s if grace_s is None else grace_s
        stopped = [s.stop(grace) for s in (self.server, self.peer_server) if s is not None]
        for done in stopped:
            done.wait()
        if self.disk_watch is not None:
            self.disk_watch.stop()
        if self.learning is not None:
            self.learning.stop()
            _save_learning(self.config.name, self.learning)
        try:  # the held records of members changed since the last checkpoint (node.groups)
            self.engine.groups.close()
        except Exception as exc:
            log.info("node %s: the last roll-up checkpoint failed: %s", self.config.name, exc)
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("node %s stopped", self.config.name)


def _save_learning(name: str, learning: Learning) -> None:
    """The learned outcomes saved for the next start (node.savedlearning), every writer
    stopped; a failure only costs that start its judging of every slot."""
    try:
        saved = learning.save()
    except Exception:
        log.exception("node %s: saving the learned outcomes failed", name)
        return
    if saved:
        log.info("node %s: learned outcomes saved (%d kept)", name, learning.kept())
    else:
        log.warning("node %s: learned outcomes not saved: the state changed meanwhile", name)


def start(config: NodeConfig) -> RunningNode:
    auth = admit(config)
    store = Store(
        config.data_dir,
        config.name,
        fsync=config.fsync,
        outbox=bool(config.peers),
        cache_mb=config.cache_mb,
        rocksdb_cache_mb=config.rocksdb_cache_mb,
    )
    clock = start_clock(config, store.hlc_high_water)
    limits = config.limits
    engine = Engine(
        store,
        config.policies.book,
        clock=clock,
        now_ms=clock.wall,
        max_watchers=config.max_watchers,
        subject_limits=config.subject_limits,
        members=config.members | {p.name for p in config.peers},
        max_handoff_lead=limits.max_handoff_lead,
        snapshot_cache_mb=config.snapshot_cache_mb,
    )
    governor = Governor(engine, config.policies)
    learning = start_learning(config, engine, store)
    # Until the node has decided its actor (below), only run claims, health and reflection.
    gate = Gate(
        f"node {config.name} is starting: it is asking its peers to vouch for its previous run",
        ("/selfmodel.sync.v1.SyncService/ClaimRun", "/grpc.health.v1.Health/", "/grpc.reflection."),
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
    server = listeners.grpc_server(config, held + 64, held + 1024, max_connections)
    services = wrapping(server, chain)
    identify = config.identify or identify_by_header
    selfmodel_pb2_grpc.add_SelfModelServiceServicer_to_server(
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
        engine.admit = WriteAdmission(replicator.admission, config.name).check
    peer_servicer = PeerServicer(
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
        peer_server = listeners.grpc_server(config, calls, calls, max_connections)
        peer_services = wrapping(peer_server, chain)
        sync_pb2_grpc.add_SyncServiceServicer_to_server(peer_servicer, peer_services)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, peer_services)
        wrong_port = refusing(
            config.name,
            "agents_port",
            f"node {config.name} serves Sync on its peers' port {config.peer_listen}, "
            "not on the agents' port",
        )
        sync_pb2_grpc.add_SyncServiceServicer_to_server(
            PeerServicer(engine, wrong_port, config.limits), services
        )
    else:
        sync_pb2_grpc.add_SyncServiceServicer_to_server(peer_servicer, services)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(
            engine,
            lambda: node_status(config, engine, replicator),
            identify,
            config.limits,
            governor,
            learning,
            config.domain,
        ),
        services,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = (
        selfmodel_pb2.DESCRIPTOR.services_by_name["SelfModelService"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, services)
    try:
        bound, peer_port = listeners.bind(server, peer_server, config)
    except ConfigError:
        store.close()
        raise
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
    threading.Thread(target=_load_groups, args=(engine,), name="groups", daemon=True).start()
    threading.Thread(target=_verify, args=(store,), name="verify", daemon=True).start()

    metrics.watch_store(
        store.size_bytes,
        store.estimate_subjects,
        lambda: store.context_entries_max,
        store.cache_bytes,
        store.memory_bytes,
        store.memtable_bytes,
    )
    metrics.watch_snapshots(lambda: engine.snapshots.cost_bytes, lambda: len(engine.snapshots))
    metrics_server, metrics_port = listeners.serve_metrics(config)
    if replicator is not None:
        replicator.start()
    if learning is not None:
        learning.start()
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
        peer_servicer,
        peer_port,
        peer_server,
        disk_watch,
        metrics_server,
        _stop_token_watch=stop_token_watch,
        learning=learning,
    )


def start_learning(config: NodeConfig, engine: Engine, store: Store) -> Learning | None:
    """Learned reliability, when enabled: every slot stored judged once (before the node takes
    writes or merges), then each change followed (node.learning)."""
    if not config.learning.enabled:
        return None
    learning = Learning(engine, config.learning)
    if learning.restore():
        log.info(
            "node %s: learned reliability on, the outcomes saved at the last stop read back "
            "(judged from the state it holds)",
            config.name,
        )
    else:
        count = learning.load(store.subjects())
        log.info(
            "node %s: learned reliability on, %d subject(s) judged at start", config.name, count
        )
    engine.listeners.append(learning.follow)
    engine.book_listeners.append(learning.reconfigure)
    metrics.watch_learning(learning.kept)
    return learning


def _load_groups(engine: Engine) -> None:
    """Loads every stored group's memberships and roll-up once the node serves (node.groups):
    a read of a group before that loads that group first, so none waits for the rest."""
    started = time.monotonic()
    try:
        count = engine.groups.load_every()
    except Exception as exc:  # the store closed meanwhile, say: reads still load what they need
        log.info("node %s: loading the groups stopped: %s", engine.node, exc)
        return
    log.info(
        "node %s: %d group(s) loaded in %.2f s", engine.node, count, time.monotonic() - started
    )
    try:
        engine.groups.run_checkpoints(groups.CHECKPOINT_S)
    except Exception as exc:  # the store closed meanwhile: the stop writes the last one
        log.info("node %s: roll-up checkpoints stopped: %s", engine.node, exc)


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


# NodeConfig and ConfigError are the types of start's signature, so its callers find them here too.
__all__ = ["SERVICES", "ConfigError", "NodeConfig", "RunningNode", "decide_actor", "serve", "start"]
