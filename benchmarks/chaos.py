#!/usr/bin/env python3
"""Chaos: real nodes under a bounded write load, a random fault every few seconds, then heal.

What runs (loopback only, data in a temporary directory removed afterwards unless --keep):

- N ``selfmodel node`` processes (tests.harness.LocalCluster), every directed link behind
  a fault proxy, with the node defaults (fsync on; anti-entropy every 10 s; backoff up to 5 s);
- writer threads (a few per node, paced, bounded in count and time) observing distinct keys of
  shared subjects, retracting some of their own earlier writes, and writing to a dedicated
  "forget" subject that a forgetter thread forgets every few seconds on a random node;
- a fault every few seconds, chosen with a seeded RNG: partition of one node, majority split
  (cut or blackholed links), kill -9 and restart, SIGSTOP then SIGCONT, delay on a node's links,
  an oversized subject (a writer on one node fills a subject of its own with 1.9 KB statements
  in batches until the node refuses a write past the subject limits; every acknowledged one must
  then be on every node, and GetSelfModel of it must work everywhere) (and, with --faults
  ...,stop, a clean stop and restart, whose restart may resume the actor),
  a clock jump (a node restarted with its clock 30 or 90 s ahead, then restarted with its clock
  fixed: beyond max_clock_offset_ms, peers hold its deltas back, unacknowledged, and the fixed
  node refuses writes until its wall clock catches up with the clock it saved);
  between two faults the cluster runs fault-free;
- probes during the fault-free periods: an Observe on one node, watched through WatchSelfModel
  on every other node (time-to-visible = first snapshot covering it minus the Observe ack);
- at the end (always inside a fault): stop the load, heal everything, measure the time until
  every node holds identical bucket hashes, then read every subject on every node.

Bookkeeping, as the clients saw it: a write is *acknowledged* when Observe answered; a failed
call (timeout, unavailable) has an unknown outcome and is not counted. Writers keep writing to
the previous forget subject too, after its forget. A write to a forget subject acknowledged
before the forget was issued counts as *forgotten* (it must be gone everywhere; if it is still
there the subject *came back*); one issued after the forget was acknowledged happened after it
and must be present (a forget never erases a later write: docs/semantics.md); one in between
was concurrent with it and is not counted (a forget orders writes by hybrid clock: while a
clock fault is in effect, "before" and "after" leave the margin by which the writing or the
forgetting node's timestamps may run ahead of real time). A write retracted with an
acknowledged Retract must be gone everywhere. Every other acknowledged write must be present
on every node, else it is *lost*. Exit code 1 when anything was lost, came back, or did not
converge.

    python -m benchmarks.chaos                         # 5 nodes, 120 s
    python -m benchmarks.chaos --nodes 3 --duration 30 --seed 7
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from federation.client import Client, user
from node.clock import CLOCK_OFFSET_ENV
from node.errors import ResourceExhausted, SelfModelError
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.hlc import physical_ms
from tests.harness import LocalCluster, start_with_fresh_ports

FAULTS = ("partition", "split", "kill", "pause", "delay", "oversize", "clock")
# Drawn only when asked for (--faults ...,stop), so that the default's seeds replay as before.
OPTIONAL_FAULTS = ("stop",)
FACTS = "facts"
PROBE = "probe"
PROBE_SUBJECT = "probe"
CALL_TIMEOUT_S = 2.0
# Probes start this long after a fault was undone, and stop this long before the next fault.
SETTLE_S = 0.5
GUARD_S = 1.0
# Probes this long after the last fault was undone are reported apart, as "settled".
SETTLED_S = 2.0

Key = tuple[str, str]  # (subject id, observation key)
# The cluster's max_clock_offset_ms (LocalCluster's default), in seconds: peers hold back
# timestamps further ahead of their clocks.
CLOCK_OFFSET_S = 60.0
# The oversize fault's statements: 1.9 KB each, as the writes that asked for subject limits.
FILLER = "lorem ipsum dolor sit amet " * 70
FILL_BATCH = 50
FILL_GRACE_S = 10.0  # how long the fault's undo waits for the fill to reach the limit


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Chaos run of a local selfmodel cluster: faults under write load, then heal "
        "and check that no acknowledged write was lost and no forgotten subject came back.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=5, help="number of node processes (2-9)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed)")
    p.add_argument("--fault-every", type=float, default=6.0, help="seconds per fault cycle")
    p.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated fault kinds to draw from: {', '.join(FAULTS + OPTIONAL_FAULTS)}"
        f" (default: {', '.join(FAULTS)}); or none (a baseline: the same load and probes "
        "without faults)",
    )
    p.add_argument("--writers-per-node", type=int, default=2, help="writer threads per node")
    p.add_argument("--rate", type=float, default=100.0, help="writes/s across the cluster")
    p.add_argument("--retract-ratio", type=float, default=0.05, help="share of retractions")
    p.add_argument("--forget-ratio", type=float, default=0.05, help="share of writes to forget")
    p.add_argument("--forget-every", type=float, default=8.0, help="seconds between forgets")
    p.add_argument("--probe-every", type=float, default=0.1, help="seconds between probes")
    p.add_argument("--converge-timeout", type=float, default=120.0, help="seconds, after heal")
    p.add_argument("--no-fsync", action="store_true", help="nodes without fsync (WAL still on)")
    p.add_argument("--anti-entropy-s", type=float, default=10.0, help="node anti-entropy period")
    p.add_argument("--backoff-max-s", type=float, default=5.0, help="node reconnect backoff cap")
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data directory")
    p.add_argument("--keep", action="store_true", help="keep the data directory and node logs")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--json", type=Path, default=None, help="write the probe samples here")
    args = p.parse_args(argv)
    if not 2 <= args.nodes <= 9:
        p.error("--nodes must be within 2..9")
    unknown = set(args.faults.split(",")) - {*FAULTS, *OPTIONAL_FAULTS, "none"}
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS + OPTIONAL_FAULTS)}")
    if args.duration <= 0 or args.fault_every < 1.0 or args.rate <= 0:
        p.error("--duration and --rate must be positive, --fault-every at least 1 s")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


# -- what the clients saw ------------------------------------------------------------------


@dataclass
class Forget:
    subject: str
    issued_at: float
    node: str
    ok: bool = False
    acked_at: float = float("inf")


@dataclass
class Skew:
    """A clock fault: ``node`` ran ``ahead`` seconds ahead from ``start`` until ``fixed``."""

    node: str
    start: float
    ahead: float
    fixed: float = float("inf")


def writer(key: Key) -> str:
    """The node a write was made on (its key is ``<node>-w<n>-<i>``)."""
    return key[1].rsplit("-", 2)[0]


@dataclass
class Probe:
    seq: int
    node: str
    acked_at: float
    since_undo: float  # seconds since the last fault was undone


class Ledger:
    """Acknowledged writes, retractions and forgets, with the time each was acknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[Key, float] = {}
        self.issued: dict[Key, float] = {}  # of acknowledged writes: when the call was made
        self.failed: set[Key] = set()
        self.retracted: set[Key] = set()
        self.retract_missed: list[Key] = []
        self.forgets: list[Forget] = []
        self.errors: Counter[str] = Counter()
        # Per oversized subject: acknowledged observations, and whether a write reached the limit.
        self.filled: dict[str, tuple[int, bool]] = {}

    def error(self, what: str, exc: BaseException) -> None:
        code = getattr(exc.__cause__, "code", None)
        name = code().name if callable(code) else type(exc).__name__
        with self.lock:
            self.errors[f"{what} {name}"] += 1


class Window:
    """Whether the cluster is fault-free now, and until when (for the probes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_from = float("inf")
        self._open_until = 0.0
        self.undone_at = time.monotonic()

    def open(self, until: float) -> None:
        """Called when the last fault was undone (or before the first one)."""
        with self._lock:
            self.undone_at = time.monotonic()
            self._open_from, self._open_until = self.undone_at + SETTLE_S, until - GUARD_S

    def close(self) -> None:
        with self._lock:
            self._open_from, self._open_until = float("inf"), 0.0

    def is_open(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return self._open_from <= now < self._open_until


class Clients:
    """One client per (node, agent), replaced after a failure so a restarted node is reached
    at once instead of after the channel's reconnect backoff."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._clients: dict[tuple[str, str], Client] = {}
        self._lock = threading.Lock()

    def get(self, node: str, agent: str) -> Client:
        with self._lock:
            c = self._clients.get((node, agent))
            if c is None:
                c = self.cluster.client(node, agent, timeout_s=CALL_TIMEOUT_S, attempts=1)
                self._clients[(node, agent)] = c
            return c

    def drop(self, node: str, agent: str) -> None:
        with self._lock:
            c = self._clients.pop((node, agent), None)
        if c is not None:
            c.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


# -- load ----------------------------------------------------------------------------------


class Load:
    """Writers, a forgetter, a prober and watchers; every loop ends on ``stop`` or its deadline."""

    def __init__(
        self, cluster: LocalCluster, args: argparse.Namespace, deadline: float, window: Window
    ) -> None:
        self.cluster = cluster
        self.args = args
        self.deadline = deadline
        self.window = window
        self.names = sorted(cluster.nodes)
        self.ledger = Ledger()
        self.clients = Clients(cluster)
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._forget_lock = threading.Lock()
        self._forget_index = 0
        self.probes: list[Probe] = []
        # (watching node, writing node) -> [(seen at, probe seq)] in arrival order
        self.seen: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
        self._watch_clients: dict[str, Client] = {}
        self._watch_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def forget_subject(self, rng: random.Random) -> str:
        """The subject the forgetter forgets next, or (half the time) the one it forgot last."""
        with self._forget_lock:
            index = self._forget_index
        if index and rng.random() < 0.5:
            index -= 1
        return f"forget-{index}"

    def start(self) -> None:
        rng = random.Random(self.args.seed)
        per_writer = self.args.rate / (len(self.names) * self.args.writers_per_node)
        for node in self.names:
            for w in range(self.args.writers_per_node):
                seed = rng.randrange(1 << 30)
                self._spawn(f"writer-{node}-{w}", self._writer, node, w, per_writer, seed)
            self._spawn(f"watch-{node}", self._watcher, node)
        self._spawn("forgetter", self._forgetter, rng.randrange(1 << 30))
        self._spawn("prober", self._prober)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def finish(self) -> None:
        self.stop.set()
        with self._watch_lock:
            watches = list(self._watch_clients.values())
        for c in watches:
            c.close()  # cancels the watch streams
        for t in self._threads:
            t.join(CALL_TIMEOUT_S * 3)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            print(f"warning: threads still running after stop: {alive}", flush=True)
        self.clients.close()

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _paced(self, interval: float) -> Iterator[int]:
        """Yields at a steady pace; a late call skips its missed slots rather than bursting."""
        next_at, i = time.monotonic(), 0
        while self._running():
            now = time.monotonic()
            if next_at > now:
                self.stop.wait(next_at - now)
                if not self._running():
                    return
            elif now - next_at > interval:
                next_at = now
            next_at += interval
            yield i
            i += 1

    def _writer(self, node: str, w: int, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        agent = f"{node}-w{w}"
        ledger, args = self.ledger, self.args
        mine: list[Key] = []  # own acknowledged writes to regular subjects, retractable
        for i in self._paced(1.0 / rate):
            roll = rng.random()
            if roll < args.retract_ratio and mine:
                j = rng.randrange(len(mine))
                mine[j], mine[-1] = mine[-1], mine[j]
                key = mine.pop()
                try:
                    count = self.clients.get(node, agent).retract(user(key[0]), FACTS, key[1]).count
                except SelfModelError as exc:
                    self.clients.drop(node, agent)
                    ledger.error("retract", exc)
                    with ledger.lock:
                        ledger.failed.add(key)
                    continue
                with ledger.lock:
                    if count == 1:
                        ledger.retracted.add(key)
                    else:  # its own acknowledged write, on its own node: must be there
                        ledger.retract_missed.append(key)
                continue
            if roll < args.retract_ratio + args.forget_ratio:
                subject, regular = self.forget_subject(rng), False
            else:
                epoch = int((time.monotonic() - self.started) // 10)
                subject, regular = f"s{epoch}-{rng.randrange(16)}", True
            key = (subject, f"{agent}-{i}")
            issued_at = time.monotonic()
            try:
                self.clients.get(node, agent).observe(
                    user(subject), f"{agent} fact {i}", confidence=0.8, context=FACTS, key=key[1]
                )
            except SelfModelError as exc:
                self.clients.drop(node, agent)
                ledger.error("observe", exc)
                with ledger.lock:
                    ledger.failed.add(key)
                continue
            acked_at = time.monotonic()
            with ledger.lock:
                ledger.acked[key] = acked_at
                ledger.issued[key] = issued_at
            if regular:
                mine.append(key)

    def fill(self, node: str, subject: str, stop: threading.Event) -> None:
        """Fills ``subject`` on ``node`` until the node refuses a write past the subject limits
        (in batches, then one by one), or ``stop``. A refused batch is written not at all."""
        agent = f"{node}-filler"
        ledger, step, i, limited = self.ledger, FILL_BATCH, 0, False
        target = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id=subject)
        for _ in range(2000):
            if stop.is_set() or not self._running():
                break
            keys = [(subject, f"fill-{i + j}") for j in range(step)]
            batch = [
                selfmodel_pb2.ObserveRequest(
                    subject=target, context=FACTS, key=k, statement=f"{k} {FILLER}", confidence=0.8
                )
                for _, k in keys
            ]
            try:
                self.clients.get(node, agent).observe_batch(batch)
            except ResourceExhausted:
                if step == 1:
                    limited = True
                    break
                step = 1
                continue
            except SelfModelError as exc:
                self.clients.drop(node, agent)
                ledger.error("fill", exc)
                with ledger.lock:
                    ledger.failed.update(keys)
                i += step
                continue
            acked_at = time.monotonic()
            with ledger.lock:
                for key in keys:
                    ledger.acked[key] = acked_at
            i += step
        with ledger.lock:
            taken = sum(1 for key in ledger.acked if key[0] == subject)
            ledger.filled[subject] = (taken, limited)

    def _forgetter(self, seed: int) -> None:
        rng = random.Random(seed)
        interval = self.args.forget_every
        while self._running():
            self.stop.wait(interval * rng.uniform(0.7, 1.3))
            if not self._running():
                return
            with self._forget_lock:
                subject = f"forget-{self._forget_index}"
                self._forget_index += 1  # writers move on to the next forget subject
            node = rng.choice(self.names)
            forget = Forget(subject, time.monotonic(), node)
            try:
                self.clients.get(node, "forgetter").forget(user(subject))
                forget.ok = True
                forget.acked_at = time.monotonic()
            except SelfModelError as exc:
                self.clients.drop(node, "forgetter")
                self.ledger.error("forget", exc)
            with self.ledger.lock:
                self.ledger.forgets.append(forget)

    def _prober(self) -> None:
        seq, turn = 0, 0
        for _ in self._paced(self.args.probe_every):
            if not self.window.is_open():
                continue
            node = self.names[turn % len(self.names)]
            turn += 1
            seq += 1
            try:
                self.clients.get(node, "prober").observe(
                    user(PROBE_SUBJECT), f"probe {seq}", confidence=0.9, context=PROBE,
                    key=f"p-{node}",
                )  # fmt: skip
            except SelfModelError as exc:
                self.clients.drop(node, "prober")
                self.ledger.error("probe", exc)
                continue
            acked_at = time.monotonic()
            self.probes.append(Probe(seq, node, acked_at, acked_at - self.window.undone_at))

    def _watcher(self, node: str) -> None:
        while self._running():
            client = self.cluster.client(node, "watcher", attempts=1)
            with self._watch_lock:
                self._watch_clients[node] = client
            # The deadline bounds a stream that finish() could not cancel (a race with it).
            bound_s = self.deadline - time.monotonic() + CALL_TIMEOUT_S
            try:
                if not self._running():
                    break
                for view in client.watch(user(PROBE_SUBJECT), contexts=[PROBE], timeout_s=bound_s):
                    now = time.monotonic()
                    for b in view.all_beliefs:
                        self.seen[(node, b.key[2:])].append((now, int(b.statement.split()[1])))
                    if not self._running():
                        break
            except SelfModelError:
                pass  # its node is down or paused: watch again
            finally:
                client.close()
            self.stop.wait(0.2)


# -- faults --------------------------------------------------------------------------------


class Faults:
    """Applies one fault at a time and undoes it; remembers what is down for the final heal."""

    def __init__(self, cluster: LocalCluster, rng: random.Random, kinds: Sequence[str]) -> None:
        self.cluster = cluster
        self.rng = rng
        self.kinds = list(kinds)
        self.names = sorted(cluster.nodes)
        self.killed: set[str] = set()
        self.paused: set[str] = set()
        self.skewed: set[str] = set()
        self.skews: list[Skew] = []
        self.restart_s: list[float] = []
        # Set by run: fills a subject (the oversize fault); its subjects are numbered.
        self.fill: Callable[[str, str, threading.Event], None] | None = None
        self.fills = 0

    def apply(self) -> tuple[str, str, Callable[[], None]]:
        """Starts a random fault; returns its kind, its description and how to undo it."""
        kind = self.rng.choice(self.kinds)
        c, names, rng = self.cluster, self.names, self.rng
        victim = rng.choice(names)
        if kind == "none":
            return kind, "no fault (baseline)", lambda: None
        if kind in ("partition", "split"):
            size = 1 if kind == "partition" else max(1, len(names) // 2)
            minority = sorted(rng.sample(names, size))
            rest = [n for n in names if n not in minority]
            mode = rng.choice(["cut", "blackhole"])
            c.partition(minority, rest, mode=mode)  # type: ignore[arg-type]
            return kind, f"{kind} {'+'.join(minority)} | {'+'.join(rest)} ({mode})", c.heal
        if kind == "kill":
            c.nodes[victim].kill()
            self.killed.add(victim)
            return kind, f"kill -9 {victim}, then restart", lambda: self._restart(victim)
        if kind == "stop":  # a clean stop: the restart may resume the node's actor
            c.nodes[victim].stop()
            self.killed.add(victim)
            return kind, f"stop {victim} (SIGTERM), then restart", lambda: self._restart(victim)
        if kind == "oversize" and self.fill is not None:
            subject = f"oversize-{self.fills}"
            self.fills += 1
            stop = threading.Event()
            filler = threading.Thread(
                target=self.fill, args=(victim, subject, stop), name="filler", daemon=True
            )
            filler.start()

            def undo() -> None:  # the fill may finish (it takes a few seconds), then stops
                filler.join(FILL_GRACE_S)
                stop.set()
                filler.join(CALL_TIMEOUT_S * 3)

            return kind, f"fill {subject} on {victim} up to the subject limits", undo
        if kind == "clock":  # the node runs with its clock ahead, then with it fixed
            ahead_ms = rng.choice((30_000, 90_000))
            self._set_clock(victim, ahead_ms)
            return (
                kind,
                f"clock of {victim} {ahead_ms // 1000} s ahead (restart), then fixed (restart)",
                lambda: self._set_clock(victim, 0),
            )
        if kind == "pause":
            c.nodes[victim].pause()
            self.paused.add(victim)
            return kind, f"SIGSTOP {victim}, then SIGCONT", lambda: self._resume(victim)
        delay = round(rng.uniform(0.05, 0.4), 3)
        for other in names:
            if other != victim:
                c.links(victim, other, "delay", delay_s=delay)
        return kind, f"delay {delay * 1000:.0f} ms on every link of {victim}", c.heal

    def _restart(self, name: str) -> None:
        started = time.monotonic()
        self.cluster.nodes[name].start()
        self.restart_s.append(time.monotonic() - started)
        self.killed.discard(name)

    def _set_clock(self, name: str, ahead_ms: int) -> None:
        """Restarts ``name`` with its wall clock ``ahead_ms`` off (node.server's test-only
        offset); 0 fixes it."""
        node = self.cluster.nodes[name]
        node.stop()
        self.killed.add(name)
        env = {k: v for k, v in node.env.items() if k != CLOCK_OFFSET_ENV}
        if ahead_ms:
            env[CLOCK_OFFSET_ENV] = str(ahead_ms)
            self.skewed.add(name)
            self.skews.append(Skew(name, time.monotonic(), ahead_ms / 1000))
        else:
            self.skewed.discard(name)
            for skew in self.skews:
                if skew.node == name:
                    skew.fixed = min(skew.fixed, time.monotonic())
        node.env = env
        self._restart(name)

    def _resume(self, name: str) -> None:
        self.cluster.nodes[name].resume()
        self.paused.discard(name)

    def heal_all(self) -> None:
        self.cluster.heal()
        for name in sorted(self.paused):
            self._resume(name)
        for name in sorted(self.killed):
            self._restart(name)
        for name in sorted(self.skewed):
            self._set_clock(name, 0)


# -- report --------------------------------------------------------------------------------


@dataclass
class Report:
    nodes: int
    seed: int
    duration_s: float
    fsync: bool
    faults: list[str] = field(default_factory=list)
    fault_kinds: list[str] = field(default_factory=list)
    acknowledged: int = 0  # acknowledged Observe calls (all subjects but the probe)
    retracted: int = 0  # of those, retracted by an acknowledged Retract
    forgotten: int = 0  # of those, written to a subject before its acknowledged forget
    after_forget: int = 0  # of those, issued after the forget was acknowledged: must be present
    concurrent_with_forget: int = 0  # written while a forget was in flight (not counted)
    uncertain: int = 0  # a later Retract or the forget failed: outcome unknown (not counted)
    failed_calls: int = 0
    forgets: int = 0
    forgets_failed: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    resurrected: int = 0  # forgotten subjects that came back
    resurrected_examples: list[str] = field(default_factory=list)
    retracted_back: int = 0  # retracted writes present again
    retract_missed: int = 0  # a Retract of its own acknowledged write found nothing
    oversized: int = 0  # subjects the oversize fault filled
    oversized_to_limit: int = 0  # of those, filled until the node refused a write
    converged: bool = False
    convergence_s: float = float("nan")
    restart_s: list[float] = field(default_factory=list)
    visible_ms: list[float] = field(default_factory=list)
    visible_settled_ms: list[float] = field(default_factory=list)
    # (seconds into the run, seconds since the last fault was undone, ms to visible,
    #  writing node, watching node)
    samples: list[tuple[float, float, float, str, str]] = field(default_factory=list)
    probes: int = 0
    probes_unseen: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error: str = ""
    data_dir: str = ""

    @property
    def passed(self) -> bool:
        return (
            not self.error
            and self.converged
            and self.lost == 0
            and self.resurrected == 0
            and self.retracted_back == 0
            and self.retract_missed == 0
        )

    def visible_p(self, q: float, settled: bool = False) -> float:
        return percentile(sorted(self.visible_settled_ms if settled else self.visible_ms), q)

    def render(self) -> str:
        def verdict(n: int) -> str:
            return "ok" if n == 0 else "FAIL"

        kinds = Counter(self.fault_kinds)
        lines = [
            f"faults                       {len(self.faults):>8}   "
            + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())),
            f"acknowledged writes          {self.acknowledged:>8}",
            f"  retracted (acknowledged)   {self.retracted:>8}",
            f"  forgotten (before forget)  {self.forgotten:>8}   in {self.forgets} forgets "
            f"({self.forgets_failed} failed)",
            f"  after a forget             {self.after_forget:>8}   must be present",
            f"  concurrent with a forget   {self.concurrent_with_forget:>8}   not counted",
            f"  uncertain                  {self.uncertain:>8}   not counted (a later call failed)",
            f"failed calls (not counted)   {self.failed_calls:>8}",
            f"lost writes                  {self.lost:>8}   must be 0: {verdict(self.lost)}",
            f"forgotten subjects back      {self.resurrected:>8}   must be 0: "
            f"{verdict(self.resurrected)}",
            f"retracted writes back        {self.retracted_back:>8}   must be 0: "
            f"{verdict(self.retracted_back)}",
            f"retracts that found nothing  {self.retract_missed:>8}   must be 0: "
            f"{verdict(self.retract_missed)}",
            (
                f"convergence after heal       {self.convergence_s:>8.2f} s (identical bucket "
                "hashes on all nodes)"
                if self.converged
                else "convergence after heal          NEVER (timed out)"
            ),
            f"time-to-visible, fault-free  p50 {self.visible_p(0.5):.1f} ms, "
            f"p99 {self.visible_p(0.99):.1f} ms, max {max(self.visible_ms, default=0):.1f} ms "
            f"({len(self.visible_ms)} samples of {self.probes} probes, from {SETTLE_S:g} s after "
            f"a fault was undone; {self.probes_unseen} never seen)",
            f"  of which settled           p50 {self.visible_p(0.5, True):.1f} ms, "
            f"p99 {self.visible_p(0.99, True):.1f} ms ({len(self.visible_settled_ms)} samples, "
            f"from {SETTLED_S:g} s after a fault was undone)",
        ]
        if self.oversized:
            lines.append(
                f"oversized subjects           {self.oversized:>8}   "
                f"({self.oversized_to_limit} filled until a write was refused at the limit)"
            )
        if self.restart_s:
            lines.append(
                f"restarts (kill -9 or stop)   {len(self.restart_s):>8}   "
                f"(max {max(self.restart_s):.1f} s to healthy)"
            )
        if self.lost_examples:
            lines.append(f"  lost, e.g.: {', '.join(self.lost_examples)}")
        if self.resurrected_examples:
            lines.append(f"  came back, e.g.: {', '.join(self.resurrected_examples)}")
        if self.errors:
            top = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))
            lines.append(f"client errors during faults: {top}")
        if self.error:
            lines.append(f"ERROR: {self.error}")
        lines.append(f"RESULT: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def visibility(load: Load, report: Report) -> None:
    """Per probe and per other node: first watch snapshot covering it, minus the probe's ack."""
    report.probes = len(load.probes)
    index: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for pair, events in load.seen.items():
        seqs, times, top = [], [], 0
        for at, seq in events:
            top = max(top, seq)  # a probe's slot only moves forward; keep it monotonic anyway
            seqs.append(top)
            times.append(at)
        index[pair] = (seqs, times)
    for probe in load.probes:
        for watcher in load.names:
            if watcher == probe.node:
                continue
            seqs, times = index.get((watcher, probe.node), ([], []))
            i = bisect.bisect_left(seqs, probe.seq)
            if i == len(seqs):
                report.probes_unseen += 1
                continue
            latency_ms = max(0.0, times[i] - probe.acked_at) * 1000
            report.visible_ms.append(latency_ms)
            if probe.since_undo >= SETTLED_S:
                report.visible_settled_ms.append(latency_ms)
            at = probe.acked_at - load.started
            report.samples.append((at, probe.since_undo, latency_ms, probe.node, watcher))


def push(skews: Sequence[Skew], node: str, at: float) -> float:
    """How far ahead of real time a hybrid timestamp ``node`` mints at ``at`` may be: its own
    clock fault's offset while it runs skewed; else the offset (at most the peers' allowed
    offset, beyond which they hold its timestamps back) of a fault whose timestamps the node
    may have merged, until the wall clock catches up with them."""
    most = 0.0
    for k in skews:
        if k.node == node and k.start <= at <= k.fixed:
            most = max(most, k.ahead)
        elif k.start + max(0.0, k.ahead - CLOCK_OFFSET_S) <= at <= k.fixed + k.ahead:
            most = max(most, min(k.ahead, CLOCK_OFFSET_S))
    return most


def erase_bounds(cluster: LocalCluster, subjects: Sequence[str]) -> dict[str, float]:
    """Each subject's erase bound (wall-clock seconds) as a node holds it once converged, read
    as a peer reads it (ExchangeStates of empty states answers the node's own)."""
    if not subjects:
        return {}
    name, other = sorted(cluster.nodes)[:2]
    ask = sync_pb2.ExchangeStatesRequest(
        states=[
            sync_pb2.SubjectState(
                subject=model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id=s)
            )
            for s in subjects
        ]
    )
    with cluster.peer_channel(name, other) as channel:
        reply = sync_pb2_grpc.SyncServiceStub(channel).ExchangeStates(
            ask, timeout=10.0, metadata=cluster.peer_metadata(other)
        )
    return {s.subject.id: physical_ms(s.erased.hlc) / 1000 for s in reply.states if s.erased.hlc}


def audit(
    cluster: LocalCluster, ledger: Ledger, report: Report, skews: Sequence[Skew] = ()
) -> None:
    """Reads every subject on every node and classifies every acknowledged write.

    A forget erases what happened before it by hybrid clock (docs/semantics.md); with a clock
    fault in effect, timestamps may run ahead of real time, so "before" leaves that margin and
    "after" is judged against the subject's erase bound itself."""
    forgotten: set[Key] = set()
    not_counted: set[Key] = set(ledger.failed)
    resurrect_candidates: dict[str, set[Key]] = {}
    by_subject: dict[str, list[Key]] = defaultdict(list)
    for key in ledger.acked:
        by_subject[key[0]].append(key)
    wall = time.time() - time.monotonic()  # monotonic seconds to wall-clock seconds
    bounds = erase_bounds(cluster, sorted({f.subject for f in ledger.forgets if f.ok}))
    for f in ledger.forgets:
        keys = by_subject.get(f.subject, [])
        if not f.ok:
            not_counted.update(keys)
            continue
        # Before a forget: acknowledged, with its node's timestamps as far ahead as a clock
        # fault let them be, before the forget was issued. After the subject's erase bound:
        # issued after the bound's time (a hybrid clock is never behind its wall clock).
        bound = bounds.get(f.subject)
        before = {
            k
            for k in keys
            if ledger.acked[k] + push(skews, writer(k), ledger.acked[k]) < f.issued_at
        }
        after = {k for k in keys if bound is not None and ledger.issued[k] + wall > bound}
        concurrent = set(keys) - before - after
        forgotten |= before
        report.after_forget += len(after)  # not in not_counted: expected present
        report.concurrent_with_forget += len(concurrent)
        not_counted |= concurrent
        resurrect_candidates[f.subject] = before
    report.acknowledged = len(ledger.acked)
    report.retracted = len(ledger.retracted)
    report.forgotten = len(forgotten)
    report.uncertain = len(not_counted & set(ledger.acked)) - report.concurrent_with_forget
    report.failed_calls = sum(ledger.errors.values())
    report.forgets = len(ledger.forgets)
    report.forgets_failed = sum(not f.ok for f in ledger.forgets)
    report.retract_missed = len(ledger.retract_missed)
    expected = set(ledger.acked) - ledger.retracted - forgotten - not_counted
    lost: set[Key] = set()
    back: set[Key] = set()
    came_back: set[str] = set()
    for name in sorted(cluster.nodes):
        with cluster.client(name, "auditor", timeout_s=10.0) as c:
            present: set[Key] = set()
            for subject in sorted(by_subject):
                view = c.self_model(user(subject), contexts=[FACTS], include_uncertain=True)
                present.update((subject, b.key) for b in view.all_beliefs)
        lost |= expected - present
        back |= ledger.retracted & present
        for subject, before in resurrect_candidates.items():
            if before & present:
                came_back.add(subject)
    report.lost = len(lost)
    report.lost_examples = [f"{s}/{k}" for s, k in sorted(lost)[:5]]
    report.retracted_back = len(back)
    report.resurrected = len(came_back)
    report.resurrected_examples = sorted(came_back)[:5]


# -- run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    """One chaos run; never leaves a process behind (the cluster is stopped in ``finally``)."""
    say: Callable[[str], None] = (lambda _: None) if args.quiet else lambda s: print(s, flush=True)
    report = Report(args.nodes, args.seed, args.duration, fsync=not args.no_fsync)
    rng = random.Random(args.seed)
    names = [f"n{i}" for i in range(1, args.nodes + 1)]
    parent = args.data or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="selfmodel-chaos-", dir=parent))
    report.data_dir = str(root)
    print(
        f"chaos: {args.nodes} nodes, {args.duration:.0f} s, seed {args.seed}, "
        f"fsync {'off' if args.no_fsync else 'on'}, {args.writers_per_node} writers/node, "
        f"{args.rate:g} writes/s, a fault every ~{args.fault_every:g} s from {args.faults}",
        flush=True,
    )

    def make(attempt: int) -> LocalCluster:
        return LocalCluster(
            root / f"cluster{attempt}",
            names,
            sync={"anti_entropy_s": args.anti_entropy_s, "backoff_max_s": args.backoff_max_s},
            fsync=not args.no_fsync,
        )

    cluster: LocalCluster | None = None
    load: Load | None = None
    try:
        cluster = start_with_fresh_ports(make)
        cluster.wait_converged(timeout_s=30)
        window = Window()
        faults = Faults(cluster, rng, args.faults.split(","))
        started = time.monotonic()
        end = started + args.duration
        load = Load(cluster, args, end + 1.0, window)
        faults.fill = load.fill
        load.start()
        while True:
            quiet = args.fault_every * rng.uniform(0.4, 0.6)
            hold = args.fault_every - quiet
            quiet = max(0.5, min(quiet, end - time.monotonic() - 1.0))  # the last fault ends it
            window.open(time.monotonic() + quiet)
            time.sleep(quiet)
            window.close()
            kind, what, undo = faults.apply()
            at = time.monotonic() - started
            last = end - time.monotonic() <= hold + 1.0
            report.faults.append(f"t={at:.1f}s {what}")
            report.fault_kinds.append(kind)
            say(f"  t={at:6.1f}s  {what}{'  (held until the end)' if last else ''}")
            if last:
                time.sleep(max(1.0, end - time.monotonic()))
                break
            time.sleep(hold)
            undo()
        load.finish()
        healing = time.monotonic()
        faults.heal_all()
        say(
            f"  t={time.monotonic() - started:6.1f}s  load stopped; healed everything "
            f"in {time.monotonic() - healing:.1f} s"
        )
        try:
            report.convergence_s = cluster.wait_converged(timeout_s=args.converge_timeout)
            report.converged = True
        except TimeoutError:
            report.converged = False
        report.restart_s = faults.restart_s
        visibility(load, report)
        audit(cluster, load.ledger, report, faults.skews)
        report.errors = dict(load.ledger.errors)
        report.oversized = len(load.ledger.filled)
        report.oversized_to_limit = sum(limited for _, limited in load.ledger.filled.values())
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if load is not None and not load.stop.is_set():
            load.finish()
        if cluster is not None:
            cluster.stop()
        if args.keep or not report.passed:
            print(f"data and node logs kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except Exception as exc:
        print(f"chaos run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report.render(), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(dataclasses.asdict(report)))
    print(f"seed {report.seed} (replay: --seed {report.seed})", flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
