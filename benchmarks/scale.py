#!/usr/bin/env python3
"""Scale on one node: a million observations, and what a user's read costs then.

What runs (loopback only, data in a temporary directory removed afterwards unless --keep):

- one ``selfmodel node`` process, fsync on, its state cache at ``--cache-mb`` (default 64 MiB);
- the node is filled to ``--users`` users (default 10,000) of 100 observations each (5 agents x
  5 contexts x 4 keys: 20 beliefs per user, 5 sources behind each), 500 observations per
  ObserveBatch call, in two steps: the first ``--small-users`` users (default 10: 1,000
  observations), then the rest;
- after each step, ``--reads`` sequential GetSelfModel calls (default 500) of a probe user of the
  same shape, warm (its state cached) and, after the large step, reads of users drawn across the
  whole store (most of them cold: read from RocksDB and decoded);
- while the large step loads, a reader samples the probe user's read every 50 ms: the tail
  latency while RocksDB flushes and compacts;
- then the node is stopped and started again on the same data: the time until it serves.

It prints the probe read's p50/p99 at 1,000 and at the full size and their ratio (target: p99
within 1.5x), reads across users, the reads during loading, the load rate, the start-up time,
the store's size on disk and the node's peak memory beside its configured cache.

    python -m benchmarks.scale                               # 1,000,000 observations, ~5 min
    python -m benchmarks.scale --users 1000 --reads 200      # 100,000, under a minute
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from federation.client import Client, user
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.harness import NodeProcess

TENANT = "scale"
AGENTS = 5
CONTEXTS = ("purchase_motivation", "communication_style", "budget", "team_size", "channel")
KEYS = 4
PER_USER = AGENTS * len(CONTEXTS) * KEYS  # 100
BATCH = 500
PROBE = "probe"


def observations(users: Sequence[str], agent: int) -> list[selfmodel_pb2.ObserveRequest]:
    """One agent's 20 observations of each user: one per (context, key)."""
    out = []
    for uid in users:
        subject = model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=uid)
        for c in CONTEXTS:
            for k in range(KEYS):
                out.append(
                    selfmodel_pb2.ObserveRequest(
                        subject=subject,
                        context=c,
                        key=f"k{k}",
                        statement=f"{c} k{k} says agent {agent % 3} about {uid}",
                        confidence=0.6 + 0.05 * agent,
                    )
                )
    return out


def fill(address: str, users: Sequence[str]) -> float:
    """Writes 100 observations of each user; the observations per second it took."""
    per_call = BATCH // (len(CONTEXTS) * KEYS)  # users per call: 25
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        for agent in range(AGENTS):
            md = (("x-agent-id", f"agent-{agent}"),)
            for first in range(0, len(users), per_call):
                reqs = observations(users[first : first + per_call], agent)
                stub.ObserveBatch(
                    selfmodel_pb2.ObserveBatchRequest(observations=reqs), metadata=md, timeout=60
                )
    return len(users) * PER_USER / (time.monotonic() - started)


def reads_ms(client: Client, ids: Sequence[str]) -> list[float]:
    out = []
    for uid in ids:
        started = time.perf_counter()
        model = client.self_model(user(uid))
        out.append((time.perf_counter() - started) * 1000)
        assert len(model.all_beliefs) == len(CONTEXTS) * KEYS, f"{uid}: {len(model.all_beliefs)}"
    return out


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# What the node says it holds (/metrics), beside its resident memory.
MEMORY = (
    ("state cache", "selfmodel_state_cache_bytes"),
    ("snapshots and slot indexes", "selfmodel_snapshot_cache_bytes"),
    ("RocksDB (blocks and memtables)", "selfmodel_rocksdb_cache_bytes"),
    ("of which memtables", "selfmodel_rocksdb_memtable_bytes"),
    ("resident", "process_resident_memory_bytes"),
)


def memory_mb(exposition: str) -> dict[str, float]:
    found = {
        s.name: s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    return {label: found.get(name, float("nan")) / 2**20 for label, name in MEMORY}


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


@dataclass
class Report:
    observations: int = 0
    small_observations: int = 0
    small: list[float] = field(default_factory=list)
    large: list[float] = field(default_factory=list)
    across: list[float] = field(default_factory=list)
    during_load: list[float] = field(default_factory=list)
    after_restart: list[float] = field(default_factory=list)
    load_rate: float = 0.0
    startup_s: float = 0.0
    store_mb: float = 0.0
    peak_rss_mb: float = 0.0
    cache_mb: float = 0.0
    # After loading and reading across the store: what the node holds, in MiB (MEMORY).
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def p99_ratio(self) -> float:
        return pct(self.large, 0.99) / pct(self.small, 0.99)

    def render(self) -> str:
        def row(name: str, values: Sequence[float]) -> str:
            return (
                f"| {name} | {len(values)} | {pct(values, 0.5):.2f} | {pct(values, 0.99):.2f} "
                f"| {max(values, default=float('nan')):.2f} |"
            )

        small_n = self.small_observations
        lines = [
            "| GetSelfModel of a 20-belief, 100-observation user | reads | p50 ms | p99 ms "
            "| max ms |",
            "|---|--:|--:|--:|--:|",
            row(f"probe user, {small_n:,} observations stored", self.small),
            row(f"probe user, {self.observations:,} observations stored", self.large),
            row("users across the store (mostly cold)", self.across),
            row("probe user while the store was loading (flushes, compactions)", self.during_load),
            row("probe user after a restart", self.after_restart),
            "",
            f"p99 at {self.observations:,} / p99 at {small_n:,}: {self.p99_ratio:.2f}x "
            f"(target <= 1.5x: {'PASS' if self.p99_ratio <= 1.5 else 'MISS'})",
            f"load: {self.load_rate:,.0f} observations/s through ObserveBatch ({BATCH} a call); "
            f"start-up on the full store: {self.startup_s:.2f} s until serving",
            f"store on disk: {self.store_mb:,.1f} MiB; node peak RSS {self.peak_rss_mb:,.0f} MiB "
            f"with cache_mb {self.cache_mb:g}",
            "after loading and reading, in MiB: "
            + ", ".join(f"{label} {mb:,.0f}" for label, mb in self.memory.items()),
        ]
        return "\n".join(lines)


def run(args: argparse.Namespace) -> Report:
    report = Report(
        observations=(args.users + 1) * PER_USER,
        small_observations=(args.small_users + 1) * PER_USER,
        cache_mb=args.cache_mb,
    )
    tmp = Path(tempfile.mkdtemp(prefix="selfmodel-scale-", dir=args.data))
    node = NodeProcess("scale", tmp / "scale" / "data", ("--cache-mb", str(args.cache_mb)))
    try:
        node.start()
        assert node.proc is not None
        client = Client(node.address, agent="reader", tenant=TENANT)
        ids = [f"u-{i}" for i in range(args.users)]
        small, rest = ids[: args.small_users], ids[args.small_users :]
        fill(node.address, [PROBE, *small])
        reads_ms(client, [PROBE] * 20)  # warm-up
        report.small = reads_ms(client, [PROBE] * args.reads)

        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                report.during_load += reads_ms(client, [PROBE])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report.load_rate = fill(node.address, rest)
        stop.set()
        sampler.join(10)
        report.large = reads_ms(client, [PROBE] * args.reads)
        step = max(1, len(ids) // args.reads)
        report.across = reads_ms(client, ids[::step][: args.reads])
        report.peak_rss_mb = peak_rss_mb(node.proc.pid)
        report.memory = memory_mb(node.metrics())
        client.close()

        node.stop()
        report.store_mb = du_mb(node.data_dir)
        started = time.monotonic()
        node.start()
        report.startup_s = time.monotonic() - started
        with Client(node.address, agent="reader", tenant=TENANT) as again:
            report.after_restart = reads_ms(again, [PROBE] * min(args.reads, 200))
    finally:
        node.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000, help="users of 100 observations each")
    p.add_argument("--small-users", type=int, default=10)
    p.add_argument("--reads", type=int, default=500)
    p.add_argument("--cache-mb", type=float, default=64.0)
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not 0 < args.small_users < args.users or args.reads < 1:
        p.error("--small-users must be between 0 and --users, --reads positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(report.render())
    if args.json is not None:
        args.json.write_text(json.dumps(vars(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
