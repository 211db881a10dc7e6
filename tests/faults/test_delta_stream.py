"""The delta stream keeps flowing through forgets and faults (anti-entropy is not the fallback)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from federation.client import user
from federation.harness import LocalCluster
from tests.nodes import peers_connected, wait_acked

pytestmark = pytest.mark.faults


def test_a_forget_while_peers_lag_does_not_stall_the_delta_stream_to_them(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(sync={"anti_entropy_s": 600.0, "backoff_max_s": 0.5})
    with cluster.client("sales", "sales_agent") as sales:
        cluster.links("sales", "support", "cut")  # support stays behind for the whole test
        sales.observe(user("kept"), "Before", confidence=0.9, context="facts", key="k1")
        wait_acked(cluster, "sales", "billing", 1)
        cluster.links("sales", "billing", "cut")
        # The next delta billing needs is one of the subject's, emptied by the forget.
        sales.observe(user("gone"), "Secret", confidence=0.9, context="facts", key="k2")
        sales.forget(user("gone"))
        cluster.links("sales", "billing", "pass")
        time.sleep(2.0)  # billing reconnects and catches up
        ended = cluster.nodes["sales"].log().count("delta stream to billing ended")
        sales.observe(user("kept"), "After", confidence=0.9, context="facts", key="k3")
        with cluster.client("billing", "reader") as billing:
            deadline = time.monotonic() + 5
            while len(billing.self_model(user("kept")).beliefs("facts")) < 2:
                assert time.monotonic() < deadline, "billing never got the write after the heal"
                time.sleep(0.05)
            assert billing.self_model(user("gone")).all_beliefs == ()
        time.sleep(1.0)
        log = cluster.nodes["sales"].log()
        # Each reconnect ran an anti-entropy round, which hid the stall from reads.
        assert log.count("delta stream to billing ended") == ended, (
            "the delta stream to billing keeps failing after the forget:\n" + log[-1500:]
        )


def test_a_restarted_node_gets_deltas_at_once_not_after_its_peers_backoff(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(
        ("sales", "billing"), sync={"anti_entropy_s": 600.0, "backoff_max_s": 20.0}
    )
    cluster.nodes["billing"].kill()
    time.sleep(6.0)  # sales' stream to billing fails over and over: its backoff grows
    cluster.nodes["billing"].start()
    deadline = time.monotonic() + 10
    while not peers_connected(cluster, "billing"):  # billing is back and reached sales
        assert time.monotonic() < deadline, "billing never connected to sales"
        time.sleep(0.05)
    with cluster.client("sales", "sales_agent") as sales:
        written = sales.observe(user("u"), "After the restart", confidence=0.9, context="facts")
    with cluster.client("billing", "reader") as billing:
        # Through the delta stream (no anti-entropy round is due): sales retried as soon as
        # billing opened its own session, instead of sleeping out up to 20 s of backoff.
        billing.self_model(user("u"), at_least=written.token, timeout_s=3.0)
