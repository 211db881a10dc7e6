#!/usr/bin/env python3
"""Load: a fleet of agents on a cluster, for a bounded time; optionally the same on Redis.

What runs (loopback only unless ``--cluster`` names a running cluster; data in a temporary
directory removed afterwards):

- a ``tests.harness.LocalCluster`` of ``--nodes`` real node processes (default 3; 1 is the
  hub pattern, more the federated one), fsync on, or the nodes of ``--cluster FILE``;
- ``--agents`` simulated agents (default 20), agent *i* on node *i mod nodes*, spread over
  ``--workers`` load-generating processes (default 2, so one Python process's GIL is not what is
  measured), against ``--users`` users (default 10,000) of Zipf-skewed popularity
  (``--skew``, default 1.1), each seeded with ``--seed-per-user`` observations first;
- open loop by default: each agent's calls arrive as a Poisson process of ``--rate`` calls/s
  (default 5) whatever the earlier calls are doing (at most ``--max-in-flight`` per worker; the
  rest are counted as skipped), so latency under a stated load is not confused with the most
  the cluster can take; ``--closed`` runs each agent call after call instead (saturation);
- the mix (``--mix``, shares by weight): ``read`` GetSelfModel, ``observe``, ``batch``
  (ObserveBatch of 5), ``retract`` (one of the agent's own earlier observations), ``explain``,
  ``watch`` (open a WatchSelfModel stream, first snapshot, close), ``handoff`` (observe on the
  agent's node, then read on the next node with the handoff token: the handoff's latency);
- a visibility probe in this process: every 0.2 s an Observe on one node, watched on every
  other node; visible = first snapshot showing it minus the Observe's acknowledgement.

It prints a live progress line, then per operation p50/p95/p99 latency, throughput and errors
by status, visibility p50/p99, and per node peak memory, CPU and store size (from the nodes'
own metrics); ``--json``, ``--markdown`` and ``--png`` write them too.

``--compare redis`` runs the same logical workload afterwards on one Redis server started here
(Debian's ``redis-server``; append-only file with ``appendfsync always``, so its writes are as
durable as the nodes'): a hash per user, one field per (context, key), last write wins, no
attribution, no resolution, no handoff guarantee (one server needs none). Both tables are
printed side by side with ratios.

    python -m benchmarks.load                                         # 20 agents, 3 nodes, 30 s
    python -m benchmarks.load --agents 100 --nodes 3 --duration 60 --compare redis
    python -m benchmarks.load --closed --agents 50 --nodes 1          # saturation, hub pattern
    python -m benchmarks.load --agents 100 --users 2000 --duration 60 --profile  # where CPU goes
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.nodeprofile import NodeProfile, Profile
from benchmarks.nodeprofile import render as render_profile
from federation.retries import RetryPolicy

OPS = ("read", "observe", "batch", "retract", "explain", "watch", "handoff")
DEFAULT_MIX = "read=70,observe=15,batch=3,retract=2,explain=3,watch=2,handoff=5"
CONTEXTS = ("purchase_motivation", "communication_style", "budget", "team_size", "channel")
KEYS_PER_CONTEXT = 3
STATEMENTS_PER_SLOT = 4
TENANT = "load"
CALL_TIMEOUT_S = 10.0
PROBE_EVERY_S = 0.2
WARMUP_S = 2.0
KEEPS = {
    "selfmodel": "who said what (attribution), every contradiction with its dissenters, "
    "confidence and evidence, the slot's history, a handoff guarantee across nodes",
    "redis": "the last value written per (user, context, key); no attribution, no "
    "contradictions, no history, one server (no cross-node handoff)",
}


# -- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one worker process runs: its agents and everything they need."""

    target: str  # selfmodel | redis
    addresses: tuple[str, ...]  # node addresses (selfmodel) or the Redis address
    agents: tuple[int, ...]
    users: int
    skew: float
    rate: float
    closed: bool
    mix: tuple[tuple[str, float], ...]
    duration_s: float
    start_at: float  # time.time() at which every worker starts measuring
    max_in_flight: int
    seed: int
    token: str = ""


def parse_sync(text: str) -> dict[str, float]:
    """``name=value,...`` as [cluster.sync] numbers (the cluster file checks the names)."""
    settings = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: expected name=number") from None
        settings[name.strip()] = int(number) if number.is_integer() and "." not in value else number
    return settings


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    mix = []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in OPS:
            raise ValueError(f"--mix: unknown operation {name!r}; known: {', '.join(OPS)}")
        mix.append((name.strip(), float(weight)))
    if sum(w for _, w in mix) <= 0:
        raise ValueError("--mix: the weights must add up to more than 0")
    return tuple(mix)


class Users:
    """User indices drawn with Zipf-skewed popularity: user 0 the most popular."""

    def __init__(self, count: int, skew: float) -> None:
        weights = [1 / (rank + 1) ** skew for rank in range(count)]
        total = sum(weights)
        self._cumulative: list[float] = []
        running = 0.0
        for w in weights:
            running += w / total
            self._cumulative.append(running)

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self._cumulative, rng.random()), len(self._cumulative) - 1)


@dataclass
class Sample:
    at: float  # seconds since the measured start
    op: str
    ms: float
    status: str


# -- targets: the same logical operations on selfmodel and on Redis ---------------------------


class SelfModelTarget:
    def __init__(self, plan: Plan) -> None:
        import grpc.aio

        from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc

        self.pb, self.model = selfmodel_pb2, model_pb2
        self.channels = [grpc.aio.insecure_channel(a) for a in plan.addresses]
        self.stubs = [selfmodel_pb2_grpc.SelfModelServiceStub(c) for c in self.channels]
        self.token = plan.token
        self.error = grpc.aio.AioRpcError

    def _md(self, agent: str) -> tuple[tuple[str, str], ...]:
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        return (("x-agent-id", agent),)

    def subject(self, u: int) -> Any:
        return self.model.Subject(tenant=TENANT, kind=self.model.SUBJECT_KIND_USER, id=f"u-{u}")

    def status(self, exc: BaseException) -> str | None:
        return exc.code().name if isinstance(exc, self.error) else None

    def _observe(self, u: int, context: str, key: str, statement: str) -> Any:
        return self.pb.ObserveRequest(
            subject=self.subject(u), context=context, key=key, statement=statement, confidence=0.8
        )

    async def _write(self, method: Any, request: Any, agent: str) -> Any:
        """A write; an UNAVAILABLE answer (a node holding writes back while a peer's delta
        stream catches up: REPLICATION_BEHIND) is asked again as the Python client does
        (federation.retries): after its RetryInfo delay or the client's backoff, whichever is
        longer, at most ``attempts`` asks within the call's deadline."""
        from selfmodel.errors import Unavailable, from_rpc_error

        deadline = time.monotonic() + CALL_TIMEOUT_S
        policy = RetryPolicy()
        for attempt in range(1, policy.attempts + 1):
            left = deadline - time.monotonic()
            try:
                return await method(request, metadata=self._md(agent), timeout=max(0.001, left))
            except self.error as exc:
                error = from_rpc_error(exc)
                backoff = min(policy.max_wait_s, policy.multiplier_s * 2**attempt)
                wait = max(error.retry_after_s or 0.0, random.uniform(0, backoff))
                last = attempt == policy.attempts or wait >= deadline - time.monotonic()
                if not isinstance(error, Unavailable) or last:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def observe(self, node: int, agent: str, u: int, c: str, k: str, s: str) -> str:
        reply = await self._write(self.stubs[node].Observe, self._observe(u, c, k, s), agent)
        return str(reply.handoff_token)

    async def batch(self, node: int, agent: str, u: int, writes: Sequence[tuple[str, str, str]]):
        req = self.pb.ObserveBatchRequest(observations=[self._observe(u, *w) for w in writes])
        await self._write(self.stubs[node].ObserveBatch, req, agent)

    async def read(self, node: int, agent: str, u: int, at_least: str = "") -> None:
        """A read; with ``at_least``, asked again after each RetryInfo delay while the node
        answers HANDOFF_POSITION_PENDING (the contract every client follows)."""
        from selfmodel.errors import HandoffPending, from_rpc_error

        req = self.pb.GetSelfModelRequest(subject=self.subject(u), at_least=at_least)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        policy = RetryPolicy()  # the Python client's: each wait `growth` times the one before
        asks = 0
        while True:
            left = deadline - time.monotonic()
            try:
                await self.stubs[node].GetSelfModel(
                    req, metadata=self._md(agent), timeout=max(0.001, left)
                )
                return
            except self.error as exc:
                error = from_rpc_error(exc)
                if not isinstance(error, HandoffPending) or error.metadata.get("final") == "true":
                    raise
                if left <= 0.001:
                    raise
                wait = (error.retry_after_s or policy.multiplier_s) * policy.growth**asks
                asks += 1
                await asyncio.sleep(min(wait, policy.max_pending_wait_s, left))

    async def retract(self, node: int, agent: str, u: int, c: str, k: str) -> None:
        req = self.pb.RetractRequest(subject=self.subject(u), context=c, key=k)
        await self._write(self.stubs[node].Retract, req, agent)

    async def explain(self, node: int, agent: str, u: int, c: str, k: str) -> None:
        req = self.pb.ExplainBeliefRequest(subject=self.subject(u), context=c, key=k)
        try:
            await self.stubs[node].ExplainBelief(
                req, metadata=self._md(agent), timeout=CALL_TIMEOUT_S
            )
        except self.error as exc:
            if exc.code().name != "NOT_FOUND":  # a slot nobody wrote yet: an answer
                raise

    async def watch(self, node: int, agent: str, u: int) -> None:
        req = self.pb.WatchSelfModelRequest(subject=self.subject(u))
        call = self.stubs[node].WatchSelfModel(
            req, metadata=self._md(agent), timeout=CALL_TIMEOUT_S
        )
        try:
            await call.read()
        finally:
            call.cancel()

    async def close(self) -> None:
        for c in self.channels:
            await c.close(None)


class RedisTarget:
    """The same logical calls on one Redis server: HSET/HGETALL/HDEL of a hash per user."""

    def __init__(self, plan: Plan) -> None:
        import redis.asyncio
        import redis.exceptions

        host, _, port = plan.addresses[0].rpartition(":")
        self.redis = redis.asyncio.Redis(host=host, port=int(port), max_connections=256)
        self.errors = redis.exceptions.RedisError

    def status(self, exc: BaseException) -> str | None:
        return type(exc).__name__ if isinstance(exc, self.errors) else None

    async def observe(self, node: int, agent: str, u: int, c: str, k: str, s: str) -> str:
        await self.redis.hset(f"u-{u}", f"{c}:{k}", s)
        return ""

    async def batch(self, node: int, agent: str, u: int, writes: Sequence[tuple[str, str, str]]):
        await self.redis.hset(f"u-{u}", mapping={f"{c}:{k}": s for c, k, s in writes})

    async def read(self, node: int, agent: str, u: int, at_least: str = "") -> None:
        await self.redis.hgetall(f"u-{u}")

    async def retract(self, node: int, agent: str, u: int, c: str, k: str) -> None:
        await self.redis.hdel(f"u-{u}", f"{c}:{k}")

    async def explain(self, node: int, agent: str, u: int, c: str, k: str) -> None:
        await self.redis.hget(f"u-{u}", f"{c}:{k}")

    async def watch(self, node: int, agent: str, u: int) -> None:
        await self.redis.hgetall(f"u-{u}")  # no change feed per key: the read it starts with

    async def close(self) -> None:
        await self.redis.aclose()


# -- one worker process ---------------------------------------------------------------------


class Agent:
    def __init__(self, index: int, plan: Plan, target: Any, users: Users) -> None:
        self.index = index
        self.name = f"agent-{index}"
        self.node = index % len(plan.addresses) if plan.target == "selfmodel" else 0
        self.next_node = (self.node + 1) % len(plan.addresses) if plan.target == "selfmodel" else 0
        self.plan = plan
        self.target = target
        self.users = users
        self.rng = random.Random(plan.seed * 1_000_003 + index)
        self.ops = [op for op, _ in plan.mix]
        self.weights = [w for _, w in plan.mix]
        self.written: list[tuple[int, str, str]] = []  # (user, context, key), most recent last

    def slot(self) -> tuple[str, str, str]:
        c = self.rng.choice(CONTEXTS)
        k = f"k{self.rng.randrange(KEYS_PER_CONTEXT)}"
        return c, k, f"{c} {k} statement {self.rng.randrange(STATEMENTS_PER_SLOT)}"

    async def call(self, op: str) -> None:
        t, u = self.target, self.users.draw(self.rng)
        if op == "read":
            await t.read(self.node, self.name, u)
        elif op == "observe" or (op == "retract" and not self.written):
            c, k, s = self.slot()
            await t.observe(self.node, self.name, u, c, k, s)
            self.written = [*self.written[-31:], (u, c, k)]
        elif op == "batch":
            await t.batch(self.node, self.name, u, [self.slot() for _ in range(5)])
        elif op == "retract":
            u, c, k = self.written.pop(self.rng.randrange(len(self.written)))
            await t.retract(self.node, self.name, u, c, k)
        elif op == "explain":
            c, k, _ = self.slot()
            await t.explain(self.node, self.name, u, c, k)
        elif op == "watch":
            await t.watch(self.node, self.name, u)
        elif op == "handoff":
            c, k, s = self.slot()
            token = await t.observe(self.node, self.name, u, c, k, s)
            await t.read(self.next_node, f"{self.name}-next", u, token)


async def run_worker(plan: Plan, conn: Connection) -> list[Sample]:
    target: Any = SelfModelTarget(plan) if plan.target == "selfmodel" else RedisTarget(plan)
    users = Users(plan.users, plan.skew)
    agents = [Agent(i, plan, target, users) for i in plan.agents]
    samples: list[Sample] = []
    in_flight = 0
    start_mono = time.monotonic() + (plan.start_at - time.time())
    end_mono = start_mono + plan.duration_s
    warm_from = start_mono - WARMUP_S

    async def timed(agent: Agent, op: str) -> None:
        nonlocal in_flight
        in_flight += 1
        began = time.monotonic()
        status = "OK"
        try:
            await agent.call(op)
        except Exception as exc:
            status = target.status(exc) or type(exc).__name__
        finally:
            in_flight -= 1
        if began >= start_mono:
            took_ms = (time.monotonic() - began) * 1000
            samples.append(Sample(began - start_mono, op, took_ms, status))

    async def open_loop(agent: Agent) -> None:
        pending: set[asyncio.Task[None]] = set()
        due = warm_from + agent.rng.expovariate(plan.rate)
        while due < end_mono:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            op = agent.rng.choices(agent.ops, agent.weights)[0]
            if in_flight >= plan.max_in_flight:
                if due >= start_mono:
                    samples.append(Sample(due - start_mono, op, 0.0, "SKIPPED"))
            else:
                task = asyncio.create_task(timed(agent, op))
                pending.add(task)
                task.add_done_callback(pending.discard)
            due += agent.rng.expovariate(plan.rate)
        if pending:  # a handoff is two calls, each within CALL_TIMEOUT_S; the channels close next
            await asyncio.wait(pending, timeout=2 * CALL_TIMEOUT_S + 1)

    async def closed_loop(agent: Agent) -> None:
        await asyncio.sleep(max(0.0, warm_from - time.monotonic()))
        while time.monotonic() < end_mono:
            await timed(agent, agent.rng.choices(agent.ops, agent.weights)[0])

    async def progress() -> None:
        while time.monotonic() < end_mono:
            await asyncio.sleep(1.0)
            conn.send(("progress", len(samples), sum(s.status != "OK" for s in samples)))

    loop = closed_loop if plan.closed else open_loop
    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(loop(a) for a in agents))
    reporter.cancel()
    await target.close()
    return samples


def worker_main(plan: Plan, conn: Connection) -> None:
    try:
        samples = asyncio.run(run_worker(plan, conn))
        conn.send(("done", [(s.at, s.op, s.ms, s.status) for s in samples]))
    except Exception as exc:  # reported to the parent, which fails the run
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))


# -- around the workers: seeding, the probe, resources ----------------------------------------


def seed_users(addresses: Sequence[str], users: int, per_user: int, token: str) -> None:
    """``per_user`` observations for every user, 100 subjects per ObserveBatch, nodes in turn."""
    import grpc

    from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc

    md = (("authorization", f"Bearer {token}"),) if token else (("x-agent-id", "seeder"),)
    channels = [grpc.insecure_channel(a) for a in addresses]
    stubs = [selfmodel_pb2_grpc.SelfModelServiceStub(c) for c in channels]
    rng = random.Random(1)
    try:
        for first in range(0, users, 100):
            reqs = []
            for u in range(first, min(users, first + 100)):
                for _ in range(per_user):
                    c = rng.choice(CONTEXTS)
                    k = f"k{rng.randrange(KEYS_PER_CONTEXT)}"
                    reqs.append(
                        selfmodel_pb2.ObserveRequest(
                            subject=model_pb2.Subject(
                                tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=f"u-{u}"
                            ),
                            context=c,
                            key=k,
                            statement=f"{c} {k} statement 0",
                            confidence=0.7,
                        )
                    )
            stub = stubs[(first // 100) % len(stubs)]
            stub.ObserveBatch(
                selfmodel_pb2.ObserveBatchRequest(observations=reqs), metadata=md, timeout=60
            )
    finally:
        for c in channels:
            c.close()


class VisibilityProbe:
    """Every PROBE_EVERY_S an Observe on one node, in turn; watched on every other node."""

    def __init__(self, addresses: Sequence[str], token: str) -> None:
        from federation.client import Client

        self.addresses = list(addresses)
        kw: dict[str, Any] = {"token": token} if token else {"agent": "prober"}
        self.clients = [Client(a, tenant=TENANT, attempts=1, **kw) for a in addresses]
        self.acked: list[tuple[int, int, float]] = []  # (seq, node, ack time)
        self.seen: dict[tuple[int, int], float] = {}  # (seq, watcher) -> first seen
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._watch, args=(i,), daemon=True)
            for i in range(len(addresses))
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()
        threading.Thread(target=self._write, daemon=True).start()

    def _write(self) -> None:
        from federation.client import user

        seq = 0
        while not self.stop.wait(PROBE_EVERY_S):
            seq += 1
            node = seq % len(self.clients)
            with contextlib.suppress(Exception):
                self.clients[node].observe(
                    user("probe"), f"probe {seq}", confidence=0.9, context="probe", key="p"
                )
                self.acked.append((seq, node, time.monotonic()))

    def _watch(self, node: int) -> None:
        from federation.client import user

        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for view in self.clients[node].watch(user("probe"), timeout_s=5.0):
                    now = time.monotonic()
                    for b in view.all_beliefs:
                        seq = int(b.statement.split()[1])
                        self.seen.setdefault((seq, node), now)
                    if self.stop.is_set():
                        return
            self.stop.wait(0.1)

    def finish(self) -> list[float]:
        """Milliseconds from each probe's ack to its first sighting on each other node."""
        time.sleep(1.0)
        self.stop.set()
        lags = []
        for seq, node, acked in self.acked:
            for watcher in range(len(self.clients)):
                if watcher != node and (seq, watcher) in self.seen:
                    lags.append(max(0.0, self.seen[(seq, watcher)] - acked) * 1000)
        for c in self.clients:
            c.close()
        return lags


def scrape(address: str) -> dict[str, float]:
    """The unlabelled samples of a node's /metrics page."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def refused_writes(address: str) -> float:
    """How many agent writes a node refused while a peer's delta stream fell behind."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    prefix = "selfmodel_writes_refused_replication_behind_total{"
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@dataclass
class Resources:
    name: str
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    store_mb: float = 0.0
    max_lag_s: float | None = None  # the node's delta streams' replication lag, at most
    refused_writes: float | None = None  # agent writes refused for a peer falling behind


class ResourceWatch:
    """Samples each process's memory once a second (peak), CPU time at start and end, and
    with ``lags`` each node's replication lag (its most behind delta stream; the highest)."""

    def __init__(
        self,
        read: dict[str, Callable[[], tuple[float, float, float]]],
        lags: dict[str, Callable[[], float]] | None = None,
    ) -> None:
        self.read = read  # name -> () -> (rss MiB, cpu s, store MiB)
        self.lags = lags or {}
        self.found = {n: Resources(n) for n in read}
        self.cpu0 = {n: f()[1] for n, f in read.items()}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        for n, f in self.read.items():
            with contextlib.suppress(Exception):
                rss, cpu, store = f()
                r = self.found[n]
                r.peak_rss_mb = max(r.peak_rss_mb, rss)
                r.cpu_s = cpu - self.cpu0[n]
                r.store_mb = store
        for n, lag in self.lags.items():
            with contextlib.suppress(Exception):
                r = self.found[n]
                r.max_lag_s = max(r.max_lag_s or 0.0, lag())

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self._sample()

    def finish(self) -> list[Resources]:
        self.stop.set()
        self.thread.join(5)
        self._sample()
        return list(self.found.values())


def node_reader(metrics: str) -> Callable[[], tuple[float, float, float]]:
    def read() -> tuple[float, float, float]:
        m = scrape(metrics)
        return (
            m.get("process_resident_memory_bytes", 0) / 2**20,
            m.get("process_cpu_seconds_total", 0),
            m.get("selfmodel_store_bytes", 0) / 2**20,
        )

    return read


def lag_reader(address: str) -> Callable[[], float]:
    """A node's replication lag: its most behind delta stream's (Admin.GetStatus)."""
    from tests.nodes import node_status

    return lambda: max((p.lag_seconds for p in node_status(address).peers), default=0.0)


def process_reader(pid: int, store: Path) -> Callable[[], tuple[float, float, float]]:
    def read() -> tuple[float, float, float]:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        return rss / 1024, cpu, size / 2**20

    return read


# -- a run ----------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    visibility_ms: list[float] = field(default_factory=list)
    resources: list[Resources] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)  # where the nodes' CPU went

    def of(self, op: str) -> list[Sample]:
        return [s for s in self.samples if s.op == op]

    def errors(self) -> Counter[str]:
        return Counter(s.status for s in self.samples if s.status != "OK")


def drive(target: str, addresses: Sequence[str], args: argparse.Namespace) -> list[Sample]:
    """Runs the workers against ``addresses`` for the run's duration; their samples."""
    ctx = mp.get_context("spawn")
    start_at = time.time() + 3.0 + WARMUP_S  # after every worker has imported and connected
    workers = []
    for w in range(args.workers):
        plan = Plan(
            target,
            tuple(addresses),
            tuple(range(w, args.agents, args.workers)),
            args.users,
            args.skew,
            args.rate,
            args.closed,
            args.mix,
            args.duration,
            start_at,
            args.max_in_flight,
            args.seed + w,
            args.token or "",
        )
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(plan, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
    samples: list[Sample] = []
    progress = {w: (0, 0) for w in range(len(workers))}
    open_workers = set(range(len(workers)))
    deadline = start_at + args.duration + CALL_TIMEOUT_S + 30
    shown = start_at - 1.0  # the progress line, once a second from the measured start
    try:
        while open_workers and time.time() < deadline:
            for w in list(open_workers):
                conn = workers[w][1]
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == "progress":
                        progress[w] = (msg[1], msg[2])
                    elif msg[0] == "done":
                        samples += [Sample(*s) for s in msg[1]]
                        open_workers.discard(w)
                        break
                    else:
                        raise RuntimeError(f"worker {w} failed: {msg[1]}")
            if not args.quiet and time.time() >= shown + 1.0:
                shown = time.time()
                elapsed = max(0.0, time.time() - start_at)
                calls = sum(c for c, _ in progress.values())
                errs = sum(e for _, e in progress.values())
                print(
                    f"\r  {target}: {min(elapsed, args.duration):5.1f}/{args.duration:g} s  "
                    f"{calls} calls  {calls / max(elapsed, 0.1):7.1f} calls/s  {errs} errors ",
                    end="",
                    flush=True,
                )
            time.sleep(0.2)
        if open_workers:
            raise RuntimeError(f"workers {sorted(open_workers)} did not finish in time")
    finally:
        if not args.quiet:
            print()
        for proc, conn in workers:
            conn.close()
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
    return samples


def run_selfmodel(args: argparse.Namespace, tmp: Path) -> Result:
    from tests.harness import LocalCluster, node_sync_defaults, start_with_fresh_ports

    result = Result("selfmodel", args.duration)
    cluster = None
    if args.cluster:
        from federation import cluster as cluster_file

        spec = cluster_file.load(Path(args.cluster))
        addresses = [cluster_file.dial_address(n.address) for n in spec.nodes]
        metrics = {n.name: n.metrics for n in spec.nodes if n.metrics}
    else:
        names = [f"n{i + 1}" for i in range(args.nodes)]

        def make(attempt: int) -> LocalCluster:
            return LocalCluster(
                tmp / f"cluster-{attempt}",
                names,
                proxies=False,
                fsync=True,
                sync={**node_sync_defaults(), **args.sync},
            )

        cluster = start_with_fresh_ports(make)
        addresses = [cluster.address(n) for n in names]
        metrics = {
            n: f"127.0.0.1:{p.metrics_port}" for n, p in cluster.nodes.items() if p.metrics_port
        }
    try:
        if args.seed_per_user:
            seed_users(addresses, args.users, args.seed_per_user, args.token or "")
        readers = (  # a local node's from /proc: a scrape of /metrics a second costs it CPU
            {n: process_reader(p.proc.pid, p.data_dir) for n, p in cluster.nodes.items()}
            if cluster is not None
            else {n: node_reader(m) for n, m in metrics.items()}
        )
        lags = (
            {n: lag_reader(cluster.address(n)) for n in cluster.nodes}
            if cluster is not None
            else None
        )
        watch = ResourceWatch(readers, lags)
        probe = VisibilityProbe(addresses, args.token or "") if len(addresses) > 1 else None
        if probe is not None:
            probe.start()
        profile = None
        if args.profile and cluster is not None:
            pids = {n: p.proc.pid for n, p in cluster.nodes.items()}
            profile = NodeProfile.start(pids, 3.0 + WARMUP_S, args.duration)
        result.samples = drive("selfmodel", addresses, args)
        if profile is not None:
            result.profiles = profile.finish()
        result.visibility_ms = probe.finish() if probe is not None else []
        result.resources = watch.finish()
        for res in result.resources:
            if res.name in metrics:
                with contextlib.suppress(Exception):
                    res.refused_writes = refused_writes(metrics[res.name])
    finally:
        if cluster is not None:
            cluster.stop()
    return result


def run_redis(args: argparse.Namespace, tmp: Path) -> Result:
    from tests.harness import free_port

    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("--compare redis needs redis-server (Debian: apt install redis-server)")
    data = tmp / "redis"
    data.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    result = Result("redis", args.duration)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        rng = random.Random(1)
        with client.pipeline(transaction=False) as pipe:
            for u in range(args.users):
                for _ in range(args.seed_per_user):
                    c, k = rng.choice(CONTEXTS), f"k{rng.randrange(KEYS_PER_CONTEXT)}"
                    pipe.hset(f"u-{u}", f"{c}:{k}", f"{c} {k} statement 0")
            pipe.execute()
        client.close()
        watch = ResourceWatch({"redis": process_reader(proc.pid, data)})
        result.samples = drive("redis", [f"127.0.0.1:{port}"], args)
        result.resources = watch.finish()
    finally:
        proc.terminate()
        proc.wait(10)
    return result


# -- output ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def op_rows(result: Result) -> dict[str, dict[str, Any]]:
    rows = {}
    for op in OPS:
        mine = result.of(op)
        if not mine:
            continue
        ok = [s.ms for s in mine if s.status == "OK"]
        rows[op] = {
            "calls": len(mine),
            "per_s": len(ok) / result.duration_s,
            "p50_ms": pct(ok, 0.5),
            "p95_ms": pct(ok, 0.95),
            "p99_ms": pct(ok, 0.99),
            "errors": dict(Counter(s.status for s in mine if s.status != "OK")),
        }
    return rows


def render(results: Sequence[Result], args: argparse.Namespace) -> str:
    mode = "closed loop (saturation)" if args.closed else f"open loop, {args.rate:g} calls/s each"
    lines = [
        f"{args.agents} agents on {args.nodes} node(s), {mode}, {args.users} users (skew "
        f"{args.skew}), {args.duration:g} s measured after {WARMUP_S:g} s of warm-up; mix "
        + ", ".join(f"{op} {w:g}" for op, w in args.mix),
        "",
    ]
    rows = {r.target: op_rows(r) for r in results}
    head = "| operation | " + " | ".join(
        f"{r.target} calls/s | {r.target} p50 / p95 / p99 ms | {r.target} errors" for r in results
    )
    if len(results) == 2:
        head += " | p99 ratio |"
    else:
        head += " |"
    lines += [head, "|---" * (1 + 3 * len(results) + (len(results) == 2)) + "|"]
    for op in OPS:
        if not any(op in rows[r.target] for r in results):
            continue
        cells = []
        for r in results:
            row = rows[r.target].get(op)
            if row is None:
                cells += ["-", "-", "-"]
                continue
            cells += [
                f"{row['per_s']:.1f}",
                f"{row['p50_ms']:.2f} / {row['p95_ms']:.2f} / {row['p99_ms']:.2f}",
                ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or "0",
            ]
        if len(results) == 2:
            a, b = (rows[r.target].get(op) for r in results)
            cells.append(f"{a['p99_ms'] / b['p99_ms']:.1f}x" if a and b and b["p99_ms"] else "-")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    for r in results:
        total = len([s for s in r.samples if s.status == "OK"]) / r.duration_s
        lines.append("")
        lines.append(f"{r.target}: {total:.1f} calls/s answered, errors {dict(r.errors()) or 0}")
        if r.visibility_ms:
            lines.append(
                f"  visible on the other nodes: p50 {pct(r.visibility_ms, 0.5):.1f} ms, "
                f"p99 {pct(r.visibility_ms, 0.99):.1f} ms ({len(r.visibility_ms)} sightings)"
            )
        for res in r.resources:
            lag = (
                "" if res.max_lag_s is None else f", replication lag at most {res.max_lag_s:.1f} s"
            )
            if res.refused_writes is not None:
                lag += f", writes refused {res.refused_writes:.0f}"
            lines.append(
                f"  {res.name}: peak RSS {res.peak_rss_mb:.0f} MiB, CPU {res.cpu_s:.1f} s "
                f"({res.cpu_s / r.duration_s:.0%} of a CPU), store {res.store_mb:.1f} MiB{lag}"
            )
        lines.append(f"  keeps: {KEEPS[r.target]}")
        if r.profiles:
            lines += ["", render_profile(r.profiles, r.duration_s)]
    return "\n".join(lines)


def plot(results: Sequence[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        per_second: dict[int, list[float]] = defaultdict(list)
        for s in r.samples:
            if s.status == "OK":
                per_second[int(s.at)].append(s.ms)
        seconds = sorted(per_second)
        lat.plot(seconds, [pct(per_second[t], 0.5) for t in seconds], label=f"{r.target} p50")
        lat.plot(seconds, [pct(per_second[t], 0.99) for t in seconds], label=f"{r.target} p99")
        thr.plot(seconds, [len(per_second[t]) for t in seconds], label=r.target)
    lat.set_ylabel("latency, ms")
    lat.set_yscale("log")
    lat.legend()
    thr.set_ylabel("calls answered / s")
    thr.set_xlabel("seconds")
    thr.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--skew", type=float, default=1.1, help="Zipf exponent of user popularity")
    p.add_argument("--rate", type=float, default=5.0, help="calls/s per agent (open loop)")
    p.add_argument("--closed", action="store_true", help="call after call: saturation")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    p.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX))
    p.add_argument("--workers", type=int, default=2, help="load-generating processes")
    p.add_argument("--max-in-flight", type=int, default=512, help="per worker, open loop")
    p.add_argument("--seed-per-user", type=int, default=1)
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--cluster", help="a running cluster's file instead of a local one")
    p.add_argument("--token", default=os.environ.get("SELFMODEL_TOKEN"), help="bearer token")
    p.add_argument("--compare", choices=("redis",), default=None)
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--sync",
        type=parse_sync,
        default={},
        metavar="NAME=VALUE,...",
        help="[cluster.sync] settings of the local cluster (docs/operating.md), e.g. linger_s=0.05",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="where each node's CPU goes over the measured window (py-spy; a local cluster)",
    )
    args = p.parse_args(argv)
    if args.agents < 1 or args.nodes < 1 or args.workers < 1 or args.duration <= 0:
        p.error("--agents, --nodes, --workers and --duration must be positive")
    if args.cluster:
        from federation import cluster as cluster_file

        args.nodes = len(cluster_file.load(Path(args.cluster)).nodes)
    args.workers = min(args.workers, args.agents)
    return args


def run(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="selfmodel-load-", dir=args.data) as tmp:
        results = [run_selfmodel(args, Path(tmp))]
        if args.compare == "redis":
            results.append(run_redis(args, Path(tmp)))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    table = render(results, args)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    r.target: {
                        "operations": op_rows(r),
                        "visibility_ms": {
                            "p50": pct(r.visibility_ms, 0.5),
                            "p99": pct(r.visibility_ms, 0.99),
                        },
                        "resources": [vars(x) for x in r.resources],
                    }
                    for r in results
                },
                indent=1,
                default=str,
            )
        )
    if args.png is not None:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
