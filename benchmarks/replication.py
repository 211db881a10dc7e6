#!/usr/bin/env python3
"""Replication visibility: from an Observe acknowledged on one node to WatchSelfModel elsewhere.

What runs, per cell (nodes x writes/s), all on loopback, data in a temporary directory:

- a fresh-subject run on a LocalCluster of real ``selfmodel node`` processes (no fault proxies,
  the node defaults: fsync on, unless --no-fsync);
- one writer process: an open-loop, rate-limited writer of Observe calls to the first node
  (a call every 1/rate s whatever the previous calls are doing, at most 1,024 in flight),
  round-robin over 8 subjects, each write superseding the writer's own previous one in the
  slot, so the subjects stay small;
- one watcher process per other node, holding a WatchSelfModel stream per subject. A write is
  visible on a node at the first snapshot whose handoff token covers the write's dot;
- the floor, in the same run and at the same rates: a tiny gRPC server in its own process with
  a unary ``Publish`` that pushes each message to every ``Subscribe`` stream (one subscriber
  process per other node), with the same kind of writer. Time from publish ack to receipt;
- the relay floor (informational): the same, but the origin hands each message to a client
  stream per relay process, and each relay pushes it to its subscriber, the two hops a write
  takes from one node to a watcher on another.

Node i runs on one CPU, the i-th of ``--cpus`` round robin (default: every CPU of this machine),
as the README advises one CPU per node (``selfmodel node --cpus``, through LocalCluster's
``node_args``); the floor's origin runs where node 1 runs and relay i where node i + 2 runs.
Writer, watchers and subscribers run on any CPU. ``--cpus none``: every process on any CPU.

The node, push-floor and relay-floor runs of a cell take turns (``--rounds``, default 3, each
measuring duration/rounds seconds) and pool their samples: this machine's speed drifts by up to
~1.8x from one minute to the next (``receive_path.py`` shows it), and a ratio of two runs taken
minutes apart measures that drift as much as the node.

Times are time.monotonic(), which is system-wide on Linux, so processes compare them directly.
A write seen before its ack reached the writer counts as 0 ms: the written node ships a write to
its peers while it syncs its WAL (node.store), so a peer may show it before the writer hears
back. The target reads the time from the ack, as the issue defines it; a second table times
the same events from the call, beside the floor's time from its call, and counts the writes
seen before their ack. Only writes issued during the measured interval count (after a
one-second warm-up).

    python -m benchmarks.replication            # 3 and 5 nodes x 100 and 1,000 writes/s
    python -m benchmarks.replication --quick    # 3 s per cell
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from benchmarks.node_latency import operator_prefix, parse_cpus, pin_process

TENANT = "acme"
CONTEXT = "replication"
SUBJECTS = 8
MAX_IN_FLIGHT = 1024
WARMUP_S = 1.0
DRAIN_S = 3.0
PUSH_SERVICE = "bench.v1.Push"
PUBLISH = f"/{PUSH_SERVICE}/Publish"
SUBSCRIBE = f"/{PUSH_SERVICE}/Subscribe"
FORWARD = f"/{PUSH_SERVICE}/Forward"
TARGET_RATIO = 3.0  # p99 visibility / p99 floor at 100 writes/s on 3 nodes, at most
AGENT_MD = (("x-agent-id", "bench_writer"),)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time from an Observe acknowledged on one node to its visibility through "
        "WatchSelfModel on every other node, beside a bare gRPC stream-push floor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", default="3,5", help="comma-separated cluster sizes")
    p.add_argument("--rates", default="100,1000", help="comma-separated writes/s")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the cell's node, push-floor and relay-floor runs take turns this many times, "
        "each measuring duration/rounds seconds, so a change of machine speed hits all three",
    )
    p.add_argument("--quick", action="store_true", help="3 s per cell")
    p.add_argument(
        "--linger-s",
        type=float,
        default=None,
        help="the nodes' [cluster.sync] linger_s (default: the node default)",
    )
    p.add_argument("--no-fsync", action="store_true", help="nodes without fsync (WAL still on)")
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data directory")
    p.add_argument("--json", type=Path, default=None, help="also write every sample to this file")
    p.add_argument(
        "--cpus",
        default=",".join(map(str, sorted(os.sched_getaffinity(0)))),
        help="give node i (and the floor's i-th server process) CPU i of this list, round "
        "robin, one CPU per node ('none': any CPU); default: every CPU",
    )
    args = p.parse_args(argv)
    try:
        args.cpus = [] if args.cpus in ("", "none") else sorted(parse_cpus(args.cpus))
    except ValueError as exc:
        p.error(str(exc))
    args.node_counts = [int(n) for n in args.nodes.split(",")]
    args.rate_list = [float(r) for r in args.rates.split(",")]
    if args.quick:
        args.duration = 3.0
    if any(n < 2 for n in args.node_counts) or any(r <= 0 for r in args.rate_list):
        p.error("--nodes must be at least 2 and --rates positive")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


# -- processes -----------------------------------------------------------------------------


def _spawn(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def cpu_of(cpus: Sequence[int], i: int) -> int:
    """The CPU of node i, and of the floor's i-th server process: ``cpus`` round robin."""
    return cpus[i % len(cpus)]


def pin(pid: int, cpus: Sequence[int], i: int) -> None:
    """Every thread of floor process ``pid`` on ``cpu_of(cpus, i)``, as node i runs (no
    ``cpus``: left alone). Threads it starts later inherit the mask of the thread starting them."""
    if cpus:
        pin_process(pid, frozenset([cpu_of(cpus, i)]))


def _expect(conn: Connection, what: str, timeout_s: float = 30.0) -> Any:
    if not conn.poll(timeout_s):
        raise TimeoutError(f"{what} did not answer within {timeout_s} s")
    return conn.recv()


def _reap(procs: Sequence[Any]) -> None:
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def _subject(cell: str, k: int) -> Any:
    from selfmodel.v1 import model_pb2

    return model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=f"{cell}-{k}")


def _writer(
    kind: str, target: str, cell: str, rate: float, seconds: float, pad: int, conn: Connection
) -> None:
    """Open loop: call number i is issued at start + i/rate; records (i, sent, acked, reply)."""
    from selfmodel.v1 import selfmodel_pb2, selfmodel_pb2_grpc

    channel = grpc.insecure_channel(target)
    count = int(rate * seconds)
    if kind == "node":
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        call: Any = stub.Observe
        requests: list[Any] = [
            selfmodel_pb2.ObserveRequest(
                subject=_subject(cell, i % SUBJECTS),
                context=CONTEXT,
                key="latest",
                statement=f"value {i}",
                confidence=0.9,
            )
            for i in range(count)
        ]
    else:
        call = channel.unary_unary(PUBLISH, None, None)
        requests = [i.to_bytes(8, "big") + bytes(pad) for i in range(count)]
    records: list[tuple[int, float, float, str]] = []
    errors: list[str] = []
    in_flight = threading.Semaphore(MAX_IN_FLIGHT)
    skipped = 0

    def done(i: int, sent: float, fut: Any) -> None:
        acked = time.monotonic()
        in_flight.release()
        try:
            reply = fut.result()
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
            return
        records.append((i, sent, acked, reply.observation_id if kind == "node" else ""))

    with contextlib.suppress(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=10)
    conn.send("ready")
    start_at = conn.recv()
    for i, req in enumerate(requests):
        slot = start_at + i / rate
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if not in_flight.acquire(blocking=False):
            skipped += 1
            continue
        sent = time.monotonic()
        fut = call.future(req, timeout=10.0, metadata=AGENT_MD)
        fut.add_done_callback(lambda f, i=i, sent=sent: done(i, sent, f))
    deadline = time.monotonic() + 12.0  # the calls in flight end within their 10 s timeout
    for _ in range(MAX_IN_FLIGHT):
        if not in_flight.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    conn.send((records, errors, skipped))
    channel.close()


def _watcher(target: str, cell: str, conn: Connection) -> None:
    """A WatchSelfModel stream per subject; records (received, subject index, handoff token)."""
    from selfmodel.v1 import selfmodel_pb2, selfmodel_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
    events: list[tuple[float, int, str]] = []
    first = [threading.Event() for _ in range(SUBJECTS)]
    calls: list[Any] = []

    def follow(k: int) -> None:
        req = selfmodel_pb2.WatchSelfModelRequest(subject=_subject(cell, k), contexts=[CONTEXT])
        call = stub.WatchSelfModel(req, metadata=(("x-agent-id", "bench_watcher"),))
        calls.append(call)
        with contextlib.suppress(grpc.RpcError):
            for snapshot in call:
                events.append((time.monotonic(), k, snapshot.snapshot.handoff_token))
                first[k].set()

    threads = [threading.Thread(target=follow, args=(k,), daemon=True) for k in range(SUBJECTS)]
    for t in threads:
        t.start()
    ok = all(e.wait(30) for e in first)
    conn.send("ready" if ok else "no initial snapshot")
    with contextlib.suppress(EOFError):
        conn.recv()
    for call in calls:
        call.cancel()
    for t in threads:
        t.join(5)
    conn.send(events)
    channel.close()


def _push_server(relays: Sequence[str], conn: Connection) -> None:
    """The floor: Publish pushes the message to every Subscribe stream, then answers.

    With ``relays`` (the relay floor's origin), Publish instead hands the message to one
    client stream per relay (``Forward``, as a node streams its outbox to each peer), and each
    relay pushes what it receives to its own Subscribe streams (as a peer's watch does).
    """
    subscribers: list[queue.SimpleQueue[bytes]] = []
    lock = threading.Lock()
    outgoing: list[queue.SimpleQueue[bytes | None]] = [queue.SimpleQueue() for _ in relays]

    def push(request: bytes) -> None:
        with lock:
            targets = list(subscribers)
        for q in targets:
            q.put(request)

    def publish(request: bytes, context: grpc.ServicerContext) -> bytes:
        if outgoing:
            for out in outgoing:
                out.put(request)
        else:
            push(request)
        return b""

    def forward(requests: Any, context: grpc.ServicerContext) -> bytes:
        for request in requests:
            push(request)
        return b""

    def subscribe(request: bytes, context: grpc.ServicerContext) -> Any:
        q: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        with lock:
            subscribers.append(q)
        yield b"subscribed"
        while context.is_active():
            try:
                yield q.get(timeout=0.5)
            except queue.Empty:
                continue

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=256 + 64, thread_name_prefix="rpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    handlers = {
        "Publish": grpc.unary_unary_rpc_method_handler(publish),
        "Forward": grpc.stream_unary_rpc_method_handler(forward),
        "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PUSH_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def drain(out: queue.SimpleQueue[bytes | None]) -> Any:
        while (msg := out.get()) is not None:
            yield msg

    channels = [grpc.insecure_channel(target) for target in relays]
    calls = [
        ch.stream_unary(FORWARD, None, None).future(drain(out))
        for ch, out in zip(channels, outgoing, strict=True)
    ]
    conn.send(port)
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        conn.recv()
    for out in outgoing:
        out.put(None)
    for call in calls:
        call.cancel()  # type: ignore[no-untyped-call]
    for ch in channels:
        ch.close()
    server.stop(0).wait()


def _subscriber(target: str, conn: Connection) -> None:
    channel = grpc.insecure_channel(target)
    call = channel.unary_stream(SUBSCRIBE, None, None)(b"")
    received: list[tuple[float, int]] = []
    subscribed = threading.Event()

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):
            for msg in call:
                if msg == b"subscribed":
                    subscribed.set()
                    continue
                received.append((time.monotonic(), int.from_bytes(msg[:8], "big")))

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    conn.send("ready" if subscribed.wait(30) else "not subscribed")
    with contextlib.suppress(EOFError):
        conn.recv()
    call.cancel()  # type: ignore[no-untyped-call]
    t.join(5)
    conn.send(received)
    channel.close()


# -- measurement ---------------------------------------------------------------------------


@dataclass
class Figures:
    writes: int = 0
    errors: int = 0
    skipped: int = 0
    ack_ms: list[float] = field(default_factory=list)  # call sent -> ack
    visible_ms: list[float] = field(default_factory=list)  # ack -> visible, per other node
    issued_ms: list[float] = field(default_factory=list)  # call sent -> visible, per other node
    early: int = 0  # visible before the ack reached the writer (counted 0 in visible_ms)
    unseen: int = 0
    first_error: str = ""
    acked_total: int = 0  # acknowledged writes, warm-up included
    # CPU time per acknowledged write of the written node (the floor's origin), and of each
    # other node (each relay of the relay floor), mean.
    writer_cpu_ms: float = float("nan")
    peer_cpu_ms: float = float("nan")

    def p(self, values: Sequence[float], q: float) -> float:
        return percentile(sorted(values), q)

    def seen(self, sent: float, acked: float, at: float) -> None:
        """A write issued at ``sent``, acknowledged at ``acked``, was seen at ``at``."""
        self.visible_ms.append(max(0.0, at - acked) * 1000)
        self.issued_ms.append((at - sent) * 1000)
        self.early += at < acked

    def absorb(self, other: Figures) -> None:
        """Adds another round's samples and counts; CPU per write weighted by its writes."""
        total = self.acked_total + other.acked_total
        for attr in ("writer_cpu_ms", "peer_cpu_ms"):
            mine, theirs = getattr(self, attr), getattr(other, attr)
            if math.isnan(mine) or math.isnan(theirs):
                value = theirs if math.isnan(mine) else mine
            else:
                value = (mine * self.acked_total + theirs * other.acked_total) / max(1, total)
            setattr(self, attr, value)
        self.writes += other.writes
        self.errors += other.errors
        self.skipped += other.skipped
        self.ack_ms += other.ack_ms
        self.visible_ms += other.visible_ms
        self.issued_ms += other.issued_ms
        self.early += other.early
        self.unseen += other.unseen
        self.first_error = self.first_error or other.first_error
        self.acked_total = total


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def _drive(
    kind: str,
    target: str,
    cell: str,
    rate: float,
    duration_s: float,
    pad: int,
    observers: Sequence[tuple[Any, Connection]],
) -> tuple[list[tuple[int, float, float, str]], float, float, Figures]:
    """Runs the writer against ready observers; returns its records and the measured interval."""
    figures = Figures()
    proc, conn = _spawn(_writer, kind, target, cell, rate, WARMUP_S + duration_s, pad)
    try:
        if _expect(conn, "writer") != "ready":
            raise RuntimeError("writer did not start")
        start_at = time.monotonic() + 0.2
        conn.send(start_at)
        records, errors, skipped = _expect(conn, "writer", WARMUP_S + duration_s + 30)
    finally:
        _reap([proc])
    time.sleep(DRAIN_S if rate <= 100 else DRAIN_S * 2)
    figures.errors, figures.skipped = len(errors), skipped
    figures.first_error = errors[0] if errors else ""
    measured_from = start_at + WARMUP_S
    measured = [r for r in records if r[1] >= measured_from]
    figures.writes = len(measured)
    figures.acked_total = len(records)
    figures.ack_ms = [(acked - sent) * 1000 for _, sent, acked, _ in measured]
    return measured, measured_from, measured_from + duration_s, figures


def measure_node(cluster: Any, cell: str, rate: float, duration_s: float) -> Figures:
    from sync.causal import Dot
    from sync.codec import decode_token

    names = list(cluster.nodes)
    writer_node, others = names[0], names[1:]
    watchers = [_spawn(_watcher, cluster.address(n), cell) for n in others]
    events: list[list[tuple[float, int, str]]] = []
    try:
        for _, conn in watchers:
            if _expect(conn, "watcher") != "ready":
                raise RuntimeError("a watcher got no initial snapshot")
        pids = [cluster.nodes[n].proc.pid for n in names]
        cpu0 = [process_cpu_s(pid) for pid in pids]
        measured, _, _, figures = _drive(
            "node", cluster.address(writer_node), cell, rate, duration_s, 0, watchers
        )
        used = [process_cpu_s(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        done = max(1, figures.acked_total)
        figures.writer_cpu_ms = used[0] / done * 1000
        figures.peer_cpu_ms = sum(used[1:]) / len(used[1:]) / done * 1000
        for _, conn in watchers:
            conn.send("stop")
        events = [_expect(conn, "watcher") for _, conn in watchers]
    finally:
        _reap([p for p, _ in watchers])
    if not measured:
        return figures
    actor = Dot.parse(measured[0][3]).actor
    # Per watcher and subject: when each snapshot arrived and how far it covers the writer.
    covered: list[dict[int, tuple[list[int], list[float]]]] = []
    for per_node in events:
        index: dict[int, tuple[list[int], list[float]]] = {}
        for at, k, token in per_node:
            counters, times = index.setdefault(k, ([], []))
            position = next(iter(decode_token(token).values()), None)
            upto = position.vector.get(actor, 0) if position is not None else 0
            counters.append(max(upto, counters[-1] if counters else 0))
            times.append(at)
        covered.append(index)
    for i, sent, acked, observation_id in measured:
        dot = Dot.parse(observation_id)
        for index in covered:
            counters, times = index.get(i % SUBJECTS, ([], []))
            j = bisect.bisect_left(counters, dot.counter)
            if j == len(counters):
                figures.unseen += 1
            else:
                figures.seen(sent, acked, times[j])
    return figures


def measure_floor(
    subscribers: int,
    rate: float,
    duration_s: float,
    pad: int,
    relay: bool = False,
    cpus: Sequence[int] = (),
) -> Figures:
    """The push floor; with ``relay``, the relay floor: origin -> stream -> relay -> subscriber.

    The origin runs where node 1 runs, relay i where node i + 2 runs (``cpus``, as ``pin``)."""
    relays: list[tuple[Any, Connection]] = []
    subs: list[tuple[Any, Connection]] = []
    spawned: list[tuple[Any, Connection]] = []
    try:
        targets: list[str] = []
        if relay:
            relays = [_spawn(_push_server, []) for _ in range(subscribers)]
            targets = [f"127.0.0.1:{_expect(conn, 'relay')}" for _, conn in relays]
            for i, (proc, _) in enumerate(relays):
                pin(proc.pid, cpus, i + 1)
        spawned.append(_spawn(_push_server, targets))
        target = f"127.0.0.1:{_expect(spawned[0][1], 'push server')}"
        pin(spawned[0][0].pid, cpus, 0)
        subs = [_spawn(_subscriber, t) for t in (targets or [target] * subscribers)]
        for _, conn in subs:
            if _expect(conn, "subscriber") != "ready":
                raise RuntimeError("a subscriber did not subscribe")
        pids = [spawned[0][0].pid] + [proc.pid for proc, _ in relays]
        cpu0 = [process_cpu_s(pid) for pid in pids]
        measured, _, _, figures = _drive("floor", target, "floor", rate, duration_s, pad, subs)
        used = [process_cpu_s(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        done = max(1, figures.acked_total)
        figures.writer_cpu_ms = used[0] / done * 1000
        if relays:
            figures.peer_cpu_ms = sum(used[1:]) / len(used[1:]) / done * 1000
        for _, conn in subs:
            conn.send("stop")
        received = [dict((seq, at) for at, seq in _expect(conn, "subscriber")) for _, conn in subs]
    finally:
        for _, conn in [*spawned, *relays]:
            with contextlib.suppress(OSError):
                conn.send(None)
        _reap([p for p, _ in subs] + [p for p, _ in spawned])
        _reap([p for p, _ in relays])
    for i, sent, acked, _ in measured:
        for got in received:
            at = got.get(i)
            if at is None:
                figures.unseen += 1
            else:
                figures.seen(sent, acked, at)
    return figures


@dataclass
class Cell:
    nodes: int
    rate: float
    node: Figures
    floor: Figures
    relay: Figures

    @property
    def ratio(self) -> float:
        return p99_ratio(self.node, self.floor, "visible_ms")

    @property
    def issued_ratio(self) -> float:
        return p99_ratio(self.node, self.floor, "issued_ms")

    @property
    def relay_ratio(self) -> float:
        return p99_ratio(self.node, self.relay, "visible_ms")


def p99_ratio(node: Figures, floor: Figures, times: str) -> float:
    """The node's p99 of ``times`` (a Figures list) over the floor's (inf over a floor of 0)."""
    under = floor.p(getattr(floor, times), 0.99)
    return node.p(getattr(node, times), 0.99) / under if under > 0 else float("inf")


def snapshot_size() -> int:
    """Bytes of a typical snapshot pushed by the watch (one belief), to size the floor's message."""
    from selfmodel.v1 import model_pb2, selfmodel_pb2

    snap = model_pb2.SelfModelSnapshot(
        subject=_subject("r3x100", 0), node="n2", handoff_token="x" * 60
    )
    belief = snap.beliefs.add(
        context=CONTEXT, key="latest", statement="value 12345", confidence=0.9
    )
    belief.supporters.add(source="bench_writer", statement="value 12345", confidence=0.9)
    return selfmodel_pb2.WatchSelfModelResponse(snapshot=snap).ByteSize()


def run(args: argparse.Namespace) -> list[Cell]:
    from tests.harness import LocalCluster, node_sync_defaults, start_with_fresh_ports

    cells: list[Cell] = []
    pad = max(0, snapshot_size() - 8)
    parent = args.data or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="selfmodel-replication-", dir=parent))
    try:
        for n in args.node_counts:
            names = [f"n{i}" for i in range(1, n + 1)]

            # Node i on one CPU, as an operator pins it (taskset), from its start.
            pinned = {
                m: operator_prefix(frozenset([cpu_of(args.cpus, i)]))
                for i, m in enumerate(names)
                if args.cpus
            }

            def make(
                attempt: int,
                n: int = n,
                names: list[str] = names,
                pinned: dict[str, tuple[str, ...]] = pinned,
            ) -> LocalCluster:
                return LocalCluster(
                    root / f"cluster{n}-{attempt}",
                    names,
                    proxies=False,
                    fsync=not args.no_fsync,
                    sync={  # the node defaults, but for --linger-s
                        **node_sync_defaults(),
                        **({} if args.linger_s is None else {"linger_s": args.linger_s}),
                    },
                    node_prefix=pinned,
                )

            cluster = start_with_fresh_ports(make)
            try:
                cluster.wait_converged(timeout_s=30)
                for rate in args.rate_list:
                    node, floor, relay = Figures(), Figures(), Figures()
                    seconds = args.duration / args.rounds
                    for r in range(1, args.rounds + 1):
                        step = f"  {n} nodes, {rate:g} writes/s, round {r}/{args.rounds}:"
                        print(f"{step} replication ...", flush=True)
                        cell = f"r{n}x{rate:g}-{r}"  # fresh subjects each round
                        node.absorb(measure_node(cluster, cell, rate, seconds))
                        print(f"{step} push floor ...", flush=True)
                        floor.absorb(measure_floor(n - 1, rate, seconds, pad, cpus=args.cpus))
                        print(f"{step} relay floor ...", flush=True)
                        relay.absorb(
                            measure_floor(n - 1, rate, seconds, pad, relay=True, cpus=args.cpus)
                        )
                    cells.append(Cell(n, rate, node, floor, relay))
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return cells


def _table(title: str, columns: Sequence[tuple[str, int]], rows: list[list[str]]) -> list[str]:
    """A titled table: every cell right-aligned to its column's width, one space apart."""
    header = " ".join(name.rjust(width) for name, width in columns)
    lines = [title, header, "-" * len(header)]
    for row in rows:
        lines.append(" ".join(cell.rjust(w) for cell, (_, w) in zip(row, columns, strict=True)))
    return lines


def render(cells: Sequence[Cell], args: argparse.Namespace) -> str:
    def ms(value: float) -> str:
        return f"{value:.2f}ms"

    def pct(fig: Figures) -> str:
        return f"{100 * fig.early / max(1, len(fig.visible_ms)):.0f}%"

    lines = _table(
        "time to visible",
        [("nodes", 5), ("writes/s", 8), ("acked/s", 7), ("vis p50", 9), ("vis p99", 9),
         ("floor p50", 9), ("floor p99", 9), ("p99 ratio", 9), ("unseen", 6), ("errors", 6)],
        [
            [str(c.nodes), f"{c.rate:g}", f"{c.node.writes / args.duration:.0f}",
             ms(c.node.p(c.node.visible_ms, 0.5)), ms(c.node.p(c.node.visible_ms, 0.99)),
             ms(c.floor.p(c.floor.visible_ms, 0.5)), ms(c.floor.p(c.floor.visible_ms, 0.99)),
             f"{c.ratio:.1f}x", str(c.node.unseen + c.floor.unseen),
             str(c.node.errors + c.node.skipped + c.floor.errors + c.floor.skipped)]
            for c in cells
        ],
    )  # fmt: skip
    lines.append("")
    lines += _table(
        "time to visible from the call (call sent -> visible; the ack's own time included)",
        [("nodes", 5), ("writes/s", 8), ("vis p50", 9), ("vis p99", 9), ("floor p50", 9),
         ("floor p99", 9), ("p99 ratio", 9), ("before ack", 10), ("floor before", 12)],
        [
            [str(c.nodes), f"{c.rate:g}",
             ms(c.node.p(c.node.issued_ms, 0.5)), ms(c.node.p(c.node.issued_ms, 0.99)),
             ms(c.floor.p(c.floor.issued_ms, 0.5)), ms(c.floor.p(c.floor.issued_ms, 0.99)),
             f"{c.issued_ratio:.1f}x", pct(c.node), pct(c.floor)]
            for c in cells
        ],
    )  # fmt: skip
    lines.append("")
    lines += _table(
        "call latency (call -> ack) and node CPU time per write",
        [("nodes", 5), ("writes/s", 8), ("Observe p50", 11), ("Observe p99", 11),
         ("Publish p50", 11), ("Publish p99", 11), ("CPU/write n1", 12), ("CPU/write peer", 14)],
        [
            [str(c.nodes), f"{c.rate:g}",
             ms(c.node.p(c.node.ack_ms, 0.5)), ms(c.node.p(c.node.ack_ms, 0.99)),
             ms(c.floor.p(c.floor.ack_ms, 0.5)), ms(c.floor.p(c.floor.ack_ms, 0.99)),
             ms(c.node.writer_cpu_ms), ms(c.node.peer_cpu_ms)]
            for c in cells
        ],
    )  # fmt: skip
    lines.append("")
    lines += _table(
        "beside the relay floor (origin -> stream -> relay -> watcher: a node's hops, and the "
        "bare gRPC CPU of a node's messages per write)",
        [("nodes", 5), ("writes/s", 8), ("vis p99", 9), ("relay p50", 9), ("relay p99", 9),
         ("vs relay", 9), ("unseen", 6), ("errors", 6), ("CPU/write origin", 16),
         ("CPU/write relay", 15)],
        [
            [str(c.nodes), f"{c.rate:g}", ms(c.node.p(c.node.visible_ms, 0.99)),
             ms(c.relay.p(c.relay.visible_ms, 0.5)), ms(c.relay.p(c.relay.visible_ms, 0.99)),
             f"{c.relay_ratio:.1f}x", str(c.relay.unseen), str(c.relay.errors + c.relay.skipped),
             ms(c.relay.writer_cpu_ms), ms(c.relay.peer_cpu_ms)]
            for c in cells
        ],
    )  # fmt: skip
    for c in cells:
        for what, fig in (("node", c.node), ("floor", c.floor), ("relay", c.relay)):
            if fig.first_error:
                lines.append(f"  {c.nodes}x{c.rate:g} {what}: first error {fig.first_error}")
    target = next((c for c in cells if c.nodes == 3 and c.rate == 100), None)
    if target is not None:
        verdict = "PASS" if target.ratio <= TARGET_RATIO else "MISS"
        lines.append(
            f"target: p99 visibility within {TARGET_RATIO:g}x the push floor at 100 writes/s on "
            f"3 nodes: {verdict} ({target.ratio:.1f}x)"
        )
    lines.append(
        "vis = Observe ack on n1 -> first WatchSelfModel snapshot covering it on each other node "
        "(0 when seen before the ack: n1 ships a write to its peers while its WAL syncs, so "
        "'before ack' counts those; the second table times from the call instead); "
        "floor = Publish ack -> receipt on each subscriber; relay floor = the same through one "
        "client stream and a relay process per subscriber (informational, not the target's "
        "floor); CPU/write origin and relay = the relay floor's processes, the gRPC messages of "
        "a write (one unary call, a stream message per peer, a push per watcher) with no "
        "engine; acked/s = Observe calls issued in "
        "the measured interval and acknowledged; errors = failed or skipped calls; "
        f"fsync {'off' if args.no_fsync else 'on (node default)'}; "
        + (
            f"node i and the floor's i-th server on CPU i of {args.cpus}, round robin"
            if args.cpus
            else "every process on any CPU (--cpus none)"
        )
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"replication: nodes {args.nodes}, rates {args.rates} writes/s, {args.duration:g} s per "
        f"cell in {args.rounds} rounds, fsync {'off' if args.no_fsync else 'on'}; "
        f"{os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}",
        flush=True,
    )
    cells = run(args)
    print(render(cells, args), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(c) for c in cells]))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
