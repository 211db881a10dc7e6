#!/usr/bin/env python3
"""Where a replicated write spends its time, stage by stage, from commit to a watcher.

Runs one cell of ``replication.py`` (default: 3 nodes, 100 writes/s) with the node processes
timestamping their stages (``trace_hooks/sitecustomize.py``), then matches each write's events
on the written node (n1) and on one peer (n2) in time order: writes are 1/rate apart, a hop takes
a few ms, so the first event of each stage after a commit is that write's. Prints, cumulative
from the commit on n1, p50/p90/p99 of:

    send       n1's delta stream to n2 has taken the batch
    recv       n2's Sync servicer has it, decoded
    written    n2 has written it to RocksDB (commit_in)
    notified   n2 has woken the subject's watches
    pushed     n2's watch has built the snapshot and hands it to gRPC

then which stages the slowest 5% lost their time in, and the garbage collections of each node
during the measured writes. The hooks cost a little: absolute figures run slightly above
``replication.py``'s; the split is what this is for.

    python benchmarks/trace_replication.py
    python benchmarks/trace_replication.py --rate 200 --duration 20 --no-fsync
    python benchmarks/trace_replication.py --cpus none
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = (("send", "send:n2", "n1"), ("recv", "recv:n1", "n2"), ("written", "commit_in", "n2"),
          ("notified", "notify", "n2"), ("pushed", "wyield", "n2"))  # fmt: skip
WARMUP_WRITES = 100


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Stage-by-stage time of replicated writes (one replication.py cell, traced).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=3, help="cluster size (at least 2)")
    p.add_argument("--rate", type=float, default=100.0, help="writes/s")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--no-fsync", action="store_true", help="nodes without fsync")
    p.add_argument(
        "--cpus", default=None, help="as replication.py's --cpus ('none': any CPU); default: its"
    )
    p.add_argument("--keep", type=Path, default=None, help="copy the raw traces to this folder")
    args = p.parse_args(argv)
    if args.nodes < 2 or args.rate <= 0:
        p.error("--nodes must be at least 2 and --rate positive")
    return args


def load(path: Path) -> dict[str, list[float]]:
    """Event -> sorted times; ``send n2`` becomes ``send:n2``; gc lines keep their duration."""
    events: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        at, kind = float(parts[0]), parts[1]
        if kind == "gc":
            events.setdefault(f"gc{parts[2]}", []).append(at)
            events.setdefault(f"gc{parts[2]}_ms", []).append(float(parts[3]))
            continue
        events.setdefault(kind + (f":{parts[2]}" if len(parts) > 2 else ""), []).append(at)
    return events


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def analyze(traces: dict[str, dict[str, list[float]]]) -> str:
    commits = traces["n1"].get("commit", [])[WARMUP_WRITES:]
    if not commits:
        return "no traced writes (were the hooks installed? see trace_hooks/sitecustomize.py)"
    rows: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    for commit in commits:
        at = commit
        path: list[float] = []
        for _, event, node in STAGES:
            times = traces[node].get(event, [])
            i = bisect.bisect_left(times, at)
            if i == len(times):
                break
            at = times[i]
            path.append((at - commit) * 1000)
        if len(path) == len(STAGES):
            for (name, _, _), ms in zip(STAGES, path, strict=True):
                rows[name].append(ms)
    matched = len(rows["pushed"])
    lines = [f"{matched} of {len(commits)} writes traced through every stage (n1 -> n2)", ""]
    lines.append(f"{'stage':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  from the commit on n1")
    for name, values in rows.items():
        lines.append(
            f"{name:<10} {quantile(values, 0.5):>8.3f} {quantile(values, 0.9):>8.3f} "
            f"{quantile(values, 0.99):>8.3f}"
        )
    if matched >= 20:
        last = rows["pushed"]
        slow = sorted(range(matched), key=lambda i: last[i])[-max(1, matched // 20) :]
        lines += ["", "time spent in each stage (ms, mean): all writes, and the slowest 5%"]
        previous: list[float] = [0.0] * matched
        for name, values in rows.items():
            spent = [v - p for v, p in zip(values, previous, strict=True)]
            lines.append(
                f"{name:<10} {statistics.mean(spent):>8.3f} "
                f"{statistics.mean(spent[i] for i in slow):>8.3f}"
            )
            previous = values
    start, end = commits[0], commits[-1]
    lines += ["", "garbage collections while the traced writes ran"]
    for node in sorted(traces):
        found = []
        for gen in (0, 1, 2):
            times = traces[node].get(f"gc{gen}", [])
            durations = traces[node].get(f"gc{gen}_ms", [])
            inside = [d for t, d in zip(times, durations, strict=True) if start <= t <= end]
            if inside:
                found.append(f"gen {gen}: {len(inside)} x, max {max(inside):.2f} ms")
        lines.append(f"  {node}: {'; '.join(found) or 'none'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trace_dir = Path(tempfile.mkdtemp(prefix="selfmodel-trace-"))
    os.environ["SELFMODEL_TRACE_DIR"] = str(trace_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE / "trace_hooks"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path.insert(0, str(HERE))
    import replication  # after the environment the node processes inherit

    cell = replication.parse_args(
        ["--nodes", str(args.nodes), "--rates", f"{args.rate:g}",
         "--duration", f"{args.duration:g}", "--rounds", "1",
         *(["--no-fsync"] if args.no_fsync else []),
         *(["--cpus", args.cpus] if args.cpus is not None else [])]
    )  # fmt: skip
    cells = replication.run(cell)
    print(replication.render(cells, cell), "", sep="\n")
    traces = {p.stem: load(p) for p in sorted(trace_dir.glob("*.trace"))}
    if "n1" not in traces or "n2" not in traces:
        print(f"no traces of n1 and n2 in {trace_dir}", file=sys.stderr)
        return 1
    print(analyze(traces))
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        for p in trace_dir.glob("*.trace"):
            (args.keep / p.name).write_bytes(p.read_bytes())
    for p in trace_dir.glob("*.trace"):
        p.unlink()
    trace_dir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
