"""`selfmodel cluster up`: starts every node of the file, prints status, stops all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import free_port


def node_pids(data: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", f"--cluster {data}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_cluster_up_serves_every_node_and_ctrl_c_stops_them_all(tmp_path: Path):
    ports = [free_port() for _ in range(3)]
    names = ["sales", "support", "billing"]
    nodes = "\n".join(
        f'[[node]]\nname = "{n}"\naddress = "127.0.0.1:{p}"\nmetrics = "127.0.0.1:0"\n'
        for n, p in zip(names, ports, strict=True)
    )
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\ndata = "data"\nfsync = false\n\n{nodes}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "federation", "cluster", "up", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops them" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stdout.readline()
            assert line, "cluster up exited early:\n" + "".join(lines)
            lines.append(line)
        table = [line.split() for line in lines if line.split() and line.split()[0] in names]
        assert sorted(r[0] for r in table) == sorted(names)
        assert all(r[3] == "serving" for r in table), "".join(lines)
        assert len(node_pids(config)) == 3

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert node_pids(config) == []
        for name in names:
            assert f"node {name} stopped" in (tmp_path / "data" / f"{name}.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in node_pids(config):
            os.kill(pid, signal.SIGKILL)


def test_nodes_do_not_outlive_a_killed_launcher(tmp_path: Path):
    port = free_port()
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[cluster]\ndata = "data"\nfsync = false\n\n[[node]]\nname = "solo"\n'
        f'address = "127.0.0.1:{port}"\nmetrics = "127.0.0.1:0"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "federation", "cluster", "up", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "Ctrl-C stops them" not in proc.stdout.readline():
            assert time.monotonic() < deadline and proc.poll() is None
        assert len(node_pids(config)) == 1
        proc.kill()  # no chance to stop its children
        proc.wait()
        deadline = time.monotonic() + 20
        while node_pids(config):
            assert time.monotonic() < deadline, "the node outlived its launcher"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in node_pids(config):
            os.kill(pid, signal.SIGKILL)
