"""Local clusters of real node processes, for the tests and the benchmarks (not installed).

Every node runs as its own `selfmodel node` process (started by federation.processes) on free
loopback ports; with proxies on, each directed link between two nodes goes through a FaultProxy
so a test can partition, stall, delay or cut it. Everything started here is stopped by
``stop()`` (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from federation import processes
from federation.certs import channel_credentials, create_cluster_certs
from federation.client import Client
from node.peers import PeerAuth, create_secret, read_secrets
from selfmodel.channels import agent_channel_credentials, open_channel
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from sync.codec import state_from_proto, subject_to_proto
from sync.crdt import SubjectState, merge
from sync.observation import Subject
from sync.settings import SyncSettings
from tests.faultproxy import FaultProxy, Mode

START_TIMEOUT_S = processes.START_TIMEOUT_S


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    address: str,
    timeout_s: float = START_TIMEOUT_S,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    with open_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"node at {address} not healthy after {timeout_s}s")
            time.sleep(0.05)


@dataclass
class NodeProcess:
    """One `selfmodel node` process; restartable on the same data directory and port."""

    name: str
    data_dir: Path
    args: Sequence[str] = ()
    port: int = 0
    cluster_file: Path | None = None
    proc: subprocess.Popen[str] | None = None
    address: str = ""
    metrics_port: int | None = None
    credentials: grpc.ChannelCredentials | None = None  # to reach a node serving TLS
    # The checkout whose code (and generated contracts) the node runs; None: this process's
    # working directory and import path.
    cwd: Path | None = None
    # Set in the node's environment over this process's.
    env: Mapping[str, str] = field(default_factory=dict)
    # Runs the node under another command, as an operator may (``taskset -c 1``, ``chrt``).
    prefix: Sequence[str] = ()
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        return processes.node_command(
            self.name,
            cluster_file=self.cluster_file,
            data_dir=self.data_dir,
            listen=f"127.0.0.1:{self.port}",
            args=self.args,
            prefix=self.prefix,
        )

    def start(self) -> NodeProcess:
        self.launch()
        return self.await_started()

    def launch(self) -> None:
        """Starts the process; await_started then waits until it serves."""
        env = dict(self.env)
        if self.cwd is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.cwd / "protos"), str(self.cwd)])
        self.proc = processes.spawn(self.command(), self.log_path, env, cwd=self.cwd)

    def await_started(self) -> NodeProcess:
        assert self.proc is not None
        listening = processes.await_listening(self.proc, START_TIMEOUT_S)
        if listening is None:
            self.kill()
            raise RuntimeError(f"node {self.name} did not start:\n{self.log()}")
        self.address = listening.address
        self.port = int(self.address.rsplit(":", 1)[1])
        self.metrics_port = listening.metrics_port
        wait_healthy(self.address, credentials=self.credentials)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return None
        [code] = processes.stop([self.proc], timeout_s)
        self._close()
        return code

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def metrics(self, timeout_s: float = 5.0) -> str:
        """The node's Prometheus exposition text (GET /metrics)."""
        assert self.metrics_port is not None, f"node {self.name} serves no metrics"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return str(reply.read().decode())

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def start_with_fresh_ports(make: Callable[[int], LocalCluster], attempts: int = 3) -> LocalCluster:
    """Starts ``make(attempt)``, again with fresh ports when another process took one of its free
    ports before a node could bind it (ports are picked first, then the nodes start)."""
    for attempt in range(1, attempts + 1):
        try:
            return make(attempt).start()  # start() stops what it started when it fails
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts:
                raise
            print("a free port was taken before a node bound it; again with new ports", flush=True)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_cluster(root: Path, names: tuple[str, ...], **kwargs: Any) -> Iterator[LocalCluster]:
    """A ``LocalCluster`` of ``names`` under ``root`` (``kwargs``: its settings), started with
    fresh ports if need be (start_with_fresh_ports) and stopped on leaving."""
    made = start_with_fresh_ports(lambda n: LocalCluster(root / f"c{n}", names, **kwargs))
    try:
        yield made
    finally:
        made.stop()


def policies_toml(policies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``[policies.<section>]`` tables of scalars as TOML lines (``{"default": {...}}``), for a
    cluster file or a node's --policies file."""
    lines = []
    for section, fields in policies.items():
        lines += [f"[policies.{section}]", *(f"{k} = {v!r}" for k, v in fields.items())]
    return lines


def _toml(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


# The [cluster.sync] settings LocalCluster gives its nodes unless told otherwise: faster
# anti-entropy rounds, retries and run claims than a deployed node's, so tests converge soon.
TEST_SYNC = {"anti_entropy_s": 2.0, "backoff_max_s": 1.0, "claim_wait_s": 3.0}


def node_sync_defaults() -> dict[str, float]:
    """TEST_SYNC's settings at the node's own defaults: a benchmark measures a cluster as
    deployed, so it passes these to LocalCluster."""
    defaults = SyncSettings()
    return {name: getattr(defaults, name) for name in TEST_SYNC}


class LocalCluster:
    """N nodes with full replication, each directed link behind a fault proxy."""

    def __init__(
        self,
        root: Path,
        names: Sequence[str] = ("sales", "support", "billing"),
        *,
        sync: dict[str, Any] | None = None,
        proxies: bool = True,
        fsync: bool = False,
        max_clock_offset_ms: int = 60_000,
        tls: bool = False,
        agents_tls: bool = False,
        node_args: Mapping[str, Sequence[str]] | None = None,
        node_prefix: Mapping[str, Sequence[str]] | None = None,
        policies: Mapping[str, Mapping[str, Any]] | None = None,
        tokens: Path | None = None,
        peer_secret: bool | None = None,
        peer_ports: bool = False,
        limits: Mapping[str, Any] | None = None,
        learning: Mapping[str, Any] | None = None,
    ) -> None:
        """``node_args``: more ``selfmodel node`` arguments for the nodes named (``--no-fsync``);
        ``node_prefix``: a command to run those nodes under (``taskset -c 1``).

        ``tokens``: the token file every node authenticates agents with ([cluster.auth]);
        ``peer_secret``: the nodes prove their names to each other with a secret created under
        ``root`` (default: with tokens, which need peer authentication, and without TLS);
        ``peer_ports``: Sync on a port of its own per node without TLS too (always with TLS).

        ``limits``: the cluster file's ``[cluster.limits]`` (``{"max_watchers": 3}``);
        ``learning``: its ``[cluster.learning]`` (``{"enabled": True, "window": 5}``).

        ``policies``: the cluster file's ``[policies.<section>]`` tables of scalars
        (``{"default": {"half_life_days": 0}}``).
        """
        if agents_tls and not tls:
            raise ValueError("agents_tls needs tls (the nodes' certificates)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in names}
        # With TLS, Sync has its own port per node (mutual TLS); without, it shares the agents'
        # unless asked otherwise.
        own = tls or peer_ports
        self.peer_ports = {name: free_port() for name in names} if own else dict(self.ports)
        self.certs = root / "certs" if tls else None
        if self.certs is not None:
            create_cluster_certs(self.certs, list(names))
        if peer_secret is None:
            peer_secret = tokens is not None and not tls
        self.peer_secret = root / "peer.secret" if peer_secret else None
        if self.peer_secret is not None and not self.peer_secret.exists():
            create_secret(self.peer_secret)
        self.proxies: dict[tuple[str, str], FaultProxy] = {}
        if proxies:
            for a in names:
                for b in names:
                    if a != b:
                        self.proxies[(a, b)] = FaultProxy(("127.0.0.1", self.peer_ports[b]))
        settings = {**TEST_SYNC, **(sync or {})}
        lines = [
            "[cluster]",
            f'data = "{root}"',
            f"fsync = {'true' if fsync else 'false'}",
            "[cluster.sync]",
            *(f"{k} = {v!r}" for k, v in settings.items()),
        ]
        given = {"max_clock_offset_ms": max_clock_offset_ms, **(limits or {})}
        lines += ["[cluster.limits]", *(f"{k} = {v!r}" for k, v in given.items())]
        if learning is not None:
            lines += ["[cluster.learning]", *(f"{k} = {_toml(v)}" for k, v in learning.items())]
        lines += policies_toml(policies or {})
        if tokens is not None or self.peer_secret is not None:
            lines.append("[cluster.auth]")
            if tokens is not None:
                lines.append(f'tokens = "{tokens}"')
            if self.peer_secret is not None:
                lines.append(f'peer_secret = "{self.peer_secret}"')
        if self.certs is not None:
            lines += [
                "[cluster.tls]",
                f'ca = "{self.certs}/ca.pem"',
                f'cert = "{self.certs}/{{node}}.pem"',
                f'key = "{self.certs}/{{node}}.key"',
                f"agents = {'true' if agents_tls else 'false'}",
            ]
        for name in names:
            lines += [
                "[[node]]",
                f'name = "{name}"',
                f'address = "127.0.0.1:{self.ports[name]}"',
                f'peer_address = "127.0.0.1:{self.peer_ports[name]}"',
                'metrics = "127.0.0.1:0"',
            ]
            routes = {b: p.address for (a, b), p in self.proxies.items() if a == name}
            if routes:
                lines.append(
                    "routes = {" + ", ".join(f'{k} = "{v}"' for k, v in routes.items()) + "}"
                )
        self.file = root / "cluster.toml"
        self.file.write_text("\n".join(lines) + "\n")
        # What agents (and this harness) present to reach the nodes: their CA under agents TLS.
        self.agent_credentials = (
            agent_channel_credentials(self.certs / "ca.pem")
            if agents_tls and self.certs is not None
            else None
        )
        self.nodes = {
            name: NodeProcess(
                name,
                root / name,
                args=tuple((node_args or {}).get(name, ())),
                prefix=tuple((node_prefix or {}).get(name, ())),
                port=self.ports[name],
                cluster_file=self.file,
                credentials=self.agent_credentials,
            )
            for name in names
        }

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Starts every node at once, as a cluster comes up (nodes claim their runs from each
        other at start), then waits until each serves."""
        try:
            for node in self.nodes.values():
                node.launch()
            for node in self.nodes.values():
                node.await_started()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        for proxy in self.proxies.values():
            proxy.close()

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def client(self, name: str, agent: str, tenant: str = "acme", **kwargs: Any) -> Client:
        kwargs.setdefault("credentials", self.agent_credentials)
        return Client(self.address(name), agent=agent, tenant=tenant, **kwargs)

    # -- faults ----------------------------------------------------------------------------

    def links(self, a: str, b: str, mode: Mode, delay_s: float = 0.0) -> None:
        """Sets both directions between a and b."""
        for pair in ((a, b), (b, a)):
            self.proxies[pair].set(mode, delay_s)

    def partition(self, *groups: Iterable[str], mode: Mode = "cut") -> None:
        side = {name: i for i, g in enumerate(groups) for name in g}
        for (a, b), proxy in self.proxies.items():
            proxy.set(mode if side.get(a, -1) != side.get(b, -2) else "pass")

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.set("pass")

    # -- convergence -----------------------------------------------------------------------

    def peer_channel(self, name: str, as_node: str) -> grpc.Channel:
        """A channel to ``name``'s Sync service, presenting ``as_node``'s certificate under TLS."""
        creds = None
        if self.certs is not None:
            creds = channel_credentials(
                self.certs / "ca.pem", self.certs / f"{as_node}.pem", self.certs / f"{as_node}.key"
            )
        return open_channel(f"127.0.0.1:{self.peer_ports[name]}", creds)

    def peer_metadata(self, as_node: str) -> tuple[tuple[str, str], ...]:
        """The metadata of a Sync call from ``as_node``: its name, and its peer token when the
        cluster has a peer secret."""
        secrets = read_secrets(self.peer_secret) if self.peer_secret is not None else ()
        return PeerAuth(as_node, frozenset(), secrets=secrets).metadata()

    def bucket_hashes(self, name: str) -> list[bytes]:
        other = next(n for n in self.nodes if n != name)
        with self.peer_channel(name, other) as channel:
            reply = sync_pb2_grpc.SyncServiceStub(channel).GetBuckets(
                sync_pb2.GetBucketsRequest(), timeout=5.0, metadata=self.peer_metadata(other)
            )
        return list(reply.hashes)

    def subject_state(self, name: str, subject: Subject) -> SubjectState:
        """The replicated state ``name`` holds of ``subject`` (an anti-entropy exchange that
        offers it nothing)."""
        other = next(n for n in self.nodes if n != name)
        offer = sync_pb2.SubjectState()
        subject_to_proto(subject, offer.subject)
        with self.peer_channel(name, other) as channel:
            reply = sync_pb2_grpc.SyncServiceStub(channel).ExchangeStates(
                sync_pb2.ExchangeStatesRequest(states=[offer]),
                timeout=5.0,
                metadata=self.peer_metadata(other),
            )
        return fold_states(subject, map(state_from_proto, reply.states))

    def converged(self, names: Iterable[str] | None = None) -> bool:
        hashes = [self.bucket_hashes(n) for n in (names or self.nodes)]
        return all(h == hashes[0] for h in hashes)

    def wait_converged(self, timeout_s: float = 30.0, names: Iterable[str] | None = None) -> float:
        """Seconds until every node holds identical digests; TimeoutError otherwise."""
        started = time.monotonic()
        chosen = list(names or self.nodes)
        while True:
            try:
                if self.converged(chosen):
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"nodes {chosen} did not converge within {timeout_s}s")
            time.sleep(0.1)


def fold_states(subject: Subject, parts: Iterable[SubjectState]) -> SubjectState:
    """The state of a subject sent in parts (sync.bounds.split)."""
    state = SubjectState(subject)
    for part in parts:
        state = merge(state, part)
    return state
