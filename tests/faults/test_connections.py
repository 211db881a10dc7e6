"""Idle TCP connections by the thousand cannot use up a node's files: it keeps answering.

The node runs under a lowered open-file limit (prlimit), so that a flood of a couple of
thousand connections is enough to exhaust it without bounds, and the test stays small.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.client import Client, user
from node.errors import SelfModelError
from tests.nodes import NodeProcess

pytestmark = pytest.mark.faults

FILE_LIMIT = 512
FLOOD = 2_000
WAIT_S = 30.0
# The node refuses connections past its bound and closes half-open ones after this.
HANDSHAKE_S = 2.0


class LimitedNode(NodeProcess):
    """A node process started under an open-file limit of FILE_LIMIT."""

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={FILE_LIMIT}:{FILE_LIMIT}", "--", *super().command()]


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections to ``port`` that never send a byte, open until the end."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + WAIT_S
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5.0)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()  # the backlog is full: the node is not accepting this fast
                continue
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def answers(address: str, tag: str) -> bool:
    """Whether a client new to the node gets a write and a read through."""
    try:
        with Client(address, agent="newcomer", tenant="acme", attempts=1, timeout_s=3) as c:
            c.observe(user("u-conn"), f"Fact {tag}", confidence=0.8, context="facts")
            return f"Fact {tag}" in {b.statement for b in c.self_model(user("u-conn")).all_beliefs}
    except SelfModelError:
        return False


@pytest.fixture
def many_files() -> Iterator[None]:
    """This process may hold the flood's sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-file hard limit {hard} is below the {wanted} this test holds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flood_of_idle_connections_leaves_the_node_answering_old_and_new_clients(
    tmp_path: Path, many_files: None
):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is needed to start the node under a lower file limit")
    node = LimitedNode(
        "flooded",
        tmp_path / "flooded" / "data",
        ("--handshake-timeout-s", str(HANDSHAKE_S), "--connection-idle-s", "600"),
    )
    node.start()
    try:
        assert node.proc is not None
        pid = node.proc.pid
        with Client(node.address, agent="regular", tenant="acme", attempts=1, timeout_s=5) as old:
            old.observe(user("u-conn"), "Before", confidence=0.8, context="facts")  # admitted
            with idle_connections(node.port, FLOOD) as flood:
                assert len(flood) > FILE_LIMIT, f"only {len(flood)} connections were opened"
                # An admitted client is served throughout.
                for i in range(5):
                    old.observe(user("u-conn"), f"During {i}", confidence=0.8, context="facts")
                assert open_files(pid) < FILE_LIMIT, "the node ran out of files"
                # A new client gets in while the flood's sockets are still held open: the node
                # closed those past its bound at once and the rest after HANDSHAKE_S.
                deadline = time.monotonic() + WAIT_S
                attempt = 0
                while not answers(node.address, f"new {attempt}"):
                    attempt += 1
                    assert time.monotonic() < deadline, "no new client got an answer"
                    time.sleep(0.5)
                model = old.self_model(user("u-conn"))
                assert {"Before", "During 4"} <= {b.statement for b in model.all_beliefs}
        assert "Too many open files" not in node.log()
        assert node.stop() == 0
    finally:
        node.stop()
