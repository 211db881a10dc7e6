#!/usr/bin/env python3
"""Latency and throughput of one selfmodel node beside a bare gRPC echo server, in one run.

What runs (all on loopback, data in a temporary directory that is removed afterwards):

- two real ``selfmodel node`` processes: one with fsync on (durable writes, group commit) and
  one with ``--no-fsync`` (WAL on, no fsync);
- a bare gRPC echo server in its own process: a threaded ``grpc.server`` configured like the
  node's, with generic bytes-in/bytes-out handlers (no protobuf, no interceptor) that answer
  with a reply captured from the node, so the message sizes are exactly the node's. It is the
  floor: what a Python gRPC server costs before it does any work.

Node and echo run on the same one CPU (``--cpus``, default: the last CPU; the node under
``taskset``, as docs/operating.md shows an operator pinning a node); ``--cpus none`` lets both
run on any CPU.

What is measured, each sequentially (1 client) and with concurrent clients:

- ``GetSelfModel`` of a subject holding 50 beliefs (seeded by 50 observations with distinct
  keys, each with evidence), against the echo of a same-sized reply;
- ``Observe`` with fsync on and off, against the echo of an ``ObserveResponse``-sized reply.
  Concurrent writers write different subjects (many users, as in production), so they share
  fsyncs through the node's group commit rather than queueing on one subject's lock.

Clients are separate worker processes (one gRPC channel each, one call in flight each), so one
client process's GIL is not what is measured. Every client sends pre-serialized requests and
does not decode replies, for the node and the echo alike: the figures compare servers.

    python -m benchmarks.node_latency            # about 2 minutes
    python -m benchmarks.node_latency --quick    # about 15 seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from benchmarks.nodeprofile import py_spy, record_command

ECHO_SERVICE = "bench.v1.Echo"
GET_METHOD = "/selfmodel.v1.SelfModelService/GetSelfModel"
OBSERVE_METHOD = "/selfmodel.v1.SelfModelService/Observe"
ECHO_GET_METHOD = f"/{ECHO_SERVICE}/SelfModelSized"
ECHO_OBSERVE_METHOD = f"/{ECHO_SERVICE}/ObserveSized"
TENANT = "bench"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# As node.server configures its threaded server (max_watchers=256 by default).
SERVER_WORKERS = 256 + 64
SERVER_MAX_CONCURRENT_RPCS = 256 + 1024
REQUESTS_PER_WRITER = 512

TARGETS = {
    "get_p50": 1.3,  # GetSelfModel p50 / echo p50, at most
    "get_throughput": 0.8,  # GetSelfModel throughput / echo throughput, at least
    "observe_throughput": 0.5,  # durable Observe throughput (concurrent) / echo, at least
}


# -- client workers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One worker's share of a scenario: warm-up calls, then a closed loop of measured calls."""

    target: str
    method: str
    requests: Sequence[bytes]
    metadata: tuple[tuple[str, str], ...]
    warmup_calls: int
    max_calls: int
    timeout_s: float


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    late_s: float = 0.0  # how long after start_at this worker made its first call
    ended_at: float = 0.0
    cpu_s: float = 0.0  # this client process's CPU time during the measured calls


def _worker(conn: Connection) -> None:
    """A client process: runs tasks sent by the parent, one channel per target, kept warm.

    Per task: receive it, make the warm-up calls, answer "ready", receive (start_at, stop_at)
    (time.monotonic(), which is system-wide on Linux), call in a closed loop, send the outcome.
    """
    channels: dict[str, grpc.Channel] = {}
    try:
        while True:
            task: Task | None = conn.recv()
            if task is None:
                return
            channel = channels.get(task.target)
            if channel is None:
                channel = grpc.insecure_channel(task.target, options=CHANNEL_OPTIONS)
                channels[task.target] = channel
            conn.send(_run(channel, task, conn))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        for channel in channels.values():
            channel.close()


def _run(channel: grpc.Channel, task: Task, conn: Connection) -> Outcome:
    call = channel.unary_unary(task.method, None, None)  # no (de)serializers: bytes in and out
    requests, n = task.requests, len(task.requests)
    out = Outcome()
    md, timeout = task.metadata, task.timeout_s
    for i in range(task.warmup_calls):
        with contextlib.suppress(grpc.RpcError):
            call(requests[i % n], timeout=timeout, metadata=md)
    conn.send("ready")
    start_at, stop_at = conn.recv()
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    out.late_s = max(0.0, time.monotonic() - start_at)
    cpu0 = time.process_time()
    latencies, clock, i = out.latencies, time.perf_counter, 0
    while i < task.max_calls and time.monotonic() < stop_at:
        t0 = clock()
        try:
            call(requests[i % n], timeout=timeout, metadata=md)
        except grpc.RpcError as exc:
            out.errors += 1
            if not out.first_error:
                out.first_error = f"{exc.code().name}: {exc.details()}"
        else:
            latencies.append(clock() - t0)
        i += 1
    out.ended_at = time.monotonic()
    out.cpu_s = time.process_time() - cpu0
    return out


class ClientPool:
    """Persistent client processes (spawned, so no gRPC state is inherited through fork)."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._busy = 0
        for _ in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def send(self, tasks: Sequence[Task]) -> None:
        if len(tasks) > len(self._conns):
            raise ValueError(f"{len(tasks)} tasks for {len(self._conns)} client processes")
        self._busy = len(tasks)
        for conn, task in zip(self._conns, tasks, strict=False):
            conn.send(task)
        for conn in self._conns[: self._busy]:
            if conn.recv() != "ready":
                raise RuntimeError("a client process did not get ready")

    def start(self, start_at: float, stop_at: float) -> None:
        for conn in self._conns[: self._busy]:
            conn.send((start_at, stop_at))

    def collect(self) -> list[Outcome]:
        return [conn.recv() for conn in self._conns[: self._busy]]

    def close(self) -> None:
        """Ends every client process; idempotent."""
        if not self._procs:
            return
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        self._procs, self._conns = [], []


# -- echo server ---------------------------------------------------------------------------


def _serve_echo(
    replies: dict[str, bytes], cpus: frozenset[int], batch: bool, conn: Connection
) -> None:
    """The floor: a threaded grpc.server like the node's, answering fixed bytes, no protobuf.

    On ``cpus`` when given and with ``batch`` under SCHED_BATCH, as ``operator_prefix`` runs the
    node (set before any thread starts, so every thread inherits them)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if batch:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    server = threaded_server()

    def answer(reply: bytes) -> Any:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: reply)

    handlers = {name: answer(reply) for name, reply in replies.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),))
    serve_until_told(server, conn)


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset writes it: ``1``, ``0,2``, ``0-3``."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last if sep else first) + 1))
    except ValueError:
        raise ValueError(f"--cpus {text!r}: give CPU numbers, e.g. 1, 0,2 or 0-3") from None
    if not cpus or min(cpus) < 0:
        raise ValueError(f"--cpus {text!r}: give CPU numbers, e.g. 1, 0,2 or 0-3")
    return frozenset(cpus)


def operator_prefix(cpus: frozenset[int], batch: bool = False) -> tuple[str, ...]:
    """The command prefix an operator pins a node with: ``taskset`` to ``cpus``, ``chrt`` for
    SCHED_BATCH (docs/operating.md)."""
    prefix = ("taskset", "-c", ",".join(map(str, sorted(cpus)))) if cpus else ()
    return (*prefix, "chrt", "--batch", "0") if batch else prefix


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of process ``pid`` on ``cpus``; threads it starts later inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def threaded_server() -> grpc.Server:
    """A threaded grpc.server configured as the node configures its own (node.listeners)."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS, thread_name_prefix="rpc"),
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=SERVER_MAX_CONCURRENT_RPCS,
    )


def serve_until_told(server: grpc.Server, conn: Connection) -> None:
    """Serves on a free loopback port, sends (pid, port) to the parent, stops when it says so."""
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send((os.getpid(), port))
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        conn.recv()
    server.stop(0).wait()


class ServerProcess:
    """A floor server in a spawned process: ``target(*args, conn)`` serves, sends (pid, port)
    through ``conn`` and stops when the parent sends anything (or closes the pipe)."""

    def __init__(self, target: Any, args: tuple[Any, ...], what: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(*args, child), daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(30):
            self._proc.terminate()
            raise RuntimeError(f"{what} did not start within 30 s")
        self.pid, port = self._conn.recv()
        self.address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(self.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()


class EchoServer(ServerProcess):
    def __init__(
        self, replies: dict[str, bytes], cpus: frozenset[int] = frozenset(), batch: bool = False
    ) -> None:
        super().__init__(_serve_echo, (replies, cpus, batch), "echo server")


# -- workload ------------------------------------------------------------------------------

CONTEXTS = (
    "purchase_motivation",
    "communication_style",
    "budget",
    "product_usage",
    "support_history",
)
AGENTS = ("sales_agent", "support_agent", "billing_agent", "onboarding_agent", "success_agent")


def seed_requests(subject_id: str, count: int) -> list[Any]:
    """``count`` observations of one subject with distinct keys, each with evidence."""
    from selfmodel.v1 import model_pb2, selfmodel_pb2

    requests = []
    for i in range(count):
        context = CONTEXTS[i % len(CONTEXTS)]
        req = selfmodel_pb2.ObserveRequest(
            subject=model_pb2.Subject(
                tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=subject_id
            ),
            context=context,
            key=f"fact-{i:02d}",
            statement=f"Observed fact number {i} about how this user approaches "
            f"{context.replace('_', ' ')}",
            confidence=0.6 + (i % 8) * 0.05,
        )
        ev = req.evidence.add(
            kind=model_pb2.EVIDENCE_KIND_MESSAGE,
            ref=f"crm://conversation/{1000 + i}",
            quote=f"The user said something that supports fact {i} in a real conversation",
        )
        ev.time.FromMilliseconds(1_700_000_000_000 + i * 60_000)
        requests.append(req)
    return requests


def observe_requests(run: str, writer: int, count: int) -> list[bytes]:
    """One writer's Observe requests: each about another user, so writers never share subjects."""
    from selfmodel.v1 import model_pb2, selfmodel_pb2

    out = []
    for j in range(count):
        req = selfmodel_pb2.ObserveRequest(
            subject=model_pb2.Subject(
                tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=f"{run}-w{writer}-u{j:04d}"
            ),
            context="purchase_motivation",
            key="primary_driver",
            statement="Motivated by quick time-to-value",
            confidence=0.82,
        )
        req.evidence.add(
            kind=model_pb2.EVIDENCE_KIND_CALL,
            ref="crm://call/4411",
            quote="we need this live before Q3",
        )
        out.append(req.SerializeToString())
    return out


def agent_metadata(i: int) -> tuple[tuple[str, str], ...]:
    return (("x-agent-id", f"bench_agent_{i}"),)


# -- measurement ---------------------------------------------------------------------------


@dataclass
class Sample:
    """One scenario measured once (one round)."""

    latencies: list[float]
    errors: int
    seconds: float
    server_cpu_s: float
    server_switches: int  # context switches of the server process's threads
    client_cpu_s: float
    commits: tuple[float, float, float] | None  # (group commits, mutations, seconds) in the round
    late_s: float
    first_error: str


@dataclass
class Figures:
    """One scenario over every round: latencies pooled, calls/s over the summed time."""

    name: str
    server: str
    clients: int
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    server_cpu_us: float  # server process CPU time per call, all threads
    server_switches: float  # the server's context switches per call, all threads
    client_cpu_us: float  # client processes' CPU time per call
    late_s: float
    writes_per_commit: float | None = None  # the node's group commit: mutations per batch
    commit_ms: float | None = None  # mean time to write (and sync) one group commit
    first_error: str = ""

    @classmethod
    def of(cls, name: str, server: str, clients: int, samples: Sequence[Sample]) -> Figures:
        latencies = sorted(x for sample in samples for x in sample.latencies)
        calls = len(latencies)
        seconds = sum(sample.seconds for sample in samples)
        commits = [sample.commits for sample in samples if sample.commits is not None]
        groups = sum(c[0] for c in commits)

        def per_call(total_s: float) -> float:
            return total_s / calls * 1e6 if calls else float("nan")

        return cls(
            name=name,
            server=server,
            clients=clients,
            calls=calls,
            errors=sum(sample.errors for sample in samples),
            seconds=seconds,
            p50_ms=percentile(latencies, 0.50) * 1e3,
            p99_ms=percentile(latencies, 0.99) * 1e3,
            mean_ms=sum(latencies) / calls * 1e3 if calls else float("nan"),
            throughput=calls / seconds if seconds > 0 else 0.0,
            server_cpu_us=per_call(sum(sample.server_cpu_s for sample in samples)),
            server_switches=(
                sum(sample.server_switches for sample in samples) / calls if calls else math.nan
            ),
            client_cpu_us=per_call(sum(sample.client_cpu_s for sample in samples)),
            late_s=max(sample.late_s for sample in samples),
            writes_per_commit=sum(c[1] for c in commits) / groups if groups else None,
            commit_ms=sum(c[2] for c in commits) / groups * 1e3 if groups else None,
            first_error=next((x.first_error for x in samples if x.first_error), ""),
        )


COMMIT_FIGURES = (
    "selfmodel_commit_groups_total",
    "selfmodel_commit_batches_total",
    "selfmodel_commit_seconds_sum",
)


@dataclass(frozen=True)
class Server:
    label: str
    pid: int
    address: str
    metrics_port: int | None = None


def scrape(metrics_port: int) -> dict[str, float]:
    """The unlabelled samples a node's metrics endpoint shows, by name (OSError if it cannot)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name and not name.startswith("#") and "{" not in name:
            samples[name] = float(value.split()[0])
    return samples


def commit_counts(metrics_port: int | None) -> tuple[float, float, float] | None:
    """(group commits, mutations committed, seconds spent committing) from the node's metrics."""
    if metrics_port is None:
        return None
    try:
        samples = scrape(metrics_port)
    except OSError:
        return None
    found = {name: samples[name] for name in COMMIT_FIGURES if name in samples}
    if len(found) != len(COMMIT_FIGURES):
        return None
    groups, batches, seconds = (found[name] for name in COMMIT_FIGURES)
    return groups, batches, seconds


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class Bench:
    pool: ClientPool
    duration_s: float
    warmup_calls: int
    max_calls: int
    timeout_s: float
    profiler: Profiler | None = None

    def measure(
        self,
        name: str,
        server: Server,
        method: str,
        requests_per_client: Sequence[Sequence[bytes]],
        profile: bool = False,
    ) -> Sample:
        tasks = [
            Task(
                target=server.address,
                method=method,
                requests=reqs,
                metadata=agent_metadata(i),
                warmup_calls=self.warmup_calls,
                max_calls=self.max_calls,
                timeout_s=self.timeout_s,
            )
            for i, reqs in enumerate(requests_per_client)
        ]
        self.pool.send(tasks)  # returns once every client has warmed up
        start_at = time.monotonic() + 0.05
        stop_at = start_at + self.duration_s
        recording = (
            self.profiler.record(name, server.pid, stop_at - time.monotonic())
            if profile and self.profiler is not None
            else contextlib.nullcontext()
        )
        with recording:
            self.pool.start(start_at, stop_at)
            time.sleep(max(0.0, start_at - time.monotonic()))
            cpu0, switches0 = process_cpu_s(server.pid), context_switches(server.pid)
            commits0 = commit_counts(server.metrics_port)
            time.sleep(max(0.0, stop_at - time.monotonic()))
            server_cpu = process_cpu_s(server.pid) - cpu0
            switches = context_switches(server.pid) - switches0
            outcomes = self.pool.collect()
            commits1 = commit_counts(server.metrics_port)
        commits = None
        if commits0 is not None and commits1 is not None:
            commits = (
                commits1[0] - commits0[0],
                commits1[1] - commits0[1],
                commits1[2] - commits0[2],
            )
        return Sample(
            latencies=[x for o in outcomes for x in o.latencies],
            errors=sum(o.errors for o in outcomes),
            seconds=max(o.ended_at for o in outcomes) - start_at,
            server_cpu_s=server_cpu,
            server_switches=switches,
            client_cpu_s=sum(o.cpu_s for o in outcomes),
            commits=commits,
            late_s=max(o.late_s for o in outcomes),
            first_error=next((o.first_error for o in outcomes if o.first_error), ""),
        )


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Context switches (voluntary and not) of every live thread of a process (Linux /proc).

    Each one a thread that gave up its CPU, mostly to wait for the GIL or for I/O: what
    pinning a node to one CPU cuts (docs/performance.md)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.rpartition(":")[2])
        except (OSError, ValueError):
            continue
    return total


class Profiler:
    """Samples the node with py-spy while a scenario runs (costs CPU: not a reference run)."""

    def __init__(self, out_dir: Path, fmt: str, rate: int, gil: bool) -> None:
        try:
            exe = py_spy()
        except FileNotFoundError as missing:
            raise SystemExit(f"--py-spy: {missing}") from missing
        self.exe, self.out_dir, self.fmt, self.rate, self.gil = exe, out_dir, fmt, rate, gil
        out_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def record(self, name: str, pid: int, seconds: float) -> Iterator[None]:
        suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[self.fmt]
        path = self.out_dir / f"{name.replace(' ', '_')}.{suffix}"
        cmd = record_command(self.exe, pid, self.rate, seconds, self.fmt, path)
        if self.gil:
            cmd.append("--gil")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            yield
        finally:
            try:
                _, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                print(f"  py-spy failed: {err.strip()[-400:]}", file=sys.stderr)
            else:
                print(f"  profile: {path}")


# -- report --------------------------------------------------------------------------------

HEADER = (
    f"{'scenario':<22} {'server':<13} {'clients':>7} {'calls':>7} {'err':>3} "
    f"{'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7} {'calls/s':>7} {'srv CPU':>8} {'cli CPU':>8} "
    f"{'srv cs':>7}"
)
UNITS = f"{'':<78} {'us/call':>8} {'us/call':>8} {'/call':>7}"


def _row(f: Figures) -> str:
    row = (
        f"{f.name:<22} {f.server:<13} {f.clients:>7} {f.calls:>7} {f.errors:>3} "
        f"{f.p50_ms:>7.3f} {f.p99_ms:>7.3f} {f.mean_ms:>7.3f} {f.throughput:>7.0f} "
        f"{f.server_cpu_us:>8.0f} {f.client_cpu_us:>8.0f} {f.server_switches:>7.1f}"
    )
    if f.writes_per_commit is not None:
        row += f"\n    group commit: {f.writes_per_commit:.1f} writes per batch written"
        if f.commit_ms is not None:
            row += f", {f.commit_ms:.2f} ms to write (and sync) a batch"
    if f.first_error:
        row += f"\n    first error: {f.first_error}"
    if f.late_s > 0.05:
        row += f"\n    note: a client started {f.late_s:.2f}s late"
    return row


@dataclass
class Ratio:
    name: str
    value: float
    target: str  # "" when informational
    passed: bool | None
    # The same ratio within each round: node and echo measured a minute or less apart, so the
    # spread shows how far the machine's drift moves the pooled value.
    rounds: tuple[float, ...] = ()


def with_rounds(pooled: list[Ratio], per_round: list[list[Ratio]]) -> list[Ratio]:
    return [
        dataclasses.replace(x, rounds=tuple(r[i].value for r in per_round))
        for i, x in enumerate(pooled)
    ]


def _rounds(x: Ratio) -> str:
    return " ".join(f"{v:.2f}" for v in x.rounds)


def ratios(fig: dict[str, Figures], clients: int) -> list[Ratio]:
    def r(a: str, b: str, attr: str) -> float:
        x, y = getattr(fig[a], attr), getattr(fig[b], attr)
        return float(x / y) if y else float("nan")

    c = f"{clients} clients"
    out = []
    for label, suffix in (("1 client", "seq"), (c, "conc")):
        v = r(f"get {suffix}", f"echo-get {suffix}", "p50_ms")
        t = TARGETS["get_p50"]
        out.append(Ratio(f"GetSelfModel p50 / echo p50, {label}", v, f"<= {t}", v <= t))
    for label, suffix in (("1 client", "seq"), (c, "conc")):
        v = r(f"get {suffix}", f"echo-get {suffix}", "throughput")
        t = TARGETS["get_throughput"]
        out.append(Ratio(f"GetSelfModel calls/s / echo calls/s, {label}", v, f">= {t}", v >= t))
    v = r("observe fsync conc", "echo-observe conc", "throughput")
    t = TARGETS["observe_throughput"]
    out.append(
        Ratio(f"durable Observe calls/s / echo calls/s, {clients} writers", v, f">= {t}", v >= t)
    )
    out.append(
        Ratio(
            "durable Observe calls/s / echo calls/s, 1 writer",
            r("observe fsync seq", "echo-observe seq", "throughput"), "", None,
        )
    )  # fmt: skip
    for label, suffix in (("1 writer", "seq"), (f"{clients} writers", "conc")):
        out.append(
            Ratio(
                f"no-fsync Observe calls/s / echo calls/s, {label}",
                r(f"observe no-fsync {suffix}", f"echo-observe {suffix}", "throughput"), "", None,
            )
        )  # fmt: skip
    for label, suffix in (("1 writer", "seq"), (f"{clients} writers", "conc")):
        out.append(
            Ratio(
                f"durable Observe p50 / echo p50, {label}",
                r(f"observe fsync {suffix}", f"echo-observe {suffix}", "p50_ms"), "", None,
            )
        )  # fmt: skip
    return out


def _ratio_row(x: Ratio) -> str:
    verdict = "" if x.passed is None else ("PASS" if x.passed else "MISS")
    return f"{x.name:<54} {x.value:>7.2f}   {x.target or 'info':<8} {verdict:<7} {_rounds(x)}"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def markdown(
    command: str, info: dict[str, str], notes: list[str], figures: list[Figures], rs: list[Ratio]
) -> str:
    lines = [
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {info['nproc']} CPUs, {info['cpu']}, {info['os']}  ",
        f"Python {info['python']}, grpcio {info['grpcio']}  ",
        f"Load average (1 min) at the start and the end: {info['load']}  ",
        f"Command: `{command}`",
        "",
        *[f"- {n}" for n in notes],
        "",
        "| scenario | server | clients | calls | errors | p50 ms | p99 ms | mean ms | calls/s "
        "| server CPU µs/call | client CPU µs/call | server context switches/call "
        "| writes per commit | ms per commit |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {f.server} | {f.clients} | {f.calls} | {f.errors} | {f.p50_ms:.3f} "
            f"| {f.p99_ms:.3f} | {f.mean_ms:.3f} | {f.throughput:.0f} | {f.server_cpu_us:.0f} "
            f"| {f.client_cpu_us:.0f} | {f.server_switches:.1f} "
            f"| {'' if f.writes_per_commit is None else f'{f.writes_per_commit:.1f}'} "
            f"| {'' if f.commit_ms is None else f'{f.commit_ms:.2f}'} |"
        )
    lines += [
        "",
        "| ratio | value (rounds pooled) | target | verdict | each round |",
        "|---|--:|---|---|---|",
    ]
    for x in rs:
        verdict = "" if x.passed is None else ("PASS" if x.passed else "MISS")
        lines.append(
            f"| {x.name} | {x.value:.2f} | {x.target or 'info'} | {verdict} | {_rounds(x)} |"
        )
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


def add_cpu_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--cpu N``: the one CPU ``what`` (the last by default)."""
    p.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help=f"the one CPU {what} (default: the last)",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Targets (informational, the exit code is 0 either way): GetSelfModel p50 at most "
        "1.3x the echo's and throughput at least 0.8x; durable Observe throughput with "
        "concurrent writers at least 0.5x the echo's.",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=2.5,
        help="seconds measured per scenario and round (default: 2.5; 10 scenarios)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times every scenario is measured, interleaved; figures pool the rounds, ratios are "
        "also shown per round (default: 3)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="about 15 s in all: one round of 0.8 s per scenario, fewer warm-up calls",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=8,
        help="concurrent client processes, each one channel and one call in flight (default: 8)",
    )
    p.add_argument(
        "--beliefs",
        type=int,
        default=50,
        help="beliefs of the subject read by GetSelfModel (default: 50)",
    )
    p.add_argument(
        "--warmup-calls",
        type=int,
        default=200,
        help="unmeasured calls per client before each scenario (default: 200)",
    )
    p.add_argument(
        "--max-calls",
        type=int,
        default=500_000,
        help="at most this many calls per client per scenario (default: 500000)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each call in seconds")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="parent of the temporary node data directories (default: the system's "
        "temp dir); fsync figures depend on its disk",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the results (machine, command, tables) as Markdown here",
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the node with py-spy during the node scenarios, one file per "
        "scenario in DIR (sampling costs CPU: do not record such a run's figures)",
    )
    p.add_argument(
        "--py-spy-format",
        choices=("flamegraph", "raw", "speedscope"),
        default="flamegraph",
        help="py-spy output format (default: flamegraph)",
    )
    p.add_argument("--py-spy-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="sample only the thread holding the GIL (where Python CPU time goes)",
    )
    p.add_argument(
        "--profile-echo",
        action="store_true",
        help="with --py-spy, profile the echo server's scenarios too",
    )
    p.add_argument(
        "--cpus",
        default=str(max(os.sched_getaffinity(0))),
        help="run the node (under taskset) and the echo alike on these CPUs only ('none': on "
        "any CPU); default: the last CPU",
    )
    p.add_argument(
        "--sched-batch",
        action="store_true",
        help="run the node (under chrt --batch) and the echo alike under SCHED_BATCH",
    )
    p.add_argument(
        "--only",
        choices=("get", "observe"),
        default=None,
        help="run only the GetSelfModel or only the Observe scenarios (no ratios)",
    )
    args = p.parse_args(argv)  # fmt: skip
    try:
        args.cpus = frozenset() if args.cpus in ("", "none") else parse_cpus(args.cpus)
    except ValueError as exc:
        p.error(str(exc))
    if args.quick:
        args.duration = min(args.duration, 0.8)
        args.rounds = 1
        args.warmup_calls = min(args.warmup_calls, 30)
    if min(args.clients, args.rounds, args.beliefs) < 1 or args.duration <= 0:
        p.error("--clients, --rounds, --duration and --beliefs must be positive")
    return args


@dataclass(frozen=True)
class Captured:
    """Requests sent and replies captured from the node; the echo answers the same bytes."""

    get_request: bytes
    get_reply: bytes
    observe_request: bytes
    observe_reply: bytes


def seed(address: str, beliefs: int, timeout_s: float) -> Captured:
    """Seeds the subject read by GetSelfModel and captures one reply of each method."""
    from selfmodel.v1 import model_pb2, selfmodel_pb2

    subject_id = f"u-{beliefs}-beliefs"
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        observe = channel.unary_unary(OBSERVE_METHOD, None, None)
        for i, req in enumerate(seed_requests(subject_id, beliefs)):
            md = (("x-agent-id", AGENTS[i % len(AGENTS)]),)
            observe(req.SerializeToString(), metadata=md, timeout=timeout_s)
        subject = model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=subject_id)
        get_request = selfmodel_pb2.GetSelfModelRequest(subject=subject).SerializeToString()
        get_reply = channel.unary_unary(GET_METHOD, None, None)(
            get_request, metadata=agent_metadata(0), timeout=timeout_s
        )
        got = len(selfmodel_pb2.GetSelfModelResponse.FromString(get_reply).snapshot.beliefs)
        if got != beliefs:
            raise RuntimeError(f"seeded {beliefs} beliefs but GetSelfModel returned {got}")
        probe = observe_requests("probe", 0, 1)[0]
        observe_reply = observe(probe, metadata=agent_metadata(0), timeout=timeout_s)
    return Captured(get_request, get_reply, probe, observe_reply)


def describe(args: argparse.Namespace, captured: Captured, nproc: str) -> list[str]:
    return [
        f"GetSelfModel: one subject with {args.beliefs} beliefs (distinct keys, one evidence "
        f"item each); request {len(captured.get_request)} B, reply {len(captured.get_reply)} B.",
        f"Observe: request {len(captured.observe_request)} B (one evidence item), reply "
        f"{len(captured.observe_reply)} B. Each writer writes its own users, another subject on "
        f"every call (cycling through {REQUESTS_PER_WRITER}): concurrent writers never share a "
        "subject.",
        "echo: a bare threaded grpc.server in its own process, configured like the node's (same "
        "thread pool and options, same environment), generic bytes-in/bytes-out handlers "
        "answering the reply captured from the node (same serialized size), no interceptor.",
        (
            f"Node and echo processes run on CPU(s) {','.join(map(str, sorted(args.cpus)))} only "
            "(the node under taskset, the echo pinned alike); clients on any CPU."
            if args.cpus
            else "Node and echo processes run on any CPU (--cpus none)."
        ),
        *(
            ["Node and echo threads run under SCHED_BATCH (the node under chrt --batch)."]
            if args.sched_batch
            else []
        ),
        f"Clients: separate processes (1, then {args.clients}), one channel and one call in "
        "flight each, pre-serialized requests, replies not decoded (the same for node and echo).",
        f"Each scenario: {args.warmup_calls} warm-up calls per client, then {args.duration:g} s "
        f"measured, {args.rounds} round(s) interleaved and pooled. Nodes, echo and clients share "
        f"this machine's {nproc} CPUs; 'srv CPU' is the "
        "server process's CPU time per call, 'cli CPU' the clients', 'srv cs' the server's "
        "context switches per call (its threads waiting for the GIL or for I/O).",
    ]


@dataclass(frozen=True)
class Scenario:
    name: str
    server: Server
    method: str
    requests_per_client: Sequence[Sequence[bytes]]
    profile: bool

    @property
    def clients(self) -> int:
        return len(self.requests_per_client)


def scenarios(
    args: argparse.Namespace, durable: Server, nofsync: Server, echo: Server, captured: Captured
) -> list[Scenario]:
    """Each node scenario right after its echo twin, sequential first, then concurrent."""
    out = []
    pe = args.profile_echo
    if args.only in (None, "get"):
        for label, n in (("seq", 1), ("conc", args.clients)):
            requests = [[captured.get_request]] * n
            out.append(Scenario(f"echo-get {label}", echo, ECHO_GET_METHOD, requests, pe))
            out.append(Scenario(f"get {label}", durable, GET_METHOD, requests, True))
    if args.only in (None, "observe"):
        for label, n in (("seq", 1), ("conc", args.clients)):
            writers = [observe_requests(f"e{label}", w, REQUESTS_PER_WRITER) for w in range(n)]
            out.append(Scenario(f"echo-observe {label}", echo, ECHO_OBSERVE_METHOD, writers, pe))
            for node, kind in ((durable, "fsync"), (nofsync, "no-fsync")):
                writers = [
                    observe_requests(f"{kind}{label}", w, REQUESTS_PER_WRITER) for w in range(n)
                ]
                out.append(Scenario(f"observe {kind} {label}", node, OBSERVE_METHOD, writers, True))
    return out


def run_rounds(
    bench: Bench, plan: Sequence[Scenario], rounds: int
) -> tuple[list[Figures], list[dict[str, Figures]]]:
    """Every scenario once per round, in the same order, so background load hits node and echo
    alike; prints a progress line per measurement. Returns the figures of all rounds pooled, and
    each round's on its own (by scenario name)."""
    samples: dict[str, list[Sample]] = {s.name: [] for s in plan}
    per_round: list[dict[str, Figures]] = []
    for r in range(1, rounds + 1):
        per_round.append({})
        for sc in plan:
            sample = bench.measure(
                f"{sc.name} r{r}", sc.server, sc.method, sc.requests_per_client, sc.profile
            )
            samples[sc.name].append(sample)
            one = Figures.of(sc.name, sc.server.label, sc.clients, [sample])
            per_round[-1][sc.name] = one
            print(
                f"  round {r}/{rounds}  {sc.name:<22} p50 {one.p50_ms:7.3f} ms  "
                f"p99 {one.p99_ms:7.3f} ms  {one.throughput:6.0f} calls/s",
                flush=True,
            )
    pooled = [Figures.of(sc.name, sc.server.label, sc.clients, samples[sc.name]) for sc in plan]
    return pooled, per_round


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.harness import NodeProcess

    command = "python " + " ".join(sys.argv if argv is None else ["node_latency.py", *argv])
    info = machine()
    print(
        f"selfmodel node latency: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"grpcio {info['grpcio']}"
    )
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="selfmodel-bench-", dir=args.data_dir)
            )
        )
        pool = ClientPool(args.clients)  # spawns while the nodes start
        stack.callback(pool.close)
        nodes = []
        prefix = operator_prefix(args.cpus, args.sched_batch)
        for name, extra in (("durable", ()), ("nofsync", ("--no-fsync",))):
            node = NodeProcess(name, tmp / name / "data", extra, prefix=prefix)
            node.data_dir.parent.mkdir(parents=True)
            stack.callback(_stop_node, node)
            nodes.append(node.start())
        durable, nofsync = (
            Server(label, n.proc.pid, n.address, n.metrics_port)
            for n, label in zip(nodes, ("node", "node no-fsync"), strict=True)
            if n.proc is not None
        )
        captured = seed(durable.address, args.beliefs, args.timeout)
        echo_process = EchoServer(
            {"SelfModelSized": captured.get_reply, "ObserveSized": captured.observe_reply},
            args.cpus,
            args.sched_batch,
        )
        stack.callback(echo_process.stop)
        echo = Server("echo", echo_process.pid, echo_process.address)

        notes = describe(args, captured, info["nproc"])
        print()
        for n in notes:
            print(f"  {n}")
        print()
        profiler = None
        if args.py_spy:
            profiler = Profiler(args.py_spy, args.py_spy_format, args.py_spy_rate, args.py_spy_gil)
        bench = Bench(
            pool, args.duration, args.warmup_calls, args.max_calls, args.timeout, profiler
        )
        plan = scenarios(args, durable, nofsync, echo, captured)
        figures, per_round = run_rounds(bench, plan, args.rounds)
        pool.close()  # the clients go before the servers

    print()
    print(HEADER)
    print(UNITS)
    print("-" * len(HEADER))
    for f in figures:
        print(_row(f))

    rs: list[Ratio] = []
    if args.only is None:
        print()
        print(f"{'ratio':<54} {'value':>7}   {'target':<8} {'verdict':<7} each round")
        print("-" * 96)
        rs = with_rounds(
            ratios({f.name: f for f in figures}, args.clients),
            [ratios(r, args.clients) for r in per_round],
        )
        for x in rs:
            print(_ratio_row(x))
    info["load"] = f"{info['load']}, {os.getloadavg()[0]:.1f}"
    print(
        f"\n({time.monotonic() - started:.0f} s in all; load average {info['load']} at the start "
        "and the end; targets are informational)"
    )
    if args.markdown:
        args.markdown.write_text(markdown(command, info, notes, figures, rs))
        print(f"wrote {args.markdown}")
    return 0


def _stop_node(node: Any) -> None:
    code = node.stop()
    if code not in (0, None):
        print(f"node {node.name} exited with {code}:\n{node.log()[-2000:]}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
