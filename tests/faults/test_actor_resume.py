"""A restarted node keeps its actor only when that is safe: a clean stop, and every peer agrees.

Each run of a node names its writes with an actor. A new actor per start is always safe but adds
an entry to the causal context (and handoff tokens) of every subject written afterwards; resuming
the previous run's actor avoids that, and is safe only when no other copy of the data directory
ran on with it: the peers' records of the node's runs (Sync.ClaimRun) say so.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import grpc
import pytest

from federation.client import user
from federation.harness import LocalCluster
from selfmodel.v1 import admin_pb2, admin_pb2_grpc
from tests.faults.test_delta_stream import wait_acked

pytestmark = pytest.mark.faults


def actor(cluster: LocalCluster, name: str) -> str:
    with grpc.insecure_channel(cluster.address(name)) as channel:
        status = admin_pb2_grpc.AdminStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=5.0
        )
    return str(status.actor)


def write(cluster: LocalCluster, key: str) -> str:
    """A write on sales that support must then show; returns its observation id."""
    with cluster.client("sales", "sales_agent") as sales:
        written = sales.observe(user("u-runs"), key, confidence=0.9, context="facts", key=key)
    with cluster.client("support", "reader") as support:
        model = support.self_model(user("u-runs"), at_least=written.token, timeout_s=10)
        assert key in {b.key for b in model.beliefs("facts")}, f"support lacks {key}"
    return written.observation_id


def on_record(cluster: LocalCluster) -> None:
    """Until sales' delta stream to support has started, so support has sales' run on record
    (when both start together, sales' claim at its start finds support not up yet)."""
    wait_acked(cluster, "sales", "support", 1)


def test_a_clean_restart_with_every_peer_up_keeps_the_actor_and_goes_on_counting(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"))
    first = write(cluster, "k1")
    on_record(cluster)
    before = actor(cluster, "sales")
    assert first == f"{before}:1"
    cluster.nodes["sales"].stop()
    cluster.nodes["sales"].start()
    assert actor(cluster, "sales") == before
    assert write(cluster, "k2") == f"{before}:2"


def test_a_restart_while_a_peer_is_down_or_after_a_crash_takes_a_new_actor(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"))
    write(cluster, "k1")
    first = actor(cluster, "sales")
    cluster.nodes["support"].stop()
    cluster.nodes["sales"].stop()
    cluster.nodes["sales"].start()  # support cannot vouch for the run: a new actor
    second = actor(cluster, "sales")
    assert second != first
    cluster.nodes["support"].start()
    write(cluster, "k2")
    cluster.nodes["sales"].kill()  # no clean close: a new actor whatever the peers say
    cluster.nodes["sales"].start()
    assert actor(cluster, "sales") not in {first, second}
    write(cluster, "k3")


def test_a_node_restored_from_a_cold_backup_does_not_resume_the_actor_that_ran_on(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """The copy was taken after a clean stop, so it looks resumable; but the node resumed the
    actor from the original and wrote on. The restored node's claim names a run the peer no
    longer has on record: it takes a new actor, and its write reaches the peer."""
    cluster = make_cluster(("sales", "support"))
    write(cluster, "before-backup")
    on_record(cluster)
    first = actor(cluster, "sales")
    node = cluster.nodes["sales"]
    node.stop()
    backup = node.data_dir.parent / "sales-backup"
    shutil.copytree(node.data_dir, backup)
    node.start()
    resumed = actor(cluster, "sales")
    assert resumed == first
    write(cluster, "after-backup")  # resumed's counter 2, on support too
    node.stop()
    shutil.rmtree(node.data_dir)
    shutil.copytree(backup, node.data_dir)
    node.start()
    assert actor(cluster, "sales") != resumed
    write(cluster, "after-restore")  # with resumed's counter 2 again, support would drop it
    cluster.wait_converged()
    with cluster.client("support", "reader") as support:
        keys = {b.key for b in support.self_model(user("u-runs")).beliefs("facts")}
    assert keys == {"before-backup", "after-backup", "after-restore"}
