"""A node whose disk is lost starts again on an empty directory and rejoins its cluster."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from federation.client import user
from node.errors import HandoffTimeout
from tests.harness import LocalCluster
from tests.nodes import node_status, wait_acked

pytestmark = pytest.mark.faults


@pytest.mark.proxy
def test_a_node_back_on_an_empty_disk_is_refilled_and_its_new_writes_reach_its_peers(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Before its peers have refilled it, it writes a subject its earlier run wrote: its new
    actor must not name a dot the old one gave away, or the peers would drop the write as one
    they have seen, and their handoff tokens would say it had arrived."""
    cluster = make_cluster(("sales", "support"))
    with cluster.client("sales", "sales_agent") as sales:
        first = sales.observe(
            user("u-disk"), "Pro plan", confidence=0.9, context="facts", key="plan"
        )
    with cluster.client("support", "reader") as support:
        support.self_model(user("u-disk"), at_least=first.token, timeout_s=10)

    node = cluster.nodes["sales"]
    for _ in range(2):  # runs 2 and 3
        node.stop()
        node.start()
    assert incarnation(cluster, "sales") == 3
    node.kill()
    shutil.rmtree(node.data_dir)  # the disk is gone; the node starts afresh
    cluster.partition(["sales"], ["support"])  # and writes before anti-entropy refills it
    node.start()
    assert incarnation(cluster, "sales") == 1  # counting again from an empty directory
    with cluster.client("sales", "sales_agent") as sales:
        second = sales.observe(
            user("u-disk"), "12 seats", confidence=0.9, context="facts", key="seats"
        )
        assert {b.key for b in sales.self_model(user("u-disk")).beliefs("facts")} == {"seats"}
    with cluster.client("support", "reader") as support, pytest.raises(HandoffTimeout):
        support.self_model(user("u-disk"), at_least=second.token, timeout_s=0.5)  # partitioned
    cluster.heal()

    with cluster.client("support", "reader") as support:
        model = support.self_model(user("u-disk"), at_least=second.token, timeout_s=10)
        assert {b.key for b in model.beliefs("facts")} == {"plan", "seats"}
    cluster.wait_converged()
    with cluster.client("sales", "reader") as sales:
        assert {b.key for b in sales.self_model(user("u-disk")).beliefs("facts")} == {
            "plan",
            "seats",
        }
    # support had run 3 of sales on record and told it so when sales' delta stream to it
    # started (the write may have reached support by its own anti-entropy before that): its
    # next start counts on from there.
    wait_acked(cluster, "sales", "support", 1)
    node.stop()
    node.start()
    assert incarnation(cluster, "sales") == 4


def incarnation(cluster: LocalCluster, name: str) -> int:
    return int(node_status(cluster.address(name)).incarnation)
