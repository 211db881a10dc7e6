"""Real node processes for integration and fault tests: on free loopback ports, always stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_LISTENING = re.compile(r"listening on (\S+)(?: metrics http://[^:]+:(\d+)/metrics)?")
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(address: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"node at {address} not healthy after {timeout_s}s")
            time.sleep(0.05)


@dataclass
class NodeProcess:
    """One `selfmodel node` process; restartable on the same data directory and port."""

    name: str
    data_dir: Path
    args: Sequence[str] = ()
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    address: str = ""
    metrics_port: int | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.name}.log"

    def start(self) -> NodeProcess:
        cmd = [
            sys.executable, "-m", "federation", "node",
            "--name", self.name,
            "--data", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics", "127.0.0.1:0",
            *self.args,
        ]  # fmt: skip
        log = open(self.log_path, "a")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = _LISTENING.search(line)
        if not match:
            self.kill()
            raise RuntimeError(
                f"node {self.name} did not start: {line!r}\n{self.log_path.read_text()}"
            )
        self.address = match.group(1)
        self.port = int(self.address.rsplit(":", 1)[1])
        self.metrics_port = int(match.group(2)) if match.group(2) else None
        wait_healthy(self.address)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._close()
        return code

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def metrics(self, timeout_s: float = 5.0) -> str:
        """The node's Prometheus exposition text (GET /metrics)."""
        assert self.metrics_port is not None, f"node {self.name} serves no metrics"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return str(reply.read().decode())

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
