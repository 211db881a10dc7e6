#!/usr/bin/env python3
"""Roll-ups: what reading a team's or an organization's model costs beside a user's, and what
a member's write costs with the member in several groups.

What runs (loopback, data in a temporary directory removed afterwards): one real
``selfmodel node`` process (fsync on). ``--users`` users (default 10,000) each hold ``--slots``
beliefs (default 10, over five contexts), their statements drawn from three per slot (seeded),
written through ObserveBatch. Teams of ``--teams`` sizes (default 10, 100, 1,000: the first
users) and an organization of ``--org-users`` users (default 10,000) as teams of 100 are made
through AdminService.AddMember, in parallel.

Measured, one client calling sequentially with pre-serialized requests and undecoded replies
(node_latency.py's way), in interleaved rounds:

- ``read``: GetSelfModel of one user, of each team and of the organization (p50, p90, reply
  bytes). A group's read serves its roll-up kept by the node (node.rollup): its cost follows
  the roll-up's rows, not the group's members. Target: a team of 1,000 under 2x a user's p50.
- ``write``: Observe by a user in 0, 1, 5 and 20 teams (``--write-groups``), each call flipping
  one slot between two statements (every write moves the roll-up of each of its teams): p50
  and the node's CPU per call.
- ``start-up``: the node stopped and started again on its store, the time until it serves,
  then the first read of each group (the organization first: its roll-up is built on that read
  if the node's background load of the groups has not reached it; node.groups), and the time
  the node took to load every group (its log). ``--learning`` runs the node with learned
  reliability on (``[cluster.learning]``), which judges every stored slot before serving.

    python -m benchmarks.rollup                  # about 2 minutes on 2 CPUs
    python -m benchmarks.rollup --users 2000 --teams 10,100,1000 --org-users 2000
    python -m benchmarks.rollup --learning        # the same, learned reliability on
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

if __package__:  # imported as benchmarks.rollup (the tests)
    from benchmarks import node_latency
else:  # run as a script: its siblings are beside it
    import node_latency

from selfmodel.admin.v1 import admin_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2
from tests.harness import NodeProcess

TENANT = "bench"
CONTEXTS = ("budget", "channel", "schedule", "tooling", "tone")
STATEMENTS = ("ten thousand", "fifty thousand", "unknown")
GET = "/selfmodel.v1.SelfModelService/GetSelfModel"
OBSERVE = "/selfmodel.v1.SelfModelService/Observe"
BATCH = "/selfmodel.v1.SelfModelService/ObserveBatch"
ADD = "/selfmodel.admin.v1.AdminService/AddMember"
MD = (("x-agent-id", "bench_agent"),)
ORG_TEAM = 100  # users per team of the organization
TARGET = 2.0  # team of 1,000 / user, read p50


@dataclass
class Figures:
    name: str
    calls: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    reply_bytes: int = 0
    cpu_us: float = 0.0  # the node's CPU per call (writes)
    samples: list[float] = field(default_factory=list, repr=False)

    def close(self) -> None:
        done = sorted(self.samples)
        self.calls = len(done)
        self.p50_ms = node_latency.percentile(done, 0.5) * 1000
        self.p90_ms = node_latency.percentile(done, 0.9) * 1000


@dataclass
class Report:
    users: int
    slots: int
    reads: list[Figures] = field(default_factory=list)
    writes: list[Figures] = field(default_factory=list)
    setup_s: float = 0.0
    when: str = ""
    learning: bool = False
    startup_s: float = 0.0  # stopped, started again: until it serves
    first_reads: dict[str, float] = field(default_factory=dict)  # seconds, after the restart
    groups_loaded_s: float = float("nan")  # the node's background load of every group (its log)

    def ratio(self, name: str) -> float:
        by = {f.name: f for f in self.reads}
        return by[name].p50_ms / by["user"].p50_ms if name in by else float("nan")


def cpu_s(pid: int) -> float:
    """The CPU seconds a process's live threads ran (their schedstat, in nanoseconds: finer than
    the clock ticks of /proc/<pid>/stat, which a few hundred writes barely move)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def _subject(kind: int, id: str) -> model_pb2.Subject:
    return model_pb2.Subject(tenant=TENANT, kind=kind, id=id)  # type: ignore[arg-type]


def _user(i: int) -> model_pb2.Subject:
    return _subject(model_pb2.SUBJECT_KIND_USER, f"u{i}")


def _call(channel: grpc.Channel, method: str) -> Callable[[bytes], bytes]:
    """A unary call sending and answering bytes (nothing decoded on this side)."""
    return channel.unary_unary(method)  # type: ignore[return-value]


def fill(channel: grpc.Channel, users: int, slots: int, seed: int) -> None:
    """Every user's beliefs, as many users per ObserveBatch as its 500 observations hold."""
    rng = random.Random(seed)
    batch = _call(channel, BATCH)
    per = max(1, min(100, 500 // slots))
    for start in range(0, users, per):
        request = selfmodel_pb2.ObserveBatchRequest()
        for i in range(start, min(start + per, users)):
            for s in range(slots):
                request.observations.add(
                    subject=_user(i),
                    context=CONTEXTS[s % len(CONTEXTS)],
                    key=f"k{s}",
                    statement=rng.choice(STATEMENTS),
                    confidence=rng.choice((0.6, 0.75, 0.9)),
                )
        batch(request.SerializeToString(), metadata=MD, timeout=60)  # type: ignore[call-arg]


Pair = tuple[model_pb2.Subject, model_pb2.Subject]  # (group, member)
Pairs = list[Pair]


def join(channel: grpc.Channel, pairs: Pairs) -> None:
    """AddMember of every (group, member), 8 calls at a time."""
    add = _call(channel, ADD)

    def one(pair: Pair) -> None:
        request = admin_pb2.AddMemberRequest(group=pair[0], member=pair[1])
        add(request.SerializeToString(), metadata=MD, timeout=60)  # type: ignore[call-arg]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, pairs))


def groups(args: argparse.Namespace) -> tuple[dict[str, model_pb2.Subject], Pairs]:
    """The groups read (by name) and every membership to add."""
    team_kind, org_kind = model_pb2.SUBJECT_KIND_TEAM, model_pb2.SUBJECT_KIND_ORG
    read: dict[str, model_pb2.Subject] = {}
    pairs: Pairs = []
    for size in args.teams:
        group = read[f"team of {size:,}"] = _subject(team_kind, f"team{size}")
        pairs += [(group, _user(i)) for i in range(size)]
    if args.org_users:
        organization = read[f"org of {args.org_users:,}"] = _subject(org_kind, "org")
        for t in range(0, args.org_users, ORG_TEAM):
            member = _subject(team_kind, f"org-team{t // ORG_TEAM}")
            pairs.append((organization, member))
            pairs += [(member, _user(i)) for i in range(t, min(t + ORG_TEAM, args.org_users))]
    return read, pairs


def writers(args: argparse.Namespace) -> tuple[dict[str, model_pb2.Subject], Pairs]:
    """A writer per group count, in that many teams of its own (each with 10 other users)."""
    team_kind = model_pb2.SUBJECT_KIND_TEAM
    found: dict[str, model_pb2.Subject] = {}
    pairs: Pairs = []
    for n in args.write_groups:
        writer = found[f"member of {n}"] = _subject(model_pb2.SUBJECT_KIND_USER, f"writer{n}")
        for g in range(n):
            group = _subject(team_kind, f"w{n}-{g}")
            pairs.append((group, writer))
            pairs += [(group, _user(i)) for i in range(10)]
    return found, pairs


def measure_reads(
    channel: grpc.Channel, read: dict[str, model_pb2.Subject], calls: int, rounds: int
) -> list[Figures]:
    get = _call(channel, GET)
    requests = {
        name: selfmodel_pb2.GetSelfModelRequest(subject=s).SerializeToString()
        for name, s in read.items()
    }
    figures = {name: Figures(name) for name in read}
    for name, body in requests.items():  # warm: each model resolved and its reply kept
        for _ in range(20):
            figures[name].reply_bytes = len(get(body, metadata=MD, timeout=30))  # type: ignore[call-arg]
    for _ in range(rounds):
        for name, body in requests.items():
            for _ in range(calls // rounds):
                started = time.perf_counter()
                get(body, metadata=MD, timeout=30)  # type: ignore[call-arg]
                figures[name].samples.append(time.perf_counter() - started)
    for f in figures.values():
        f.close()
    return list(figures.values())


def measure_writes(
    channel: grpc.Channel, found: dict[str, model_pb2.Subject], calls: int, rounds: int, pid: int
) -> list[Figures]:
    observe = _call(channel, OBSERVE)
    figures = {name: Figures(name) for name in found}
    cpu = dict.fromkeys(found, 0.0)
    for _ in range(rounds):
        for name, subject in found.items():
            bodies = [
                selfmodel_pb2.ObserveRequest(
                    subject=subject, context="budget", key="k0",
                    statement=STATEMENTS[i % 2], confidence=0.9,
                ).SerializeToString()
                for i in range(calls // rounds)
            ]  # fmt: skip
            before = cpu_s(pid)
            for body in bodies:
                started = time.perf_counter()
                observe(body, metadata=MD, timeout=30)  # type: ignore[call-arg]
                figures[name].samples.append(time.perf_counter() - started)
            cpu[name] += cpu_s(pid) - before
    for name, f in figures.items():
        f.close()
        f.cpu_us = cpu[name] / max(1, f.calls) * 1e6
    return list(figures.values())


def first_reads(channel: grpc.Channel, read: dict[str, model_pb2.Subject]) -> dict[str, float]:
    """The seconds of the first GetSelfModel of each subject, the last named first."""
    get = _call(channel, GET)
    found = {}
    for name, subject in reversed(read.items()):
        body = selfmodel_pb2.GetSelfModelRequest(subject=subject).SerializeToString()
        started = time.perf_counter()
        get(body, metadata=MD, timeout=300)  # type: ignore[call-arg]
        found[name] = time.perf_counter() - started
    return found


LOADED = re.compile(r"group\(s\) loaded in ([0-9.]+) s")


def restart(node: NodeProcess, read: dict[str, model_pb2.Subject], report: Report) -> None:
    """Stops the node, starts it on its store, times it until it serves and its first reads."""
    node.stop()
    logged = len(node.log())
    started = time.monotonic()
    node.start()
    report.startup_s = time.monotonic() - started
    with grpc.insecure_channel(node.address) as channel:
        report.first_reads = first_reads(channel, read)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the background load's line, once it is written
        found = LOADED.search(node.log()[logged:])
        if found is not None:
            report.groups_loaded_s = float(found.group(1))
            break
        time.sleep(0.2)


def node_process(tmp: Path, learning: bool) -> NodeProcess:
    """The node measured: on a data directory of its own, learned reliability on or off."""
    data = tmp / "rollup" / "data"
    if not learning:
        return NodeProcess("rollup", data, ("--max-subject-observations", "20000"))
    cluster = tmp / "cluster.toml"
    lines = [
        "[cluster]", f'data = "{tmp}"', "fsync = true",
        "[cluster.limits]", "max_subject_observations = 20000",
        "[cluster.learning]", "enabled = true",
        "[[node]]", 'name = "rollup"', 'address = "127.0.0.1:0"', f'data = "{data}"',
    ]  # fmt: skip
    cluster.write_text("\n".join(lines) + "\n")
    return NodeProcess("rollup", data, cluster_file=cluster)


def run(args: argparse.Namespace) -> Report:
    report = Report(args.users, args.slots, when=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"))
    report.learning = args.learning
    tmp = Path(tempfile.mkdtemp(prefix="selfmodel-rollup-", dir=args.data))
    node = node_process(tmp, args.learning)
    try:
        node.start()
        assert node.proc is not None
        with grpc.insecure_channel(node.address) as channel:
            started = time.monotonic()
            fill(channel, args.users, args.slots, args.seed)
            read, pairs = groups(args)
            found, more = writers(args)
            join(channel, pairs + more)
            fill_writers = selfmodel_pb2.ObserveBatchRequest()
            for subject in found.values():
                fill_writers.observations.add(
                    subject=subject, context="budget", key="k0", statement=STATEMENTS[0],
                    confidence=0.9,
                )  # fmt: skip
            _call(channel, BATCH)(fill_writers.SerializeToString(), metadata=MD, timeout=60)  # type: ignore[call-arg]
            report.setup_s = time.monotonic() - started
            read = {"user": _user(0), **read}
            report.reads = measure_reads(channel, read, args.reads, args.rounds)
            report.writes = measure_writes(channel, found, args.writes, args.rounds, node.proc.pid)
        restart(node, read, report)
    finally:
        node.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def render(report: Report) -> str:
    lines = [
        f"{report.users:,} users of {report.slots} beliefs; set up in {report.setup_s:.1f} s "
        f"({report.when} UTC)",
        "",
        "| read (GetSelfModel) | p50 ms | p90 ms | reply B | p50 / user |",
        "|---|--:|--:|--:|--:|",
    ]
    for f in report.reads:
        lines.append(
            f"| {f.name} | {f.p50_ms:.2f} | {f.p90_ms:.2f} | {f.reply_bytes:,} | "
            f"{report.ratio(f.name):.2f} |"
        )
    lines += ["", "| write (Observe) | p50 ms | p90 ms | node CPU µs / call |", "|---|--:|--:|--:|"]
    for f in report.writes:
        lines.append(f"| {f.name} | {f.p50_ms:.2f} | {f.p90_ms:.2f} | {f.cpu_us:,.0f} |")
    lines += [
        "",
        f"start-up on this store{' (learned reliability on)' if report.learning else ''}: "
        f"{report.startup_s:.2f} s until serving; every group loaded "
        f"{report.groups_loaded_s:.2f} s after it began (in the background)",
        "first read after the restart: "
        + ", ".join(f"{name} {s * 1000:,.0f} ms" for name, s in report.first_reads.items()),
    ]
    team = next((f.name for f in report.reads if f.name == "team of 1,000"), None)
    if team is not None:
        ratio = report.ratio(team)
        verdict = "met" if ratio < TARGET else "MISS"
        lines += ["", f"team of 1,000 / user read p50: {ratio:.2f} (target < {TARGET}: {verdict})"]
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000, help="users with beliefs")
    p.add_argument("--slots", type=int, default=10, help="beliefs per user")
    p.add_argument("--teams", type=_sizes, default=[10, 100, 1000], help="team sizes to read")
    p.add_argument("--org-users", type=int, default=10_000, help="users of the organization")
    p.add_argument("--write-groups", type=_sizes, default=[0, 1, 5, 20])
    p.add_argument("--reads", type=int, default=600, help="reads per model")
    p.add_argument("--writes", type=int, default=300, help="writes per writer")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--learning", action="store_true", help="learned reliability on")
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    if max([*args.teams, args.org_users]) > args.users:
        p.error("--teams and --org-users must be at most --users")
    if args.reads < args.rounds or args.writes < args.rounds:
        p.error("--reads and --writes must be at least --rounds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
