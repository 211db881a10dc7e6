from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess


@contextlib.contextmanager
def _node_starter(root: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts nodes under ``root``; on exit every one is resumed (if paused) and stopped."""
    started: list[NodeProcess] = []

    def start(name: str = "local", *args: str) -> NodeProcess:
        node = NodeProcess(name, root / name / "data", args)
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in started:
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)  # in case a test paused it
            node.stop()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts real node processes on free loopback ports; every one is stopped at teardown."""
    with _node_starter(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def module_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node shared by the tests of a module (for tables of cheap cases); always stopped."""
    with _node_starter(tmp_path_factory.mktemp("module_node")) as start:
        yield start("shared")
