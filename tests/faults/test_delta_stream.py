"""The delta stream keeps flowing through forgets and faults (anti-entropy is not the fallback)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from federation.client import user
from node.errors import HandoffTimeout
from tests.harness import LocalCluster
from tests.nodes import peers_connected, positions, wait_acked, wait_until

pytestmark = pytest.mark.faults

FULL_BACKOFF = Path(__file__).resolve().parents[1] / "hooks" / "full_backoff"
ENDED = "delta stream to billing ended"


@pytest.mark.proxy
def test_a_forget_while_peers_lag_does_not_stall_the_delta_stream_to_them(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(sync={"anti_entropy_s": 600.0, "backoff_max_s": 0.5})
    wait_until(lambda: peers_connected(cluster, "sales"), "sales' delta streams are up")
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("billing", "reader") as billing,
    ):
        cluster.links("sales", "support", "cut")  # support stays behind for the whole test
        support_acked = positions(cluster, "sales", "support")[1]
        sales.observe(user("kept"), "Before", confidence=0.9, context="facts", key="k1")
        wait_acked(cluster, "sales", "billing", positions(cluster, "sales", "billing")[0])
        cluster.links("sales", "billing", "cut")
        # The next delta billing needs is one of the subject's, emptied by the forget.
        secret = sales.observe(user("gone"), "Secret", confidence=0.9, context="facts", key="k2")
        sales.forget(user("gone"))
        # The cut holds: billing has neither the write nor the forget (anti-entropy is not due).
        with pytest.raises(HandoffTimeout):
            billing.self_model(user("gone"), at_least=secret.token, timeout_s=0.5)
        head, billing_acked = positions(cluster, "sales", "billing")
        assert billing_acked < head, "billing acknowledged deltas sent across the cut"
        cluster.links("sales", "billing", "pass")
        wait_acked(cluster, "sales", "billing", head)  # billing reconnected and caught up
        ended = cluster.nodes["sales"].log().count(ENDED)
        after = sales.observe(user("kept"), "After", confidence=0.9, context="facts", key="k3")
        # Through the delta stream: no anti-entropy round is due for ten minutes.
        wait_acked(cluster, "sales", "billing", positions(cluster, "sales", "billing")[0])
        kept = billing.self_model(user("kept"), at_least=after.token, timeout_s=5)
        assert {b.key for b in kept.beliefs("facts")} == {"k1", "k3"}
        assert billing.self_model(user("gone")).all_beliefs == ()
        log = cluster.nodes["sales"].log()
        # Each reconnect ran an anti-entropy round, which hid a stall from reads.
        assert log.count(ENDED) == ended, (
            "the delta stream to billing keeps failing after the forget:\n" + log[-1500:]
        )
        head, acked = positions(cluster, "sales", "support")
        assert acked == support_acked < head, "support was cut off yet acknowledged deltas"


def test_a_restarted_node_gets_deltas_at_once_not_after_its_peers_backoff(
    make_cluster: Callable[..., LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sales waits every reconnect backoff out at its maximum (30 s, tests/hooks/full_backoff):
    only billing's own session, waking sales' stream to it, brings the delta within 3 s."""
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(FULL_BACKOFF), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    monkeypatch.setenv("SELFMODEL_TEST_FULL_BACKOFF", "sales")
    cluster = make_cluster(
        ("sales", "billing"), sync={"anti_entropy_s": 600.0, "backoff_max_s": 30.0}
    )
    wait_until(lambda: peers_connected(cluster, "sales"), "sales' delta stream to billing is up")
    ended = cluster.nodes["sales"].log().count(ENDED)
    cluster.nodes["billing"].kill()
    # sales noticed: its stream to billing ended, and it now waits 30 s before reconnecting.
    wait_until(lambda: cluster.nodes["sales"].log().count(ENDED) > ended, "sales saw billing go")
    cluster.nodes["billing"].start()
    wait_until(lambda: peers_connected(cluster, "billing"), "billing connected to sales")
    with cluster.client("sales", "sales_agent") as sales:
        written = sales.observe(user("u"), "After the restart", confidence=0.9, context="facts")
    with cluster.client("billing", "reader") as billing:
        # Through the delta stream (no anti-entropy round is due): sales retried as soon as
        # billing opened its own session, instead of sleeping out its 30 s backoff.
        billing.self_model(user("u"), at_least=written.token, timeout_s=3.0)
