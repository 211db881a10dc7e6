#!/usr/bin/env python3
"""How a node's reads and writes grow with a subject: slots, and sources per slot.

What runs (loopback, data in a temporary directory removed afterwards):

- one real ``selfmodel node`` process, fsync on, with subject limits raised so the largest
  subject fits (``--max-subject-observations``, ``--max-subject-bytes``);
- a bare gRPC echo server, node_latency.py's floor: a threaded ``grpc.server`` configured like
  the node's, answering each subject's GetSelfModel reply and the Observe reply captured from
  the node, byte for byte, with no work;
- for every shape (``--slots`` x ``--sources``, default 1, 15, 100 x 1, 10, 100) one subject:
  each of its sources writes one observation to each of its slots (slots spread over five
  contexts; the sources disagree, so beliefs have supporters and dissenters). A slot keeps at
  most its policy's ``max_observations`` (32 by default): beyond that, a slot's oldest
  positions are superseded, so 100 sources per slot show 32 positions.

Measured per shape, one client process calling sequentially (node_latency.py's client pool:
pre-serialized requests, replies not decoded), each node scenario beside its echo twin:

- ``read``: GetSelfModel (the default reply: every supporter and dissenter) of the unchanged
  subject, against the echo of the same reply bytes;
- ``summary``: GetSelfModel with ``max_positions = 0`` (beliefs with counts only);
- ``write``: Observe by one of the subject's sources to one of its slots (cycling through the
  slots and two statements, so every call changes a belief's supporters);
- once: ``fresh read`` (a subject of one observation) and ``fresh write`` (Observe on a new
  subject each call), the baselines of the targets.

Server CPU per call is the node's (or echo's) process CPU time over the measured calls.
``--fleet`` also runs a fleet (benchmarks/load.py): ``--fleet-agents`` agents (default 100) at
5 calls/s each, open loop, in load-generating processes, on ``--fleet-nodes`` nodes (default 3),
70% reads, 25% writes, 5% handoffs, 2,000 users of skewed popularity.

    python benchmarks/subject_size.py                 # the growth matrix, about 4 minutes
    python benchmarks/subject_size.py --fleet         # and the fleet (another 90 s)
    python benchmarks/subject_size.py --quick         # 1 and 15 slots, 1 and 10 sources
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

if __package__:  # imported as benchmarks.subject_size (the tests)
    from benchmarks import load, node_latency
else:  # run as a script: its siblings are beside it
    import load
    import node_latency

Bench = node_latency.Bench
ClientPool = node_latency.ClientPool
EchoServer = node_latency.EchoServer
Figures = node_latency.Figures
Server = node_latency.Server

GET = node_latency.GET_METHOD
OBSERVE = node_latency.OBSERVE_METHOD
BATCH = "/selfmodel.v1.SelfModelService/ObserveBatch"
ECHO = node_latency.ECHO_SERVICE
TENANT = node_latency.TENANT
CONTEXTS = node_latency.CONTEXTS
FLEET_MIX = "read=70,observe=25,handoff=5"


# Whether the contracts have GetSelfModelRequest.max_positions (not before it was added: the
# summary read of an earlier build is then its full read, to measure an earlier build alike).
def _has_summaries() -> bool:
    from selfmodel.v1 import selfmodel_pb2

    return "max_positions" in selfmodel_pb2.GetSelfModelRequest.DESCRIPTOR.fields_by_name


SUMMARIES = _has_summaries()
TARGETS = {
    "read / echo p50, 15 slots x 100 sources": 1.3,
    "summary read / fresh read p50, 15 slots x 100 sources": 1.3,
    "write / fresh write p50, 15 slots x 100 sources": 1.3,
}


@dataclass
class Shape:
    slots: int
    sources: int
    observations: int = 0  # as the node keeps them (at most max_observations per slot)
    reply_bytes: int = 0
    summary_bytes: int = 0
    read: dict[str, float] = field(default_factory=dict)
    echo: dict[str, float] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    write: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.slots}x{self.sources}"

    @property
    def subject_id(self) -> str:
        return f"shape-{self.slots}-slots-{self.sources}-sources"


def figures(f: Figures) -> dict[str, float]:
    return {
        "p50_ms": f.p50_ms,
        "p99_ms": f.p99_ms,
        "cpu_us": f.server_cpu_us,
        "calls": f.calls,
        "errors": f.errors,
    }


def subject_msg(subject_id: str) -> Any:
    from selfmodel.v1 import model_pb2

    return model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=subject_id)


def slot_of(s: int) -> tuple[str, str]:
    return CONTEXTS[s % len(CONTEXTS)], f"key-{s // len(CONTEXTS)}"


def source_of(k: int) -> str:
    return f"bench_agent_{k}"  # node_latency.agent_metadata(0) writes as source 0


def seed(channel: grpc.Channel, shape: Shape, timeout_s: float, subject_id: str = "") -> None:
    """Each source writes one observation to each slot, in one ObserveBatch per source."""
    from selfmodel.v1 import model_pb2, selfmodel_pb2

    batch = channel.unary_unary(BATCH, None, None)
    subject = subject_msg(subject_id or shape.subject_id)
    for k in range(shape.sources):
        req = selfmodel_pb2.ObserveBatchRequest()
        for s in range(shape.slots):
            context, key = slot_of(s)
            o = req.observations.add(
                subject=subject,
                context=context,
                key=key,
                statement=f"Answer {k % 3} to question {key} of {context.replace('_', ' ')}",
                confidence=0.55 + (k % 8) * 0.05,
            )
            o.evidence.add(kind=model_pb2.EVIDENCE_KIND_MESSAGE, ref=f"crm://conversation/{k}-{s}")
        batch(req.SerializeToString(), metadata=(("x-agent-id", source_of(k)),), timeout=timeout_s)


def read_request(subject_id: str, max_positions: int | None = None) -> bytes:
    from selfmodel.v1 import selfmodel_pb2

    req = selfmodel_pb2.GetSelfModelRequest(subject=subject_msg(subject_id))
    if max_positions is not None and SUMMARIES:
        req.max_positions = max_positions
    return req.SerializeToString()


def write_requests(shape: Shape) -> list[bytes]:
    """Observes by source 0 that change its position in each slot in turn."""
    from selfmodel.v1 import model_pb2, selfmodel_pb2

    out = []
    for v in range(2):
        for s in range(shape.slots):
            context, key = slot_of(s)
            req = selfmodel_pb2.ObserveRequest(
                subject=subject_msg(shape.subject_id),
                context=context,
                key=key,
                statement=f"Answer {v} to question {key} of {context.replace('_', ' ')}",
                confidence=0.8,
            )
            req.evidence.add(
                kind=model_pb2.EVIDENCE_KIND_MESSAGE, ref=f"crm://conversation/w{v}-{s}"
            )
            out.append(req.SerializeToString())
    return out


def capture(channel: grpc.Channel, shape: Shape, timeout_s: float) -> bytes:
    """The subject's full reply (what its echo answers); fills the shape's sizes."""
    from selfmodel.v1 import selfmodel_pb2

    get = channel.unary_unary(GET, None, None)
    md = node_latency.agent_metadata(0)
    reply = get(read_request(shape.subject_id), metadata=md, timeout=timeout_s)
    summary = get(read_request(shape.subject_id, 0), metadata=md, timeout=timeout_s)
    model = selfmodel_pb2.GetSelfModelResponse.FromString(reply).snapshot
    if len(model.beliefs) != shape.slots:
        raise RuntimeError(f"{shape.name}: seeded {shape.slots} slots, read {len(model.beliefs)}")
    shape.observations = sum(len(b.supporters) + len(b.dissenters) for b in model.beliefs)
    shape.reply_bytes, shape.summary_bytes = len(reply), len(summary)
    return reply


@dataclass
class Report:
    command: str
    machine: dict[str, str]
    started: str
    shapes: list[Shape]
    fresh_read: dict[str, float]
    fresh_write: dict[str, float]
    echo_write: dict[str, float]
    ratios: dict[str, float] = field(default_factory=dict)
    fleet: dict[str, Any] | None = None
    fleet_table: str = ""

    def shape(self, slots: int, sources: int) -> Shape | None:
        return next((s for s in self.shapes if (s.slots, s.sources) == (slots, sources)), None)


def compute_ratios(report: Report) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in report.shapes:
        out[f"read / echo p50, {s.name}"] = s.read["p50_ms"] / s.echo["p50_ms"]
        out[f"read / echo CPU per call, {s.name}"] = s.read["cpu_us"] / s.echo["cpu_us"]
        out[f"summary read / fresh read p50, {s.name}"] = (
            s.summary["p50_ms"] / report.fresh_read["p50_ms"]
        )
        out[f"write / fresh write p50, {s.name}"] = s.write["p50_ms"] / report.fresh_write["p50_ms"]
        out[f"write / fresh write CPU per call, {s.name}"] = (
            s.write["cpu_us"] / report.fresh_write["cpu_us"]
        )
    return out


def run(args: argparse.Namespace) -> Report:
    from tests.harness import NodeProcess

    info = node_latency.machine()
    shapes = [Shape(n, k) for n in args.slots for k in args.sources]
    fresh_subject = "fresh-subject"  # one observation
    with contextlib.ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="selfmodel-size-", dir=args.data)
            )
        )
        pool = ClientPool(1)
        stack.callback(pool.close)
        limits = ("--max-subject-observations", "20000", "--max-subject-bytes", "2000000")
        node = NodeProcess("size", tmp / "size" / "data", limits)
        stack.callback(node_latency._stop_node, node)
        node.start()
        assert node.proc is not None
        server = Server("node", node.proc.pid, node.address, node.metrics_port)
        replies: dict[str, bytes] = {}
        with grpc.insecure_channel(node.address, options=node_latency.CHANNEL_OPTIONS) as channel:
            for shape in shapes:
                seed(channel, shape, args.timeout)
                replies[shape.name] = capture(channel, shape, args.timeout)
                if not args.quiet:
                    print(
                        f"  seeded {shape.name:>7}: {shape.observations} positions, reply "
                        f"{shape.reply_bytes} B, summary {shape.summary_bytes} B",
                        flush=True,
                    )
            seed(channel, Shape(1, 1), args.timeout, fresh_subject)
            probe = node_latency.observe_requests("probe", 0, 1)[0]
            observe_reply = channel.unary_unary(OBSERVE, None, None)(
                probe, metadata=node_latency.agent_metadata(0), timeout=args.timeout
            )
        methods = {f"R{s.name}": replies[s.name] for s in shapes}
        methods["ObserveSized"] = observe_reply
        echo_process = EchoServer(methods)
        stack.callback(echo_process.stop)
        echo = Server("echo", echo_process.pid, echo_process.address)
        bench = Bench(pool, args.duration, args.warmup_calls, args.max_calls, args.timeout)

        def measure(name: str, target: Server, method: str, requests: list[bytes]) -> Figures:
            samples = [bench.measure(name, target, method, [requests]) for _ in range(args.rounds)]
            f = Figures.of(name, target.label, 1, samples)
            if not args.quiet:
                print(
                    f"  {name:<28} p50 {f.p50_ms:8.3f} ms  p99 {f.p99_ms:8.3f} ms  "
                    f"CPU {f.server_cpu_us:7.0f} us/call",
                    flush=True,
                )
            return f

        fresh_read = measure("fresh read", server, GET, [read_request(fresh_subject)])
        fresh_write = measure(
            "fresh write", server, OBSERVE, node_latency.observe_requests("fresh", 0, 4096)
        )
        echo_write = measure("echo write", echo, f"/{ECHO}/ObserveSized", [probe])
        for shape in shapes:
            request = read_request(shape.subject_id)
            shape.echo = figures(
                measure(f"echo {shape.name}", echo, f"/{ECHO}/R{shape.name}", [request])
            )
            shape.read = figures(measure(f"read {shape.name}", server, GET, [request]))
            summary = read_request(shape.subject_id, 0)
            shape.summary = figures(measure(f"summary {shape.name}", server, GET, [summary]))
            shape.write = figures(
                measure(f"write {shape.name}", server, OBSERVE, write_requests(shape))
            )
        pool.close()
    command = "python benchmarks/subject_size.py " + " ".join(args.argv)
    report = Report(
        command.strip(),
        info,
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        shapes,
        figures(fresh_read),
        figures(fresh_write),
        figures(echo_write),
    )
    report.ratios = compute_ratios(report)
    if args.fleet:
        report.fleet, report.fleet_table = run_fleet(args)
    return report


def run_fleet(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """load.py's fleet with this benchmark's mix; its operation rows and its table."""
    fleet_args = load.parse_args(
        ["--agents", str(args.fleet_agents), "--nodes", str(args.fleet_nodes),
         "--users", str(args.fleet_users), "--rate", "5", "--mix", FLEET_MIX,
         "--duration", str(args.fleet_duration), "--quiet",
         *(["--data", str(args.data)] if args.data else [])]
    )  # fmt: skip
    result = load.run(fleet_args)[0]
    rows = load.op_rows(result)
    fleet = {
        "agents": args.fleet_agents,
        "nodes": args.fleet_nodes,
        "operations": rows,
        "visibility_ms": {
            "p50": load.pct(result.visibility_ms, 0.5),
            "p99": load.pct(result.visibility_ms, 0.99),
        },
        "resources": [vars(r) for r in result.resources],
    }
    return fleet, load.render([result], fleet_args)


def growth(report: Report, what: str, key: str = "p50_ms") -> list[str]:
    """How ``what`` grows across the shapes: each shape against the smallest."""
    base = report.shapes[0]
    first = getattr(base, what)[key]
    return [
        f"{s.name}: {getattr(s, what)[key] / first:.2f}x" for s in report.shapes[1:] if first > 0
    ]


def render(report: Report) -> str:
    lines = [
        f"{report.command} ({report.started}; {report.machine['nproc']} CPUs, "
        f"{report.machine['cpu']}, Python {report.machine['python']}, grpcio "
        f"{report.machine['grpcio']}; load average {report.machine['load']})",
        "",
        "| slots x sources | positions | reply B | read p50 / p99 ms | echo p50 / p99 ms | "
        "read / echo p50 | read / echo CPU | summary B | summary p50 / p99 ms | "
        "write p50 / p99 ms | write CPU us | write / fresh p50 | write / fresh CPU |",
        "|---|--:|--:|---|---|--:|--:|--:|---|---|--:|--:|--:|",
    ]
    fr, fw, ew = report.fresh_read, report.fresh_write, report.echo_write
    for s in report.shapes:
        lines.append(
            f"| {s.name} | {s.observations} | {s.reply_bytes} | {s.read['p50_ms']:.3f} / "
            f"{s.read['p99_ms']:.3f} | {s.echo['p50_ms']:.3f} / {s.echo['p99_ms']:.3f} | "
            f"{s.read['p50_ms'] / s.echo['p50_ms']:.2f} | "
            f"{s.read['cpu_us'] / s.echo['cpu_us']:.2f} | {s.summary_bytes} | "
            f"{s.summary['p50_ms']:.3f} / {s.summary['p99_ms']:.3f} | "
            f"{s.write['p50_ms']:.3f} / {s.write['p99_ms']:.3f} | {s.write['cpu_us']:.0f} | "
            f"{s.write['p50_ms'] / fw['p50_ms']:.2f} | {s.write['cpu_us'] / fw['cpu_us']:.2f} |"
        )
    lines += [
        "",
        f"fresh subject: read p50 {fr['p50_ms']:.3f} ms (CPU {fr['cpu_us']:.0f} us/call); "
        f"write on a new subject p50 {fw['p50_ms']:.3f} ms (CPU {fw['cpu_us']:.0f} us/call); "
        f"echo of the write's reply p50 {ew['p50_ms']:.3f} ms (CPU {ew['cpu_us']:.0f} us/call)",
        *(
            []
            if SUMMARIES
            else ["(these contracts have no max_positions: 'summary' is a full read)"]
        ),
        "growth against the smallest shape: read p50 " + ", ".join(growth(report, "read")),
        "  read CPU " + ", ".join(growth(report, "read", "cpu_us")),
        "  write p50 " + ", ".join(growth(report, "write")),
        "  write CPU " + ", ".join(growth(report, "write", "cpu_us")),
        "",
        "| ratio | value | target |",
        "|---|--:|--:|",
    ]
    for name, target in TARGETS.items():
        value = report.ratios.get(name.replace("15 slots x 100 sources", "15x100"))
        if value is not None:
            verdict = "met" if value <= target else "MISS"
            lines.append(f"| {name} | {value:.2f} | <= {target} {verdict} |")
    if report.fleet_table:
        lines += ["", "fleet (benchmarks/load.py):", report.fleet_table]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=_counts, default=(1, 15, 100), help="e.g. 1,15,100")
    p.add_argument("--sources", type=_counts, default=(1, 10, 100), help="per slot, e.g. 1,10,100")
    p.add_argument("--quick", action="store_true", help="1 and 15 slots, 1 and 10 sources, 1 s")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per scenario and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup-calls", type=int, default=50)
    p.add_argument("--max-calls", type=int, default=1_000_000)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds")
    p.add_argument("--fleet", action="store_true", help="also run the fleet (load.py)")
    p.add_argument("--fleet-agents", type=int, default=100)
    p.add_argument("--fleet-nodes", type=int, default=3)
    p.add_argument("--fleet-users", type=int, default=2000)
    p.add_argument("--fleet-duration", type=float, default=60.0)
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.slots, args.sources, args.duration, args.rounds = (1, 15), (1, 10), 1.0, 1
    if args.duration <= 0 or args.rounds < 1:
        p.error("--duration and --rounds must be positive")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give counts, e.g. 1,15,100") from None
    if not values or min(values) < 1 or max(values) > 500:
        raise argparse.ArgumentTypeError(f"{text!r}: each count must be within 1..500")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = run(args)
    report.machine["load"] = f"{report.machine['load']}, {os.getloadavg()[0]:.1f}"
    text = render(report)
    print(text)
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    if args.json is not None:
        data = asdict(report)
        data["shapes"] = [asdict(s) | {"name": s.name} for s in report.shapes]
        args.json.write_text(json.dumps(data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
