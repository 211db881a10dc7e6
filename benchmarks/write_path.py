#!/usr/bin/env python3
"""What one local write costs as its subject grows, beside RocksDB writing the same bytes.

In-process, no gRPC, fsync off (``node_latency.py`` measures the sync and the serving): an
engine on a real RocksDB store takes ``Observe`` after ``Observe`` on subjects holding N beliefs
each. Each call restates one belief of one of ``--subjects`` subjects, by the source that
stated it, so the subjects keep their size. The floor writes what the store writes for such a
call, to a RocksDB of its own with the WAL on: one batch of the subject's stored state (the
same bytes), a 16-byte digest row and a 16-byte bucket row.

With ``--through servicer`` each call goes through ``SelfModelServicer.Observe`` instead, from
the request's bytes (decoding, the caller's identity, validation, the engine, the reply): the
handler a node runs for a durable ``Observe``, without gRPC and the fsync.

It prints the CPU time per call (pooled over ``--rounds``, node and floor alternating), the
ratio node / floor at each size, and how each grows from a subject of one belief. The node
stores a subject's whole state in one row (DESIGN.md section 4), so some growth is the storage
layout's; the floor shows how much.

    python benchmarks/write_path.py
    python benchmarks/write_path.py --sizes 1,50,200 --calls 2000 --rounds 3
    python benchmarks/write_path.py --through servicer --sizes 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "protos", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import rocksdict  # noqa: E402

from federation.client import _Requests  # noqa: E402
from node.engine import Engine, ObservationInput  # noqa: E402
from node.servicer import AGENT_HEADER, SelfModelServicer  # noqa: E402
from node.store import Store  # noqa: E402
from node.validation import Limits  # noqa: E402
from selfmodel.v1 import selfmodel_pb2  # noqa: E402
from sync import native  # noqa: E402
from sync.observation import Evidence, Subject, SubjectKind  # noqa: E402

SOURCE = "bench_agent"
EVIDENCE = (Evidence("call", "crm://call/4411", "we need this live before Q3"),)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default="1,10,50,200",
        help="beliefs per subject, comma-separated (default: 1,10,50,200)",
    )
    p.add_argument("--subjects", type=int, default=64, help="subjects written in turn (64)")
    p.add_argument("--calls", type=int, default=2000, help="calls per size and round (2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, node and floor alternating (3)")
    p.add_argument(
        "--through",
        choices=("engine", "servicer"),
        default="engine",
        help="call Engine.observe (default), or SelfModelServicer.Observe on the request's bytes",
    )
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in args.sizes.split(",")]
    if min(args.sizes) < 1 or args.subjects < 1 or args.calls < 1 or args.rounds < 1:
        p.error("sizes, --subjects, --calls and --rounds must be at least 1")
    return args


def item(subject: Subject, k: int) -> ObservationInput:
    return ObservationInput(
        subject,
        "purchase_motivation",
        f"fact-{k:03d}",
        f"Observed fact {k} about how this user decides to buy",
        0.82,
        EVIDENCE,
    )


def request(subject: Subject, k: int) -> bytes:
    """``item(subject, k)`` as an agent sends it (built by the client library)."""
    i = item(subject, k)
    msg = _Requests(subject.tenant).observe(
        subject, i.statement, i.confidence, i.context, i.key, i.evidence
    )
    return msg.SerializeToString()


class _Call:
    """What the servicer reads of a call's gRPC context: the caller's metadata (and, on an
    error, the status it sets)."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AGENT_HEADER, SOURCE),)

    def code(self) -> Any:
        return None

    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"the servicer refused a benchmark call: {code} {details}")


class NodeWrites:
    """An engine on its own store, its subjects seeded to ``size`` beliefs each."""

    def __init__(self, root: Path, size: int, subjects: int, through: str = "engine") -> None:
        self.store = Store(root / "node", "bench", sync=False)
        self.engine = Engine(self.store)
        self.subjects = [Subject("bench", SubjectKind.USER, f"u-{j:03d}") for j in range(subjects)]
        for k in range(size):
            for subject in self.subjects:
                self.engine.observe(SOURCE, [item(subject, k)])
        self.size = size
        self.calls = 0
        if through == "servicer":
            servicer = SelfModelServicer(self.engine, Limits())
            parse, call = selfmodel_pb2.ObserveRequest.FromString, _Call()
            requests = [[request(s, k) for s in self.subjects] for k in range(size)]

            def observe(subject: int, k: int) -> None:
                servicer.Observe(parse(requests[k][subject]), call)  # type: ignore[arg-type]

            self._observe = observe
        else:

            def observe(subject: int, k: int) -> None:
                self.engine.observe(SOURCE, [item(self.subjects[subject], k)])

            self._observe = observe
        stored = self.store.get_meta("state", self.subjects[0].storage_key())
        assert stored is not None
        self.stored = stored  # a subject's bytes in RocksDB: the floor writes as many

    def call(self) -> None:
        i = self.calls
        self.calls += 1
        self._observe(i % len(self.subjects), (i // len(self.subjects)) % self.size)

    def close(self) -> None:
        self.store.close()


class FloorWrites:
    """RocksDB alone, writing per call what the store writes for one Observe."""

    def __init__(self, root: Path, value: bytes, subjects: int) -> None:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        self.db = rocksdict.Rdict(str(root / "floor"), options)
        self.value = value
        self.keys = [b"bench\x00\x01u-%03d" % j for j in range(subjects)]
        self.calls = 0

    def call(self) -> None:
        key = self.keys[self.calls % len(self.keys)]
        self.calls += 1
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(key, self.value)
        batch.put(b"S\x00\x07" + key, b"d" * 16)
        batch.put(b"B\x00\x07", b"b" * 16)
        self.db.write(batch)

    def close(self) -> None:
        self.db.close()


def cpu_per_call_us(call: Callable[[], None], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"write path: Observe through the {args.through} on subjects of {args.sizes} beliefs, "
        f"{args.subjects} subjects, "
        f"{args.calls} calls x {args.rounds} rounds per size; Python {sys.version.split()[0]}, "
        f"{native.described()}"
    )
    node_us: dict[int, float] = {}
    floor_us: dict[int, float] = {}
    stored_bytes: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="selfmodel-write-path-") as tmp:
        for size in args.sizes:
            root = Path(tmp) / f"size-{size}"
            node = NodeWrites(root, size, args.subjects, args.through)
            floor = FloorWrites(root, node.stored, args.subjects)
            try:
                cpu_per_call_us(node.call, min(200, args.calls))  # warm both up
                cpu_per_call_us(floor.call, min(200, args.calls))
                node_rounds, floor_rounds = [], []
                for _ in range(args.rounds):
                    node_rounds.append(cpu_per_call_us(node.call, args.calls))
                    floor_rounds.append(cpu_per_call_us(floor.call, args.calls))
            finally:
                node.close()
                floor.close()
            node_us[size] = sum(node_rounds) / len(node_rounds)
            floor_us[size] = sum(floor_rounds) / len(floor_rounds)
            stored_bytes[size] = len(node.stored)
            rounds = " ".join(
                f"{n / f:.1f}" for n, f in zip(node_rounds, floor_rounds, strict=True)
            )
            print(
                f"  {size:>4} beliefs, {len(node.stored):>6} B stored: node {node_us[size]:7.1f} "
                f"µs/call, floor {floor_us[size]:6.1f} µs/call  (node / floor by round: {rounds})"
            )
    first = args.sizes[0]
    print()
    print(f"{'beliefs':>7} {'stored B':>9} {'node µs':>8} {'floor µs':>9} {'node/floor':>11} "
          f"{'node growth':>12} {'floor growth':>13}")  # fmt: skip
    for size in args.sizes:
        print(
            f"{size:>7} {stored_bytes[size]:>9} {node_us[size]:>8.1f} {floor_us[size]:>9.1f} "
            f"{node_us[size] / floor_us[size]:>10.1f}x {node_us[size] / node_us[first]:>11.1f}x "
            f"{floor_us[size] / floor_us[first]:>12.1f}x"
        )
    print(f"\n(growth: CPU per call against a subject of {first} belief(s); CPU is process time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
