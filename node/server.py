"""Server bootstrap: ports, health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

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
from selfmodel.v1 import admin_pb2, admin_pb2_grpc, selfmodel_pb2, selfmodel_pb2_grpc

from node import metrics
from node.decoding import StrictDecodingInterceptor
from node.engine import Engine
from node.policy import PolicyBook
from node.servicer import AdminServicer, Principal, SelfModelServicer, identify_by_header
from node.store import Store
from node.validation import Limits

log = logging.getLogger("selfmodel.node")

SERVICES = ("selfmodel.v1.SelfModel", "selfmodel.v1.Admin")


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
    policies: PolicyBook = field(default_factory=PolicyBook)
    limits: Limits = field(default_factory=Limits)
    max_watchers: int = 256
    max_message_bytes: int = 4 * 1024 * 1024
    grace_s: float = 10.0
    # Set by the security layer: resolves a call's principal (None: development, x-agent-id).
    identify: Callable[[grpc.ServicerContext, Limits], Principal] | None = None


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
        self.engine.close_watches()
        self.server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("node %s stopped", self.config.name)


def start(config: NodeConfig) -> RunningNode:
    host, port = split_address(config.listen)
    if config.identify is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve {config.listen} without credentials: without a token file a node "
            "binds loopback only (127.0.0.1 or ::1); pass a token file to serve other addresses "
            "(selfmodel node --tokens FILE; create tokens with `selfmodel token create`)"
        )
    if config.identify is None:
        log.warning(
            "AUTHENTICATION IS OFF: node %s trusts the x-agent-id header; loopback only, "
            "for local development",
            config.name,
        )
    store = Store(
        config.data_dir, config.name, sync=config.fsync, on_commit=metrics.record_commit
    )
    engine = Engine(store, config.policies, max_watchers=config.max_watchers)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_watchers + 64, thread_name_prefix="rpc"),
        interceptors=[metrics.ServerMetricsInterceptor(), StrictDecodingInterceptor()],
        options=options,
        maximum_concurrent_rpcs=config.max_watchers + 1024,
    )
    identify = config.identify or identify_by_header
    selfmodel_pb2_grpc.add_SelfModelServicer_to_server(
        SelfModelServicer(engine, config.limits, identify, domain=config.domain), server
    )
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(engine, lambda: node_status(config, engine), identify, config.limits), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        selfmodel_pb2.DESCRIPTOR.services_by_name["SelfModel"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(config.listen)
    if bound == 0:
        store.close()
        raise ConfigError(f"cannot listen on {config.listen}")
    server.start()
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    metrics_server, metrics_port = None, None
    metrics.watch_store(store.size_bytes, store.estimate_subjects)
    if config.metrics_listen:
        mhost, mport = split_address(config.metrics_listen)
        metrics_server, _ = start_http_server(mport, addr=mhost)
        metrics_port = metrics_server.server_port
    return RunningNode(
        config, server, engine, store, health_servicer, bound, metrics_port, metrics_server
    )


def node_status(config: NodeConfig, engine: Engine) -> admin_pb2.NodeStatus:
    return admin_pb2.NodeStatus(
        node=config.name,
        domain=config.domain,
        actor=engine.actor,
        incarnation=engine.store.incarnation,
        subjects=engine.store.estimate_subjects(),
        outbox_seq=engine.store.outbox_seq,
        serving=True,
    )


def serve(config: NodeConfig) -> None:
    """Runs a node until SIGTERM or SIGINT, then shuts it down gracefully."""
    node = start(config)
    metrics_at = f" metrics http://{split_address(config.metrics_listen or ':0')[0]}:{node.metrics_port}/metrics" if node.metrics_port else ""
    print(f"selfmodel node {config.name} listening on {node.address}{metrics_at}", flush=True)
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down node %s", signum, config.name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    node.stop()
    sys.stdout.flush()
