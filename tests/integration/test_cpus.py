"""``selfmodel node --cpus``: every thread of the node, and every thread it starts later, runs
on the CPUs given (one CPU per node serves the most calls: see the README); and
``--sched-batch``: every thread runs under SCHED_BATCH."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from federation.client import Client, user
from federation.harness import LocalCluster
from node.server import ConfigError, parse_cpus
from tests.nodes import NodeProcess

T = TypeVar("T")


def per_thread(pid: int, read: Callable[[int], T]) -> dict[int, T]:
    """``read`` of every live thread of process ``pid``, by thread id."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(tid)] = read(int(tid))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return found


def thread_cpus(pid: int) -> dict[int, set[int]]:
    return per_thread(pid, os.sched_getaffinity)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_every_thread_of_a_node_run_with_cpus_runs_there(
    start_node: Callable[..., NodeProcess],
) -> None:
    cpu = max(os.sched_getaffinity(0))
    node = start_node("pinned", "--cpus", str(cpu))
    assert node.proc is not None
    with Client(
        node.address, agent="sales_agent", tenant="acme"
    ) as client:  # starts handler threads
        for i in range(20):
            client.observe(user(f"u-{i}"), "Pinned", confidence=0.5, context="facts")
        client.self_model(user("u-1"))
    threads = thread_cpus(node.proc.pid)
    assert len(threads) > 4  # gRPC's own threads and the handlers' among them
    assert all(cpus == {cpu} for cpus in threads.values()), threads


def test_every_thread_of_a_node_run_with_sched_batch_runs_under_it(
    start_node: Callable[..., NodeProcess],
) -> None:
    batch = start_node("batch", "--sched-batch")
    plain = start_node("plain")
    for node in (batch, plain):
        with Client(node.address, agent="sales_agent", tenant="acme") as client:
            for i in range(20):  # starts handler threads, and a group commit's
                client.observe(user(f"u-{i}"), "Batched", confidence=0.5, context="facts")
            client.self_model(user("u-1"))
    assert batch.proc is not None and plain.proc is not None
    policies = per_thread(batch.proc.pid, os.sched_getscheduler)
    assert len(policies) > 4  # gRPC's own threads and the handlers' among them
    assert set(policies.values()) == {os.SCHED_BATCH}, policies
    assert set(per_thread(plain.proc.pid, os.sched_getscheduler).values()) == {os.SCHED_OTHER}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_a_local_cluster_passes_each_node_its_own_arguments(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cpu = max(os.sched_getaffinity(0))
    cluster = make_cluster(("sales", "support"), node_args={"sales": ["--cpus", str(cpu)]})
    sales, support = (cluster.nodes[n].proc for n in ("sales", "support"))
    assert sales is not None and support is not None
    assert all(cpus == {cpu} for cpus in thread_cpus(sales.pid).values())
    assert all(cpus == os.sched_getaffinity(0) for cpus in thread_cpus(support.pid).values())


@pytest.mark.parametrize(
    ("value", "message"),
    [("one", "give CPU numbers"), ("99999", "may run only on CPUs")],
)
def test_cpus_it_cannot_use_are_refused_before_the_node_starts(
    tmp_path: Path, value: str, message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "federation", "node", "--data", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--metrics", "", "--cpus", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("1", {1}), ("0,2", {0, 2}), ("0-3", {0, 1, 2, 3}), (" 2 , 4-5", {2, 4, 5})],
)
def test_cpu_lists_read_as_taskset_writes_them(text: str, cpus: set[int]) -> None:
    assert parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "-1", "3-1", "1,,2", "0-"])
def test_a_cpu_list_that_names_no_cpu_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="give CPU numbers"):
        parse_cpus(text)
