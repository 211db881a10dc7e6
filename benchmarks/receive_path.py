#!/usr/bin/env python3
"""What a peer's CPU does for one replicated write, back to back and paced, beside a floor.

In-process, no gRPC: a receiving engine on a real RocksDB store (fsync on, as a node runs)
takes deltas written by an origin engine and does what a node does between its Sync stream
and a watcher's snapshot:

    decode the SubjectState, check its bounds, merge it with the origin's position (not
    durable, as the Sync servicer does), then resolve the subject and build and serialize
    the watch snapshot

The floor does the least any receiver must: parse the same delta bytes with protobuf, keep
them in a dict, and serialize a snapshot of the same size.

Each runs twice: back to back (caches warm) and paced at ``--rate`` steps per second, the
replication benchmark's 100 writes/s, where the CPU idles between steps. It prints the CPU
time of a step (``time.thread_time``), p50 and p99, and the ratios node/floor and
paced/back-to-back. The second ratio is why a write at 100 writes/s costs a node several times
the CPU that back-to-back figures suggest: code and data that must come back into cold caches
cost in proportion to how much of them a step touches.

    python benchmarks/receive_path.py
    python benchmarks/receive_path.py --steps 2000 --rate 100 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "protos", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from node import convert, validation  # noqa: E402
from node.engine import Engine, ObservationInput  # noqa: E402
from node.resolution import select  # noqa: E402
from node.store import Store  # noqa: E402
from selfmodel.v1 import sync_pb2  # noqa: E402
from sync.codec import delta_from_proto  # noqa: E402
from sync.observation import Subject, SubjectKind  # noqa: E402

SUBJECTS = 8
CONTEXT = "replication"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="deltas per run (each run: fresh)")
    p.add_argument("--rate", type=float, default=100.0, help="steps per second when paced")
    p.add_argument("--profile", action="store_true", help="cProfile the back-to-back node run")
    args = p.parse_args(argv)
    if args.steps < 10 or args.rate <= 0:
        p.error("--steps must be at least 10 and --rate positive")
    return args


def origin_deltas(root: Path, count: int) -> list[bytes]:
    """The outbox entries of ``count`` writes on an origin node, as a peer receives them."""
    store = Store(root / "origin", "origin", sync=False, outbox=True)
    try:
        engine = Engine(store)
        for i in range(count):
            subject = Subject("acme", SubjectKind.USER, f"u{i % SUBJECTS}")
            item = ObservationInput(subject, CONTEXT, "latest", f"value {i}", 0.9)
            engine.observe("bench_writer", [item])
        return [e.delta for e in store.outbox(0, count)]
    finally:
        store.close()


def node_step(
    root: Path, sizes: list[int] | None = None
) -> tuple[Callable[[int, bytes], None], Callable[[], None]]:
    """The node's step; appends each snapshot's size to ``sizes`` when given."""
    store = Store(root, "receiver", sync=True, outbox=True)
    engine = Engine(store)
    limits = validation.Limits()
    subjects = [Subject("acme", SubjectKind.USER, f"u{k}") for k in range(SUBJECTS)]
    contexts = frozenset([CONTEXT])

    def step(i: int, raw: bytes) -> None:
        msg = sync_pb2.SubjectState.FromString(raw)
        validation.remote_state(msg, "deltas[0]", limits)
        extra = [Store.position_row("applied", "origin", i + 1)]
        engine.merge_remote([delta_from_proto(msg)], extra=extra, durable=False)
        subject = subjects[i % SUBJECTS]
        view = engine.model(subject)
        beliefs = select(view.beliefs, contexts)
        reply = convert.snapshot(
            subject, beliefs, view.token, view.resolved_ms, engine.node
        ).SerializeToString()
        if sizes is not None:
            sizes.append(len(reply))

    return step, store.close


def floor_step(snapshot_size: int) -> Callable[[int, bytes], None]:
    kept: dict[int, sync_pb2.SubjectState] = {}
    reply = sync_pb2.SubjectState()

    def step(i: int, raw: bytes) -> None:
        msg = sync_pb2.SubjectState.FromString(raw)
        kept[i % SUBJECTS] = msg
        reply.subject.id = msg.subject.id
        reply.subject.tenant = "x" * max(0, snapshot_size - 8)
        reply.SerializeToString()

    return step


def run(
    step: Callable[[int, bytes], None],
    deltas: Sequence[bytes],
    gap_s: float,
    profile: cProfile.Profile | None = None,
) -> list[float]:
    """CPU µs of each step; with ``gap_s`` each step starts 1/rate after the previous one."""
    cpu: list[float] = []
    next_at = time.monotonic()
    for i, raw in enumerate(deltas):
        if gap_s:
            next_at += gap_s
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t0 = time.thread_time()
        if profile is not None:
            profile.enable()
        step(i, raw)
        if profile is not None:
            profile.disable()
        cpu.append((time.thread_time() - t0) * 1e6)
    return cpu[len(cpu) // 10 :]  # the first tenth warms up


def quantiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gap = 1.0 / args.rate
    print(
        f"receive path: {args.steps} deltas per run, paced at {args.rate:g}/s; "
        f"Python {sys.version.split()[0]}"
    )
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="selfmodel-receive-") as tmp:
        root = Path(tmp)
        deltas = origin_deltas(root, args.steps)
        sizes: list[int] = []
        step, close = node_step(root / "sizes", sizes)
        try:
            for i, raw in enumerate(deltas[: SUBJECTS * 4]):
                step(i, raw)
        finally:
            close()
        size = sizes[-1]
        profile = cProfile.Profile() if args.profile else None
        for mode, g in (("back to back", 0.0), ("paced", gap)):
            for who in ("floor", "node"):
                if who == "node":
                    step, close = node_step(root / f"node-{mode.replace(' ', '-')}")
                    try:
                        cpu = run(step, deltas, g, profile if g == 0.0 else None)
                    finally:
                        close()
                else:
                    cpu = run(floor_step(size), deltas, g)
                rows[f"{who} {mode}"] = quantiles(cpu)
                p50, p99 = rows[f"{who} {mode}"]
                print(f"  {who:<6} {mode:<13} CPU per step p50 {p50:7.1f} µs  p99 {p99:7.1f} µs")
    print()
    for mode in ("back to back", "paced"):
        node, floor = rows[f"node {mode}"][0], rows[f"floor {mode}"][0]
        print(f"  node / floor, {mode:<13} p50 {node / floor:6.1f}x")
    for who in ("floor", "node"):
        paced, hot = rows[f"{who} paced"][0], rows[f"{who} back to back"][0]
        print(f"  {who:<6} paced / back to back  p50 {paced / hot:6.1f}x")
    if profile is not None:
        print()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
