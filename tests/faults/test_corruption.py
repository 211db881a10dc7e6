"""A node whose store is damaged on disk says so at start, and its peers repair what it lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from federation.client import user
from node.errors import SelfModelError
from tests.harness import LocalCluster, NodeProcess
from tests.nodes import node_status

pytestmark = pytest.mark.faults

WRITES = 200
WAIT_S = 60.0


def corruption_count(node: NodeProcess, kind: str) -> float:
    for line in node.metrics().splitlines():
        if line.startswith(f'selfmodel_store_corruption_total{{kind="{kind}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def statements_on(cluster: LocalCluster, name: str, subject: str) -> set[str] | None:
    """The statements ``name`` serves for ``subject``; None while it fails to read it."""
    with cluster.client(name, "reader") as reader:
        try:
            model = reader.self_model(user(subject), include_uncertain=True)
        except SelfModelError:
            return None
    return {b.statement for b in model.all_beliefs}


def wait_for_statements(cluster: LocalCluster, name: str, subject: str, want: set[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        have = statements_on(cluster, name, subject)
        if have is not None and want <= have:
            return
        missing = len(want - (have or set()))
        assert time.monotonic() < deadline, f"{name} still misses {missing} of {subject}'s writes"
        time.sleep(0.2)


def test_a_half_truncated_wal_is_reported_and_the_lost_writes_come_back_from_peers(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support", "billing"))
    written = set()
    with cluster.client("sales", "writer") as sales:
        for i in range(WRITES):
            statement = f"Fact {i}"
            sales.observe(user("u-wal"), statement, confidence=0.8, context="facts")
            written.add(statement)
    cluster.wait_converged(WAIT_S)

    node = cluster.nodes["sales"]
    node.kill()  # the writes are in its WAL only: no memtable was flushed
    wals = sorted(node.data_dir.glob("*.log"), key=lambda p: p.stat().st_size)
    wal = wals[-1]
    size = wal.stat().st_size
    with open(wal, "r+b") as f:
        f.truncate(size // 2 + 7)  # inside a record
    node.start()

    status = node_status(node.address)
    assert any("write-ahead log" in p and "damaged" in p for p in status.problems), status
    assert corruption_count(node, "wal") == 1
    assert "write-ahead log" in node.log() and "Corruption" in node.log()
    # What the node lost with its WAL's tail comes back from its peers.
    wait_for_statements(cluster, "sales", "u-wal", written)
    cluster.wait_converged(WAIT_S)


def test_a_subject_in_a_corrupt_sst_block_is_found_and_repaired_from_peers(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support", "billing"))
    secret = uuid.uuid4().hex + uuid.uuid4().hex  # random: stays literal in a compressed block
    with cluster.client("sales", "writer") as sales:
        for i in range(50):  # other subjects around it, in other blocks
            sales.observe(user(f"u-other-{i}"), f"Other {i} " + "y" * 200, confidence=0.8,
                          context="facts")  # fmt: skip
        sales.observe(user("u-sst"), f"Secret {secret}", confidence=0.8, context="facts")
    cluster.wait_converged(WAIT_S)

    node = cluster.nodes["support"]
    assert node.stop() == 0  # a clean stop writes every memtable to SST files
    hits = corrupt_where(node.data_dir, secret.encode())
    assert hits, "no SST file holds the subject's state"
    node.start()

    wait_for_statements(cluster, "support", "u-sst", {f"Secret {secret}"})
    status = node_status(node.address)
    assert any("corrupt" in p and "u-sst" in p for p in status.problems), status
    assert corruption_count(node, "sst") >= 1
    cluster.wait_converged(WAIT_S)


def corrupt_where(data: Path, needle: bytes) -> list[Path]:
    """Overwrites ``needle`` in every SST file under ``data`` holding it; returns those files."""
    hits = []
    for sst in sorted(data.glob("*.sst")):
        raw = bytearray(sst.read_bytes())
        at = raw.find(needle)
        if at < 0:
            continue
        raw[at : at + len(needle)] = b"\xff" * len(needle)
        sst.write_bytes(bytes(raw))
        hits.append(sst)
    return hits
