#!/usr/bin/env python3
"""A write's and a peer's merge's CPU in process, back to back and spaced in time.

What it answers: how much of a node's CPU per write at a low, steady rate (replication.py's
100 writes/s) is the work itself, and how much is that work running on a cold CPU after a
quiet spell? Per spacing (``--gaps-ms``, default 0, 1, 3 and 10 ms between calls), on fresh
temporary stores without fsync (the disk is not measured) and without gRPC:

- ``observe``: ``Engine.observe`` of one observation on node n1, round-robin over 8 subjects,
  each write superseding the writer's previous one in its slot (replication.py's writes);
- ``merge``: node n2's receiving end of n1's delta stream (``DeltaReceiver.receive`` over the
  engine, as ``Sync.Replicate`` runs it) taking those writes' outbox entries one batch of one
  delta at a time, as the stream sends them at that rate: decode, screen, merge, commit.

The time is the calling thread's CPU time (``time.thread_time``) from just before a call to
just after it, so the gap itself is never counted; the first ``--warmup`` calls are not
counted either. A gap is a ``time.sleep`` (``--spin``: a busy loop on the same thread instead,
so the CPU never idles).

    python -m benchmarks.spacing
    python -m benchmarks.spacing --gaps-ms 0,10 --calls 300 --spin
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

SUBJECTS = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CPU per write and per merged delta, in process, back to back and spaced.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--gaps-ms", default="0,1,3,10", help="comma-separated gaps between calls")
    p.add_argument("--calls", type=int, default=500, help="measured calls per gap and kind")
    p.add_argument("--warmup", type=int, default=50, help="calls before measuring")
    p.add_argument("--spin", action="store_true", help="wait out each gap busy, not asleep")
    args = p.parse_args(argv)
    try:
        args.gaps = [float(g) / 1000 for g in args.gaps_ms.split(",")]
    except ValueError:
        p.error(f"--gaps-ms: expected comma-separated milliseconds, got {args.gaps_ms!r}")
    if any(g < 0 or g > 1 for g in args.gaps) or not 1 <= args.calls <= 100_000:
        p.error("--gaps-ms must be within [0, 1000] and --calls within [1, 100000]")
    if not 0 <= args.warmup <= 10_000:
        p.error("--warmup must be within [0, 10000]")
    return args


def _wait(gap_s: float, spin: bool) -> None:
    if not gap_s:
        return
    if not spin:
        time.sleep(gap_s)
        return
    end = time.perf_counter() + gap_s
    while time.perf_counter() < end:
        pass


def _timed(calls: Iterator[Callable[[], object]], gap_s: float, spin: bool) -> list[float]:
    """CPU seconds of each call, a gap before each."""
    times = []
    for call in calls:
        _wait(gap_s, spin)
        t0 = time.thread_time()
        call()
        times.append(time.thread_time() - t0)
    return times


def measure(gap_s: float, n: int, spin: bool, root: Path) -> tuple[list[float], list[float]]:
    """CPU seconds per observe on n1 and per merged delta on n2, ``n`` of each."""
    from node.engine import Engine
    from node.refusals import Refusals
    from node.store import Store
    from node.syncports import EngineReplica
    from node.validation import Limits
    from node.writes import ObservationInput
    from selfmodel.sync.v1 import sync_pb2
    from sync.codec import encode_batch, encode_batch_origin
    from sync.observation import Subject, SubjectKind
    from sync.receiver import DeltaReceiver

    writer = Store(root / "n1", "n1", fsync=False, outbox=True)
    peer = Store(root / "n2", "n2", fsync=False, outbox=True)
    try:
        engine = Engine(writer)
        subjects = [Subject("acme", SubjectKind.USER, f"spacing-{k}") for k in range(SUBJECTS)]

        def observe(i: int) -> Callable[[], object]:
            item = ObservationInput(subjects[i % SUBJECTS], "replication", "latest", f"v {i}", 0.9)
            return lambda: engine.observe("bench_writer", [item])

        observed = _timed((observe(i) for i in range(n)), gap_s, spin)

        merging = Engine(peer)
        receiver = DeltaReceiver(
            EngineReplica(merging), Refusals("n2", Limits()), merging.clock.wall
        )
        origin = encode_batch_origin("n1")
        batches = [  # as the stream carries them: decoded by the receiving side (node.decoding)
            encode_batch(origin, batch)
            for seq in range(n)
            if (batch := writer.delta_log.read(seq, 1, 1 << 20)) is not None
        ]
        merged: list[float] = []

        def stream() -> Iterator[sync_pb2.ReplicateRequest]:
            """The batches, a gap before each; times the receiver's work on each, which runs
            between handing it out and being asked for the next."""
            for raw in batches:
                _wait(gap_s, spin)
                t0 = time.thread_time()
                yield sync_pb2.ReplicateRequest.FromString(raw)
                merged.append(time.thread_time() - t0)

        for _ in receiver.receive("n1", stream()):
            pass  # the acknowledgements: their making is timed with the batch before them
        for subject in subjects:  # what was timed is a merge of every write, not a refusal
            if merging.state(subject).observations != engine.state(subject).observations:
                raise RuntimeError(f"n2 did not merge every write of n1 to {subject}")
        return observed, merged
    finally:
        writer.close()
        peer.close()
        gc.collect()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    how = "busy" if args.spin else "asleep"
    print(
        f"spacing: {args.calls} calls per gap and kind after {args.warmup} unmeasured, gaps "
        f"{args.gaps_ms} ms waited {how}; in process, fsync off, no gRPC",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="selfmodel-spacing-"))
    rows = []
    try:
        for i, gap in enumerate(args.gaps):
            observed, merged = measure(gap, args.warmup + args.calls, args.spin, root / str(i))
            rows.append((gap, observed[args.warmup :], merged[args.warmup :]))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def us(values: Sequence[float]) -> str:
        return f"{statistics.fmean(values) * 1e6:.0f} / {statistics.median(values) * 1e6:.0f}"

    base_observe = statistics.fmean(rows[0][1])
    base_merge = statistics.fmean(rows[0][2])
    header = (
        f"{'gap':>7} {'observe mean / p50 us':>22} {'x first gap':>11} "
        f"{'merge mean / p50 us':>20} {'x first gap':>11}"
    )
    print(header)
    print("-" * len(header))
    for gap, observed, merged in rows:
        observe_x = statistics.fmean(observed) / base_observe
        merge_x = statistics.fmean(merged) / base_merge
        print(
            f"{gap * 1000:>5g}ms {us(observed):>22} {observe_x:>10.2f}x "
            f"{us(merged):>20} {merge_x:>10.2f}x"
        )
    print(
        "observe = Engine.observe on n1 (8 subjects round robin, each write superseding the "
        "writer's own); merge = n2's DeltaReceiver taking one such delta per batch (decode, "
        "screen, merge, commit; an acknowledgement counted with the batch before it); CPU time "
        "of the calling thread, gaps not counted"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
