#!/usr/bin/env python3
"""Two builds of the node side by side: CPU per durable Observe, under one load, at one time.

``node_latency.py`` compares a node with the echo floor, one after the other; on a shared
machine one 3-round run of its 8-writer ratio moves by +-10%, so a change worth 3% needs many
runs to show. This one answers "did my change make a durable write cheaper?" in about two
minutes, to about 1%:

- a node of this checkout and a node of another (``BASE``, a checkout with its own compiled
  modules, see below) run at the same time, pinned to the same one CPU, each on its own
  temporary data directory with fsync on;
- each round loads both at once, ``--writers`` client processes each (one call in flight,
  pre-serialized ``Observe`` requests as ``node_latency.py`` sends, another subject per call);
- the kernel shares the CPU between the two nodes, so whatever else the machine does slows both
  alike: the ratio of their CPU time per call is the figure, and the ratio of their calls;
- the node started first costs 1-3% more per call (two nodes of one build alike), so the
  nodes are started again, in the other order, for the second half of the rounds.

It prints both per round and their mean, median and standard deviation, and whether each node
runs compiled (``selfmodel_compiled``). ``--this-env`` and ``--base-env`` set variables in one
node's environment, so one checkout can be measured against itself under two settings:

    .venv/bin/python benchmarks/ab_observe.py . --base-env GRPC_EXPERIMENTS=

(this checkout on the gRPC listener it chooses, node.transport, against gRPC's default one).

Making a BASE of an earlier commit, built with this checkout's virtualenv:

    git worktree add --detach /tmp/base HEAD~1
    (cd /tmp/base && $PWD/.venv/bin/python tools/build_native.py)
    .venv/bin/python benchmarks/ab_observe.py /tmp/base
    git worktree remove --force /tmp/base

Both nodes use this checkout's virtualenv (its grpcio, protobuf and rocksdict), and each its own
code and generated contracts.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import node_latency as nl

from federation.harness import NodeProcess


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="the other checkout (with its compiled modules)")
    p.add_argument("--writers", type=int, default=4, help="client processes per node (4)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (10)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per round (3)")
    nl.add_cpu_option(p, "both nodes run on")
    for who in ("this", "base"):
        p.add_argument(
            f"--{who}-env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"set in {'this checkout' if who == 'this' else 'BASE'}'s node's environment "
            "(repeatable)",
        )
    args = p.parse_args(argv)
    for option in ("this_env", "base_env"):
        pairs = [item.partition("=") for item in getattr(args, option)]
        if any(not key or not eq for key, eq, _ in pairs):
            p.error(f"--{option.replace('_', '-')} takes KEY=VALUE")
        setattr(args, option, {key: value for key, _, value in pairs})
    if not (args.base / "federation").is_dir():
        p.error(f"{args.base} is not a selfmodel checkout")
    if args.writers < 1 or args.rounds < 4 or args.duration <= 0:
        p.error("--writers must be positive, --rounds at least 4 and --duration positive")
    return args


def compiled(metrics_port: int | None) -> str:
    """What a node runs, as its selfmodel_compiled gauge says."""
    value = nl.scrape(metrics_port).get("selfmodel_compiled") if metrics_port else None
    if value is None:
        return "unknown"
    return "compiled" if value == 1 else "pure Python"


def start_nodes(
    trees: dict[str, Path],
    envs: dict[str, dict[str, str]],
    first: str,
    tmp: Path,
    cpu: int,
    stack: contextlib.ExitStack,
) -> dict[str, NodeProcess]:
    """A node of each tree (with its extra environment), ``first``'s started first; each
    stopped when ``stack`` closes."""
    nodes: dict[str, NodeProcess] = {}
    for name in sorted(trees, key=lambda n: n != first):
        data = tmp / f"{name}-{first}-first" / "data"
        node = NodeProcess(name, data, ("--cpus", str(cpu)), cwd=trees[name], env=envs[name])
        stack.callback(nl._stop_node, node)
        nodes[name] = node.start()
    return nodes


def load_round(
    pool: nl.ClientPool, nodes: dict[str, NodeProcess], r: int, args: argparse.Namespace
) -> tuple[float, float]:
    """One round: (CPU per call base / this, calls this / base)."""
    order = ["this", "base"] if r % 2 == 0 else ["base", "this"]  # whose clients come first
    tasks = [
        nl.Task(
            target=nodes[name].address,
            method=nl.OBSERVE_METHOD,
            requests=nl.observe_requests(f"{name}{r}", w, nl.REQUESTS_PER_WRITER),
            metadata=nl.agent_metadata(w),
            warmup_calls=200,
            max_calls=500_000,
            timeout_s=10.0,
        )
        for name in order
        for w in range(args.writers)
    ]
    pids = {name: node.proc.pid for name, node in nodes.items() if node.proc is not None}
    pool.send(tasks)
    start_at = time.monotonic() + 0.05
    stop_at = start_at + args.duration
    pool.start(start_at, stop_at)
    time.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = {n: nl.process_cpu_s(pids[n]) for n in order}
    time.sleep(max(0.0, stop_at - time.monotonic()))
    cpu1 = {n: nl.process_cpu_s(pids[n]) for n in order}
    outcomes = pool.collect()
    errors = sum(o.errors for o in outcomes)
    if errors:
        first = next(o.first_error for o in outcomes if o.first_error)
        raise RuntimeError(f"{errors} calls failed, first: {first}")
    calls = {
        name: sum(len(o.latencies) for o in outcomes[i * args.writers :][: args.writers])
        for i, name in enumerate(order)
    }
    per_call = {n: (cpu1[n] - cpu0[n]) / calls[n] * 1e6 for n in order}
    rates = {n: calls[n] / args.duration for n in order}
    cpu_ratio, call_ratio = per_call["base"] / per_call["this"], calls["this"] / calls["base"]
    print(
        f"round {r + 1:2}  this {rates['this']:6.0f}/s {per_call['this']:5.0f} µs CPU/call"
        f"   base {rates['base']:6.0f}/s {per_call['base']:5.0f} µs CPU/call"
        f"   CPU base/this {cpu_ratio:.3f}   calls this/base {call_ratio:.3f}",
        flush=True,
    )
    return cpu_ratio, call_ratio


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"this": nl.ROOT, "base": args.base.resolve()}
    envs = {"this": args.this_env, "base": args.base_env}
    print(
        f"durable Observe, {args.writers} writers per node, both nodes on CPU {args.cpu}, "
        f"{args.rounds} rounds of {args.duration:g} s"
    )
    cpu_ratios: list[float] = []
    call_ratios: list[float] = []
    halves: list[float] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ab-observe-")))
        pool = nl.ClientPool(2 * args.writers)
        stack.callback(pool.close)
        # The node started first costs a little more per call (1-3% with both nodes alike,
        # measured): each half of the rounds starts the nodes in the other order.
        for half, first in enumerate(("this", "base")):
            with contextlib.ExitStack() as running:
                nodes = start_nodes(trees, envs, first, tmp, args.cpu, running)
                print(f"\n{first} started first:")
                for name, node in nodes.items():
                    extra = "".join(f", {k}={v!r}" for k, v in envs[name].items())
                    print(f"  {name:4}  {trees[name]}  ({compiled(node.metrics_port)}{extra})")
                rounds = range(half * args.rounds // 2, (half + 1) * args.rounds // 2)
                try:
                    results = [load_round(pool, nodes, r, args) for r in rounds]
                except RuntimeError as exc:
                    print(f"failed: {exc}", file=sys.stderr)
                    return 1
            cpu_ratios += [c for c, _ in results]
            call_ratios += [k for _, k in results]
            halves.append(statistics.mean(c for c, _ in results))
        print()
        for label, values in (
            ("CPU per call, base / this", cpu_ratios),
            ("calls, this / base", call_ratios),
        ):
            print(
                f"{label:26} mean {statistics.mean(values):.3f}  median "
                f"{statistics.median(values):.3f}  sd {statistics.stdev(values):.3f}"
            )
        print(
            f"CPU per call, base / this, by half (this first, base first): {halves[0]:.3f} "
            f"{halves[1]:.3f}"
        )
        print("(above 1: this checkout costs less CPU per durable Observe, or serves more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
