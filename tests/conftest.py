from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nodes import LocalCluster, NodeProcess


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts real node processes on free loopback ports; every one is stopped at teardown."""
    started: list[NodeProcess] = []

    def start(name: str = "local", *args: str) -> NodeProcess:
        node = NodeProcess(name, tmp_path / name / "data", args)
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()  # sends SIGCONT first, in case a test paused it


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Starts local clusters of real node processes; every node and proxy is stopped at teardown."""
    clusters: list[LocalCluster] = []

    def make(
        names: tuple[str, ...] = ("sales", "support", "billing"), **kwargs: object
    ) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(clusters)}", names, **kwargs)  # type: ignore[arg-type]
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.stop()
