"""The delta stream's linger ([cluster.sync] linger_s), between real node processes: a write
right after another waits out the linger on its way to a peer, and no longer."""

from __future__ import annotations

import time

import pytest

from federation.client import user
from node.errors import HandoffTimeout
from tests.nodes import peers_connected, wait_until

LINGER_S = 2.0


def test_a_write_right_after_another_reaches_the_peer_once_the_linger_has_passed(make_cluster):
    # No anti-entropy round within the test: one would carry `second` whatever the linger.
    cluster = make_cluster(
        ("sales", "support"), sync={"linger_s": LINGER_S, "anti_entropy_s": 600.0}
    )
    subject = user("u-linger")
    # With the stream up before `first`, `first` goes at once and the read below returns at once:
    # `second` is then written well within the linger (a stream still connecting would send
    # `first` late, and a read asking again at its growing delays could return after most of it).
    wait_until(lambda: peers_connected(cluster, "sales"), "sales' delta stream to support is up")
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "support_agent") as support,
    ):
        first = sales.observe(subject, "first", confidence=0.9, context="plan", key="a")
        support.self_model(subject, at_least=first.token, timeout_s=10)
        # The batch carrying `first` went moments ago: `second` waits for the rest of the linger.
        second = sales.observe(subject, "second", confidence=0.9, context="plan", key="b")
        acked = time.monotonic()
        with pytest.raises(HandoffTimeout):
            support.self_model(subject, at_least=second.token, timeout_s=0.5)
        model = support.self_model(subject, at_least=second.token, timeout_s=10)
        took = time.monotonic() - acked
        belief = model.belief("plan", "b")
        assert belief is not None and belief.statement == "second"
        assert took < LINGER_S + 3.0, f"second reached support {took:.2f} s after its ack"
    cluster.wait_converged()
