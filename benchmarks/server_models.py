#!/usr/bin/env python3
"""grpcio's threaded server against grpc.aio, bare and durable, in one run: the node's choice.

The node serves on grpcio's threaded ``grpc.server`` (node/server.py). This measures the other
choice, ``grpc.aio``, on the two things a node's calls need, with no node code in the way:

- **echo**: answer fixed bytes (the floor of ``node_latency.py``);
- **durable**: append the request to a file and ``fdatasync`` it before answering, which is the
  shape of a durable ``Observe``. Threaded: in the handler; concurrent calls' syncs of the one
  file share the journal commit in the kernel, and each waiting call holds a thread. asyncio:
  the handler awaits a future; one committer thread appends and syncs each group of waiting
  calls at once and resolves their futures on the event loop (``call_soon_threadsafe``), so a
  group costs one handoff to the loop and no call holds a thread (asyncio's strength).

Each server is a process of its own on one CPU (``--cpu``, as ``node_latency.py`` pins the node
and the echo), configured like the node's (thread pool, message limits, and the gRPC
experiments a node runs with, node.transport). Clients are ``node_latency.py``'s: separate
processes, one channel and one call in flight each, pre-serialized ``Observe`` requests, replies
not decoded. Every server is measured with 1 and with ``--clients`` clients, rounds interleaved.

It prints calls/s, p50, the server's CPU time and context switches per call, and asyncio over
threaded for each.

    python benchmarks/server_models.py              # about 2 minutes
    python benchmarks/server_models.py --rounds 1 --duration 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import node_latency as nl

from node import transport

SERVICE = "bench.v1.Models"
METHOD = f"/{SERVICE}/Call"
REPLY = b"\n" + bytes(113)  # an ObserveResponse's size (node_latency.py, "reply 114 B")
KINDS = ("threaded", "asyncio")
WORKLOADS = ("echo", "durable")


def _register(server: Any, call: Any) -> None:
    """``call`` as the one method, /bench.v1.Models/Call, of a threaded or asyncio server."""
    handler = grpc.unary_unary_rpc_method_handler(call)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Call": handler}),)
    )


def _threaded(durable: bool, path: str, conn: Connection) -> None:
    server = nl.threaded_server()

    if durable:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        append = threading.Lock()

        def call(request: bytes, context: Any) -> bytes:
            with append:
                os.write(fd, request)
            os.fdatasync(fd)
            return REPLY

    else:

        def call(request: bytes, context: Any) -> bytes:
            return REPLY

    _register(server, call)
    nl.serve_until_told(server, conn)


class _Committer:
    """One thread: appends and syncs each group of waiting calls, then wakes them on the loop."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._loop = loop
        self._ready = threading.Condition()
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        threading.Thread(target=self._run, name="committer", daemon=True).start()

    def submit(self, request: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        with self._ready:
            self._queue.append((request, future))
            self._ready.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                group, self._queue = self._queue, []
            os.write(self._fd, b"".join(request for request, _ in group))
            os.fdatasync(self._fd)
            self._loop.call_soon_threadsafe(_resolve, [future for _, future in group])


def _resolve(group: list[asyncio.Future[None]]) -> None:
    for future in group:
        if not future.done():
            future.set_result(None)


def _asyncio(durable: bool, path: str, conn: Connection) -> None:
    async def serve() -> None:
        server = grpc.aio.server(
            options=[*nl.CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=nl.SERVER_MAX_CONCURRENT_RPCS,
        )
        committer = _Committer(path, asyncio.get_running_loop()) if durable else None

        async def call(request: bytes, context: Any) -> bytes:
            if committer is not None:
                await committer.submit(request)
            return REPLY

        _register(server, call)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send((os.getpid(), port))
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop(0)

    asyncio.run(serve())


def _serve(kind: str, durable: bool, path: str, cpu: int, conn: Connection) -> None:
    """A server process: pinned to ``cpu`` before any thread starts, as the node pins itself."""
    from node.server import pin_to_cpus

    pin_to_cpus(frozenset({cpu}))
    (_threaded if kind == "threaded" else _asyncio)(durable, path, conn)


def start(kind: str, durable: bool, path: Path, cpu: int) -> tuple[nl.ServerProcess, nl.Server]:
    """A server of ``kind`` (threaded or asyncio), echo or durable, in a process of its own."""
    label = f"{kind} {'durable' if durable else 'echo'}"
    process = nl.ServerProcess(_serve, (kind, durable, str(path), cpu), f"the {label} server")
    return process, nl.Server(label, process.pid, process.address)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, every scenario in each (3)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (3)")
    nl.add_cpu_option(p, "every server runs on")
    args = p.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.duration <= 0:
        p.error("--clients and --rounds must be positive, and --duration too")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    transport.configure()  # the servers start with the experiments a node runs with
    print(
        f"server models: threaded grpc.server and grpc.aio, echo and durable, 1 and "
        f"{args.clients} clients, {args.rounds} round(s) of {args.duration:g} s, servers on CPU "
        f"{args.cpu}; grpcio {grpc.__version__}, "
        f"{transport.ENV}={transport.experiments() or '(empty)'}"
    )
    figures: dict[tuple[str, str, int], list[nl.Sample]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="server-models-")))
        pool = nl.ClientPool(args.clients)
        stack.callback(pool.close)
        servers: dict[tuple[str, str], nl.Server] = {}
        for kind in KINDS:
            for workload in WORKLOADS:
                process, server = start(kind, workload == "durable", tmp / f"{kind}.log", args.cpu)
                stack.callback(process.stop)
                servers[kind, workload] = server
        bench = nl.Bench(pool, args.duration, 200, 10**9, 10.0)
        for r in range(args.rounds):
            for clients in (1, args.clients):
                for (kind, workload), server in servers.items():
                    requests = [
                        nl.observe_requests(f"{kind}{workload}{r}", w, nl.REQUESTS_PER_WRITER)
                        for w in range(clients)
                    ]
                    sample = bench.measure(server.label, server, METHOD, requests)
                    if sample.errors:
                        print(f"{server.label}: {sample.errors} calls failed, first: "
                              f"{sample.first_error}", file=sys.stderr)  # fmt: skip
                        return 1
                    figures.setdefault((kind, workload, clients), []).append(sample)
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
        pool.close()

    pooled = {
        key: nl.Figures.of(f"{key[0]} {key[1]}", key[0], key[2], samples)
        for key, samples in figures.items()
    }
    print()
    print(
        f"{'server':<18} {'clients':>7} {'calls/s':>8} {'p50 ms':>7} {'CPU us/call':>11} "
        f"{'cs/call':>7}"
    )
    for (kind, workload, clients), f in pooled.items():
        print(
            f"{kind + ' ' + workload:<18} {clients:>7} {f.throughput:>8.0f} {f.p50_ms:>7.3f} "
            f"{f.server_cpu_us:>11.0f} {f.server_switches:>7.1f}"
        )
    print()
    print(f"{'asyncio / threaded':<26} {'calls/s':>8} {'CPU/call':>9}")
    for workload in WORKLOADS:
        for clients in (1, args.clients):
            a, t = pooled["asyncio", workload, clients], pooled["threaded", workload, clients]
            print(
                f"{workload + f', {clients} client(s)':<26} {a.throughput / t.throughput:>8.2f} "
                f"{a.server_cpu_us / t.server_cpu_us:>9.2f}"
            )
    for kind in KINDS:
        d, e = pooled[kind, "durable", args.clients], pooled[kind, "echo", args.clients]
        print(
            f"{kind}: durable / echo calls/s with {args.clients} clients "
            f"{d.throughput / e.throughput:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
