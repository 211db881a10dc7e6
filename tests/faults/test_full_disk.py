"""A node whose data directory's disk fills up: clear refusals, reported, and back by itself.

The data directory sits on a small tmpfs of its own (mounting one needs root or CAP_SYS_ADMIN;
the tests skip, saying so, where that is not permitted), filled by a file the test then removes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from federation.client import Client, user
from node.errors import Unavailable
from tests.nodes import LocalCluster, NodeProcess, node_status, wait_until

pytestmark = pytest.mark.faults

WAIT_S = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB mounted at ``where`` for the test's duration."""
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full disk: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def fill(disk: Path) -> Path:
    """Fills ``disk`` to its last byte with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            for _ in range(100_000):  # far more than any test disk holds
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5.0
        )
    return int(reply.status)


def metric(node: NodeProcess, name: str) -> float:
    for line in node.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def start_on(disk: Path, tmp_path: Path, *args: str) -> NodeProcess:
    node = NodeProcess("full", disk / "data", ("--disk-probe-s", "0.2", *args))
    node.log_path = tmp_path / "full.log"  # the log must not need the full disk
    return node.start()


def test_a_full_disk_refuses_writes_clearly_reports_it_and_resumes_once_freed(tmp_path: Path):
    with small_disk(tmp_path / "disk", 24) as disk:
        node = start_on(disk, tmp_path, "--min-free-mb", "0")
        try:
            with Client(node.address, agent="writer", tenant="acme", attempts=1) as client:
                acked = []
                for i in range(20):
                    client.observe(user("u-disk"), f"Fact {i}", confidence=0.8, context="facts")
                    acked.append(f"Fact {i}")
                filler = fill(disk)
                refused: Unavailable | None = None
                for i in range(20, 2_000):
                    try:
                        client.observe(
                            user("u-disk"), f"Fact {i} " + "x" * 1000, confidence=0.8,
                            context="facts",
                        )  # fmt: skip
                    except Unavailable as exc:
                        refused = exc
                        break
                    acked.append(f"Fact {i} " + "x" * 1000)
                assert refused is not None, "writes went on with the disk full"
                assert "full" in str(refused) and str(disk / "data") in str(refused), refused
                # Every later write is refused at once, the same way, while reads go on.
                for i in range(5):
                    with pytest.raises(Unavailable, match="disk holding its data directory"):
                        client.observe(user("u-other"), f"Later {i}", confidence=0.8, context="c")
                model = client.self_model(user("u-disk"), include_uncertain=True)
                assert set(acked) <= {b.statement for b in model.all_beliefs}
                assert health(node.address, "selfmodel.v1.SelfModelService") == NOT_SERVING
                assert health(node.address, "") == SERVING  # alive: reads and Sync go on
                assert metric(node, "selfmodel_store_writable") == 0
                status = node_status(node.address)
                assert not status.serving
                assert any("full" in p for p in status.problems), status.problems

                filler.unlink()
                wait_until(
                    lambda: health(node.address, "selfmodel.v1.SelfModelService") == SERVING,
                    "writes never resumed after the disk was freed",
                    WAIT_S,
                )
                client.observe(user("u-disk"), "After the disk was freed", confidence=0.8,
                               context="facts")  # fmt: skip
                acked.append("After the disk was freed")
                assert metric(node, "selfmodel_store_writable") == 1
                assert node_status(node.address).serving
            log = node.log()
            assert log.count("writes suspended") == 1, log
            assert log.count("writes resumed") == 1, log
            assert "Traceback" not in log, log
            # Everything acknowledged is durable: it is there after a restart.
            assert node.stop() == 0
            node.start()
            with Client(node.address, agent="auditor", tenant="acme") as client:
                model = client.self_model(user("u-disk"), include_uncertain=True)
            assert set(acked) <= {b.statement for b in model.all_beliefs}
        finally:
            node.stop()


def test_writes_stop_before_the_disk_is_full_and_resume_above_the_floor(tmp_path: Path):
    with small_disk(tmp_path / "disk", 24) as disk:
        node = start_on(disk, tmp_path, "--min-free-mb", "4")
        try:
            with Client(node.address, agent="writer", tenant="acme", attempts=1) as client:
                client.observe(user("u-floor"), "Before", confidence=0.8, context="facts")
                filler = disk / "filler"
                free_mb = int(subprocess.check_output(["df", "-m", "--output=avail", str(disk)],
                                                      text=True).split()[-1])  # fmt: skip
                filler.write_bytes(b"\0" * (max(0, free_mb - 2) * 2**20))
                wait_until(
                    lambda: health(node.address, "selfmodel.v1.SelfModelService") == NOT_SERVING,
                    "writes not suspended under min_free_mb",
                    WAIT_S,
                )
                with pytest.raises(Unavailable, match=r"nearly full.*min_free_mb") as refused:
                    client.observe(user("u-floor"), "Refused", confidence=0.8, context="facts")
                assert refused.value.reason == "DISK_FULL"
                assert refused.value.metadata == {"node": node.name, "setting": "min_free_mb"}
                assert refused.value.retry_after_s is not None  # the disk probe's interval
                filler.unlink()
                wait_until(
                    lambda: health(node.address, "selfmodel.v1.SelfModelService") == SERVING,
                    "writes never resumed",
                    WAIT_S,
                )
                client.observe(user("u-floor"), "After", confidence=0.8, context="facts")
            log = node.log()
            assert log.count("writes suspended") == 1 and log.count("writes resumed") == 1, log
            assert "Traceback" not in log, log
        finally:
            node.stop()


def test_a_node_with_a_full_disk_catches_up_with_its_peers_once_freed(tmp_path: Path):
    """Its peers' deltas are refused while its disk is full, never acknowledged as merged;
    once it has room it merges them, and what it acknowledged before is still there."""
    cluster = LocalCluster(tmp_path / "cluster", ("sales", "support"), proxies=False)
    with small_disk(tmp_path / "cluster" / "support", 24) as disk:
        cluster.nodes["support"].args = ("--min-free-mb", "0", "--disk-probe-s", "0.2")
        try:
            cluster.start()
            with cluster.client("sales", "writer", attempts=1) as sales:
                before = sales.observe(user("u-peer"), "Before", confidence=0.8, context="facts")
            with cluster.client("support", "reader") as support:
                support.self_model(user("u-peer"), at_least=before.token, timeout_s=WAIT_S)
            filler = fill(disk)
            with cluster.client("sales", "writer", attempts=1) as sales:
                written = []
                for i in range(50):
                    statement = f"While full {i} " + "z" * 1000
                    written.append(
                        sales.observe(user("u-peer"), statement, confidence=0.8, context="facts")
                    )
            wait_until(
                lambda: (
                    health(cluster.address("support"), "selfmodel.v1.SelfModelService")
                    == NOT_SERVING
                ),
                "support's writes were not suspended by its peer's deltas on a full disk",
                WAIT_S,
            )
            filler.unlink()
            with cluster.client("support", "reader") as support:
                model = support.self_model(
                    user("u-peer"), at_least=written[-1].token, timeout_s=WAIT_S
                )
            assert len(model.all_beliefs) == 51
            cluster.wait_converged(WAIT_S)
            log = cluster.nodes["support"].log()
            assert log.count("writes suspended") == 1 and "Traceback" not in log, log
        finally:
            cluster.stop()
