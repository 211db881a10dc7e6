"""A restarted node keeps its actor only when that is safe: a clean stop, and every peer agrees.

Each run of a node names its writes with an actor. A new actor per start is always safe but adds
an entry to the causal context (and handoff tokens) of every subject written afterwards; resuming
the previous run's actor avoids that, and is safe only when no other copy of the data directory
ran on with it: the peers' records of the node's runs (Sync.ClaimRun) say so.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from federation.client import Client, user
from node.replication import NODE_HEADER, PeerConfig
from node.server import NodeConfig, RunningNode, start
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.replicator import SyncSettings
from tests.harness import LocalCluster, free_port
from tests.nodes import node_status, wait_acked

pytestmark = pytest.mark.faults


def actor(cluster: LocalCluster, name: str) -> str:
    return str(node_status(cluster.address(name)).actor)


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


def test_a_whole_cluster_stopped_and_started_at_once_keeps_every_actor(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Nodes started together vouch for each other: each answers its peers' claims while it
    waits (up to claim_wait_s) for theirs, so restarting the whole cluster adds no actor."""
    names = ("sales", "support", "billing")
    cluster = make_cluster(names)
    for name in names:
        with cluster.client(name, f"{name}_agent") as client:
            client.observe(
                user("u-runs"), f"from {name}", confidence=0.9, context="facts", key=name
            )
    for a in names:  # every node's delta stream to every peer started: its run is on record
        for b in names:
            if a != b:
                wait_acked(cluster, a, b, 1)
    before = {name: actor(cluster, name) for name in names}
    for node in cluster.nodes.values():
        node.stop()
    cluster.start()  # every process at once, then waits until each serves
    assert {name: actor(cluster, name) for name in names} == before
    assert write(cluster, "k2") == f"{before['sales']}:2"


def test_a_node_starting_with_a_peer_down_answers_claims_but_takes_no_call_until_it_decides(
    tmp_path: Path,
) -> None:
    """While it waits for a peer to vouch for its previous run, a node answers other nodes'
    run claims and health (NOT_SERVING), and refuses every other call with UNAVAILABLE; once
    the wait is over it serves, with a new actor."""
    port = free_port()
    config = NodeConfig(
        name="sales", data_dir=tmp_path / "sales", listen=f"127.0.0.1:{port}",
        metrics_listen=None, fsync=False, grace_s=0.5,
        peers=(PeerConfig("support", f"127.0.0.1:{free_port()}"),),  # nobody listens there
        sync=SyncSettings(claim_wait_s=3.0),
    )  # fmt: skip
    start(config).stop()  # a clean stop: the next start has a run to claim
    started: list[RunningNode] = []
    starting = threading.Thread(target=lambda: started.append(start(config)))
    starting.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            claim = sync_pb2_grpc.SyncServiceStub(channel).ClaimRun(
                sync_pb2.ClaimRunRequest(previous=0, run=7, incarnation=1),
                timeout=5,
                metadata=((NODE_HEADER, "support"),),
            )
            assert not claim.granted
            with pytest.raises(grpc.RpcError) as refused:
                selfmodel_pb2_grpc.SelfModelServiceStub(channel).Observe(
                    selfmodel_pb2.ObserveRequest(
                        subject=model_pb2.Subject(
                            tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-1"
                        ),
                        context="facts",
                        statement="Early",
                        confidence=0.5,
                    ),
                    timeout=5,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "starting" in (refused.value.details() or "")
            starting.join(30)
            assert started, "the node did not finish starting"
            node = started[0]
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            assert node.store.actor != node.store.resumable  # support never vouched
            with Client(f"127.0.0.1:{port}", agent="sales_agent", tenant="acme") as client:
                written = client.observe(user("u-1"), "Later", confidence=0.5, context="facts")
            assert written.observation_id == f"{node.store.actor}:1"
    finally:
        starting.join(30)
        for node in started:
            node.stop(0.5)
