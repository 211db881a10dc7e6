from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import start_with_fresh_ports
from tests.nodes import LocalCluster, NodeProcess


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
            node.stop()  # resumes a paused node first


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts real node processes on free loopback ports; every one is stopped at teardown."""
    with _node_starter(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def module_node_args() -> tuple[str, ...]:
    """More ``selfmodel node`` arguments for a module's shared node; a module may override it."""
    return ()


@pytest.fixture(scope="module")
def module_node(
    tmp_path_factory: pytest.TempPathFactory, module_node_args: tuple[str, ...]
) -> Iterator[NodeProcess]:
    """One real node shared by the tests of a module (for tables of cheap cases); always stopped."""
    with _node_starter(tmp_path_factory.mktemp("module_node")) as start:
        yield start("shared", *module_node_args)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Starts local clusters of real node processes; every node and proxy is stopped at teardown."""
    clusters: list[LocalCluster] = []

    def make(
        names: tuple[str, ...] = ("sales", "support", "billing"), **kwargs: object
    ) -> LocalCluster:
        def attempt(n: int) -> LocalCluster:
            root = tmp_path / f"cluster{len(clusters)}-{n}"
            cluster = LocalCluster(root, names, **kwargs)  # type: ignore[arg-type]
            clusters.append(cluster)
            return cluster

        return start_with_fresh_ports(attempt)

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()
