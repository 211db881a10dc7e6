"""Runs every node of a cluster file as its own process on this machine, and reports status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc

from federation import processes
from federation.cluster import Cluster, default_cluster_text
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.channels import open_channel


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    log: Path


def effective_file(cluster: Cluster) -> Path:
    """The cluster file the nodes read: the given one, or the embedded default under data/."""
    if cluster.source is not None:
        return cluster.source
    path = cluster.nodes[0].data.parent / "cluster.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Paths in a cluster file are relative to its folder, which is the data root itself.
    path.write_text(default_cluster_text(data=".", tls=cluster.tls is not None))
    return path


def start_children(cluster: Cluster, extra: Sequence[str] = ()) -> list[Child]:
    path = effective_file(cluster)
    children: list[Child] = []
    for spec in cluster.nodes:
        log_path = spec.data.parent / f"{spec.name}.log"
        command = processes.node_command(spec.name, cluster_file=path, args=extra)
        proc = processes.spawn(command, log_path, env={processes.PARENT_ENV: str(os.getpid())})
        children.append(Child(spec.name, proc, log_path))
    return children


def wait_started(children: list[Child], out: TextIO) -> bool:
    ok = True
    deadline = time.monotonic() + processes.START_TIMEOUT_S
    for child in children:
        if processes.await_listening(child.proc, max(0.1, deadline - time.monotonic())) is None:
            ok = False
            tail = (
                "".join(child.log.read_text().splitlines(keepends=True)[-15:])
                if child.log.exists()
                else ""
            )
            print(f"node {child.name} did not start (see {child.log}):\n{tail}", file=out)
    return ok


def stop_children(children: list[Child], timeout_s: float = 15.0) -> None:
    processes.stop([child.proc for child in children], timeout_s)


def status_rows(
    cluster: Cluster, token: str | None = None, timeout_s: float = 2.0
) -> list[list[str]]:
    rows = []
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    credentials = cluster.agent_credentials()
    for spec in cluster.nodes:
        try:
            with open_channel(spec.address, credentials) as channel:
                status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(
                    admin_pb2.GetStatusRequest(), timeout=timeout_s, metadata=metadata
                )
            connected = sum(p.connected for p in status.peers)
            depth = max((p.outbox_depth for p in status.peers), default=0)
            lag = max((p.lag_seconds for p in status.peers), default=0.0)
            # Peers whose sessions fail or that refused subjects: "name:failing/skipped".
            failing = ",".join(
                f"{p.name}:{p.failing_sessions}/{p.skipped_subjects}"
                for p in status.peers
                if p.failing_sessions or p.skipped_subjects
            )
            # Deltas peers hold back for their clocks (resent), and those they rejected.
            pending = sum(p.deltas_pending for p in status.peers)
            invalid = sum(p.deltas_refused_invalid for p in status.peers)
            state = "serving"
            if status.clock_ahead_ms and status.writes_refused.startswith("clock"):
                state = f"refusing writes: clock {status.clock_ahead_ms} ms ahead"
            elif status.writes_refused:
                state = f"refusing writes: {status.writes_refused}"
            elif not status.serving:
                state = "writes suspended"
            rows.append([
                spec.name, spec.domain, spec.address, state,
                f"{connected}/{len(status.peers)}", str(depth), f"{lag:.3f}s",
                f"{pending} held, {invalid} invalid" if pending or invalid else "0",
                str(status.incarnation), failing or "-",
            ])  # fmt: skip
        except grpc.RpcError as exc:
            rows.append(
                [
                    spec.name,
                    spec.domain,
                    spec.address,
                    f"down ({exc.code().name})",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                ]
            )
    return rows


def format_table(rows: list[list[str]]) -> str:
    header = [
        "node", "domain", "address", "state", "peers", "outbox", "lag", "refused",
        "incarnation", "failing/skipped",
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def up(cluster: Cluster, out: TextIO = sys.stdout, token: str | None = None) -> int:
    """Starts every node, prints the status table, and stops them all on Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    children = start_children(cluster)
    try:
        if not wait_started(children, out):
            return 1
        time.sleep(0.5)  # let the peers connect before the first status
        print(format_table(status_rows(cluster, token)), file=out)
        print(
            f"\n{len(children)} nodes running; logs in {children[0].log.parent}/. "
            "Ctrl-C stops them.",
            file=out,
            flush=True,
        )
        reported: set[str] = set()
        while not stop.wait(1.0):
            for child in children:
                code = child.proc.poll()
                if code is not None and child.name not in reported:
                    reported.add(child.name)
                    print(
                        f"node {child.name} exited with code {code}; see {child.log}",
                        file=out,
                        flush=True,
                    )
            if len(reported) == len(children):
                return 1
        print("stopping the cluster...", file=out, flush=True)
        return 0
    finally:
        stop_children(children)
        for s, handler in previous.items():
            signal.signal(s, handler)
