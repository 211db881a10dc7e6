"""Starting and stopping ``selfmodel node`` processes: the launcher (``selfmodel cluster up``),
the tests and the benchmarks all start their nodes through here.

A node's stderr goes to its log file; its stdout carries the one line it prints once it serves,
``selfmodel node NAME listening on ADDRESS[ metrics http://HOST:PORT/metrics][ peers ...]``
(node.server.serve), from which the ports it bound are read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"listening on (\S+)(?: metrics http://[^:]+:(\d+)/metrics)?")


# Set by a launcher in its nodes' environment: its pid, so that each node dies with it.
PARENT_ENV = "SELFMODEL_PARENT_PID"


def die_with_parent(parent: int) -> None:
    """Called by a node at start: SIGTERM it when its launcher dies (Linux; elsewhere a no-op).

    Done in the node itself rather than in a ``preexec_fn``, which can deadlock a child forked
    from a threaded parent; if the launcher died before this ran, the node stops at once.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def node_command(
    name: str,
    *,
    cluster_file: Path | None = None,
    data_dir: Path | None = None,
    listen: str = "127.0.0.1:0",
    metrics: str = "127.0.0.1:0",
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> list[str]:
    """The command line of node ``name``: the cluster file's node, else one on ``data_dir``
    serving ``listen`` and ``metrics`` ("" for none). ``prefix``: a command to run it under, as
    an operator may (``taskset -c 1``, ``chrt``)."""
    base = [*prefix, sys.executable, "-m", "federation", "node", "--name", name]
    if cluster_file is not None:
        return [*base, "--cluster", str(cluster_file), *args]
    if data_dir is None:
        raise ValueError(f"node {name}: give a cluster file or a data directory")
    return [*base, "--data", str(data_dir), "--listen", listen, "--metrics", metrics, *args]


def spawn(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    """Starts ``command`` with stderr appended to ``log_path`` and stdout piped (read it with
    ``await_listening``); ``env`` is set over this process's environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "a") as log:
        return subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=log, text=True, env=environment, cwd=cwd
        )


@dataclass(frozen=True, slots=True)
class Listening:
    address: str  # the agents' port, HOST:PORT
    metrics_port: int | None


def await_listening(
    proc: subprocess.Popen[str], timeout_s: float = START_TIMEOUT_S
) -> Listening | None:
    """What the node bound, once it says it serves; None when it exits, prints anything else
    or nothing within ``timeout_s``."""
    assert proc.stdout is not None, "spawn the node with its stdout piped"
    match = _LISTENING.search(_readline(proc.stdout, timeout_s))
    if match is None:
        return None
    return Listening(match.group(1), int(match.group(2)) if match.group(2) else None)


def _readline(stream: IO[str], timeout_s: float) -> str:
    result: list[str] = []

    def read() -> None:
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile: the node was stopped
            result.append(stream.readline())

    reader = threading.Thread(target=read, name="node-stdout", daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result else ""


def stop(procs: Iterable[subprocess.Popen[str]], timeout_s: float = 15.0) -> list[int]:
    """SIGTERM to every process still running (a paused one is resumed first: it could not
    handle it), then waits for all within ``timeout_s``; SIGKILL for those still running then.
    Closes their stdout; returns their exit codes."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return [proc.returncode for proc in procs]


__all__ = [
    "PARENT_ENV",
    "START_TIMEOUT_S",
    "Listening",
    "await_listening",
    "die_with_parent",
    "node_command",
    "spawn",
    "stop",
]
