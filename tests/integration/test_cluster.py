"""Federation with real node processes: replication, handoff tokens, watch across nodes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from federation.client import Client, SelfModelView, SubjectLike, user
from node.errors import HandoffTimeout
from tests.nodes import peers_connected

CONTEXT = "purchase_motivation"
SLOW_DISK = Path(__file__).resolve().parents[1] / "hooks" / "slow_disk"
Seen = tuple[float, SelfModelView]  # a watch's view, and when it arrived (time.monotonic)


def wait_for(predicate, timeout_s: float = 10.0, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(every_s)


def test_a_write_on_sales_is_visible_on_support_and_billing(make_cluster):
    cluster = make_cluster()
    with cluster.client("sales", "sales_agent") as sales:
        sales.observe(
            user("u-1"), "Motivated by quick time-to-value", confidence=0.82, context=CONTEXT
        )
    for name in ("support", "billing"):
        with cluster.client(name, "reader") as reader:
            model = wait_for(lambda r=reader: r.self_model(user("u-1")).beliefs(CONTEXT))
            assert [b.statement for b in model] == ["Motivated by quick time-to-value"]
            assert model[0].supporters[0].source == "sales_agent"
    cluster.wait_converged()


@pytest.mark.proxy
def test_a_support_read_with_the_handoff_token_of_a_sales_write_always_sees_it(make_cluster):
    cluster = make_cluster()
    # Slow every link into support so that an unguarded read would be stale: each chunk is
    # held 0.5 s on its way.
    for origin in ("sales", "billing"):
        cluster.proxies[(origin, "support")].set("delay", 0.5)
    early = []  # writes support had merged within 0.1 s
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "support_agent") as support,
    ):
        for i in range(10):
            statement = f"Plan preference {i}"
            written = sales.observe(
                user("u-handoff"), statement, confidence=0.9, context="plan", key="plan_preference"
            )
            try:
                support.self_model(user("u-handoff"), at_least=written.token, timeout_s=0.1)
                early.append(i)
            except HandoffTimeout:
                pass  # the delay holds the write back
            model = support.self_model(user("u-handoff"), at_least=written.token, timeout_s=10)
            belief = model.belief("plan", "plan_preference")
            assert belief is not None and belief.statement == statement, f"stale read at write {i}"
    # The delay took effect: support had not merged the writes 0.1 s after they were answered.
    assert len(early) <= 2, f"support had merged writes {early} within 0.1 s: no delay held"


@pytest.mark.proxy
def test_an_unmet_handoff_token_answers_deadline_exceeded_with_a_clear_message(make_cluster):
    cluster = make_cluster(("sales", "support"))
    cluster.partition({"sales"}, {"support"})
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "support_agent") as support,
    ):
        written = sales.observe(
            user("u-cut"), "Prefers chat", confidence=0.9, context="channel_pref", key="channel"
        )
        started = time.monotonic()
        with pytest.raises(HandoffTimeout, match="has not yet merged"):
            support.self_model(user("u-cut"), at_least=written.token, timeout_s=0.5)
        assert time.monotonic() - started < 5
        cluster.heal()
        model = support.self_model(user("u-cut"), at_least=written.token, timeout_s=20)
        assert model.belief("channel_pref", "channel").statement == "Prefers chat"


def follow(client: Client, subject: SubjectLike) -> tuple[queue.Queue[Seen], threading.Thread]:
    """Follows the subject's watch in a thread: each view and when it arrived, until one holds
    a belief in CONTEXT."""
    seen: queue.Queue[Seen] = queue.Queue()
    stream = client.watch(subject, timeout_s=20)

    def consume() -> None:
        for view in stream:
            seen.put((time.monotonic(), view))
            if view.beliefs(CONTEXT):
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    return seen, t


def test_a_watch_on_billing_receives_a_sales_write(make_cluster):
    cluster = make_cluster()
    with cluster.client("billing", "billing_agent") as billing:
        seen, t = follow(billing, user("u-watch"))
        _, first = seen.get(timeout=10)
        assert first.beliefs() == []
        with cluster.client("sales", "sales_agent") as sales:
            sales.observe(
                user("u-watch"), "Motivated by compliance", confidence=0.8, context=CONTEXT
            )
        deadline = time.monotonic() + 10
        while True:
            _, view = seen.get(timeout=max(0.1, deadline - time.monotonic()))
            if view.beliefs(CONTEXT):
                break
        assert view.node == "billing"
        assert view.beliefs(CONTEXT)[0].statement == "Motivated by compliance"
        t.join(5)


def test_a_peer_shows_a_write_while_the_written_node_is_still_syncing_it(make_cluster, monkeypatch):
    """sales ships a write to its peers during its WAL sync, not after (node.store.commit): with a
    slow disk on sales, billing's watch has the write before the writer has its answer."""
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(SLOW_DISK), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    monkeypatch.setenv("SELFMODEL_TEST_SLOW_FDATASYNC", "sales=0.5")
    cluster = make_cluster(fsync=True)
    # The delta streams from sales are up, so the write does not wait for one to connect.
    wait_for(lambda: peers_connected(cluster, "sales"))
    with (
        cluster.client("billing", "billing_agent") as billing,
        cluster.client("sales", "sales_agent") as sales,
    ):
        seen, t = follow(billing, user("u-early"))
        assert seen.get(timeout=10)[1].beliefs() == []
        called = time.monotonic()
        written = sales.observe(
            user("u-early"), "Motivated by speed", confidence=0.8, context=CONTEXT
        )
        answered = time.monotonic()
        assert answered - called >= 0.5, "the slow disk is not in place"
        at, view = seen.get(timeout=10)
        assert [b.statement for b in view.beliefs(CONTEXT)] == ["Motivated by speed"]
        assert at < answered, f"billing saw it {at - answered:.3f}s after the answer"
        # Nothing else changed: the token of the write is covered where it was shown.
        assert billing.self_model(user("u-early"), at_least=written.token, timeout_s=5)
        t.join(5)


def test_cluster_status_shows_every_node_serving_with_its_peers_connected(make_cluster):
    cluster = make_cluster()
    deadline = time.monotonic() + 15
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "federation", "cluster", "status",
             "--config", str(cluster.file)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        if out.returncode == 0 and all(r[4] == "2/2" for r in rows):
            break
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(0.2)
    assert sorted(r[0] for r in rows) == ["billing", "sales", "support"]
    assert all(r[3] == "serving" for r in rows)
