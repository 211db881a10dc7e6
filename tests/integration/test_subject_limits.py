"""Subject limits with real node processes: a write past them is refused whole, a subject at
them replicates to a peer that was down, and a peer that refuses a subject takes the others."""

from __future__ import annotations

import re
from typing import Any

import pytest

from federation import cluster as cluster_file
from federation.client import Client, user
from federation.launcher import status_rows
from node.errors import ResourceExhausted
from selfmodel.v1 import selfmodel_pb2
from tests.harness import LocalCluster
from tests.nodes import node_status, wait_until

CONTEXT = "notes"
# 1.9 KB statements, as the finding that asked for these limits wrote them.
FILLER = "lorem ipsum dolor sit amet " * 70


def batch(client: Client, subject: str, start: int, n: int) -> list[selfmodel_pb2.ObserveRequest]:
    return [
        selfmodel_pb2.ObserveRequest(
            subject=client._req.subject(user(subject)),
            context=CONTEXT,
            statement=f"{i:05d} {FILLER}",
            confidence=0.6,
        )
        for i in range(start, start + n)
    ]


def fill(client: Client, subject: str, step: int = 50) -> int:
    """Writes 1.9 KB statements to ``subject`` until the node refuses; returns how many it took."""
    written = 0
    for _ in range(100):
        try:
            client.observe_batch(batch(client, subject, written, step))
        except ResourceExhausted:
            if step == 1:
                return written
            step = max(1, step // 5)
            continue
        written += step
    raise AssertionError(f"{written} observations of 1.9 KB and the node still took more")


def beliefs_on(cluster: LocalCluster, node: str, subject: str) -> int:
    with cluster.client(node, "reader") as reader:
        return len(reader.self_model(user(subject)).beliefs(CONTEXT))


def test_a_write_past_a_subject_limit_is_refused_with_the_limit_named(make_cluster):
    cluster = make_cluster(("solo",), node_args={"solo": ["--max-subject-observations", "40"]})
    with cluster.client("solo", "writer") as writer:
        writer.observe_batch(batch(writer, "u-capped", 0, 30))
        with pytest.raises(ResourceExhausted) as refused:
            writer.observe_batch(batch(writer, "u-capped", 30, 11) + batch(writer, "u-other", 0, 1))
        message = str(refused.value)
        assert "41 observations" in message and "40" in message, message
        assert "max_subject_observations" in message and "--max-subject-observations" in message
        # Nothing of the refused batch was written, not even the other subject's observation.
        assert beliefs_on(cluster, "solo", "u-capped") == 30
        assert beliefs_on(cluster, "solo", "u-other") == 0
        writer.observe_batch(batch(writer, "u-capped", 30, 10))  # up to the limit is fine
        assert beliefs_on(cluster, "solo", "u-capped") == 40
    assert 'limit="observations"' in cluster.nodes["solo"].metrics()


def test_the_default_size_limit_refuses_the_findings_writes_and_keeps_the_subject_readable(
    make_cluster,
):
    cluster = make_cluster(("solo",))
    with cluster.client("solo", "writer") as writer:
        # Batches of 500 distinct 1.9 KB statements made one subject 9.7 MB.
        with pytest.raises(ResourceExhausted, match=r"bytes.*max_subject_bytes"):
            writer.observe_batch(batch(writer, "u-big", 0, 500))
        assert beliefs_on(cluster, "solo", "u-big") == 0
        taken = fill(writer, "u-big", step=100)
        assert 200 < taken < 500, taken
        assert beliefs_on(cluster, "solo", "u-big") == taken
    assert 'limit="bytes"' in cluster.nodes["solo"].metrics()


def test_subjects_filled_to_the_limit_replicate_to_a_peer_that_was_down(make_cluster):
    cluster = make_cluster()
    cluster.nodes["billing"].stop()
    full = [f"u-full-{i}" for i in range(5)]  # together several times the message limit
    with cluster.client("sales", "writer") as writer:
        taken = {subject: fill(writer, subject) for subject in full}
        for i in range(20):
            writer.observe(user(f"u-small-{i}"), "small", confidence=0.8, context=CONTEXT)
    cluster.nodes["billing"].start()
    for subject in full:
        wait_until(
            lambda s=subject: beliefs_on(cluster, "billing", s) == taken[s],
            f"billing got {subject}",
            120,
        )
    cluster.wait_converged(60)
    for node in cluster.nodes:
        for subject in full:
            assert beliefs_on(cluster, node, subject) == taken[subject]
        with cluster.client(node, "watcher") as watcher:
            first = next(iter(watcher.watch(user(full[0]))))
            assert len(first.beliefs(CONTEXT)) == taken[full[0]]
    for node in cluster.nodes:
        status = node_status(cluster.address(node))
        assert all(p.failing_sessions == 0 and p.skipped_subjects == 0 for p in status.peers)


def test_a_subject_a_peer_refuses_leaves_the_others_replicating_and_shows(make_cluster):
    cluster = make_cluster(
        ("sales", "support"), node_args={"support": ["--max-subject-observations", "30"]}
    )
    with cluster.client("sales", "writer") as writer:
        writer.observe_batch(batch(writer, "u-too-big", 0, 50))  # past support's limit only
        for i in range(10):
            writer.observe(user(f"u-fine-{i}"), "fine", confidence=0.8, context=CONTEXT)
    for i in range(10):
        wait_until(
            lambda i=i: beliefs_on(cluster, "support", f"u-fine-{i}") == 1, f"u-fine-{i}", 30
        )

    def refused_peer() -> Any:
        (peer,) = node_status(cluster.address("sales")).peers
        return peer if peer.skipped_subjects == 1 else None

    first = wait_until(refused_peer, "support refused the subject", 30)
    assert first.lag_seconds > 0
    later = wait_until(
        lambda: (p := refused_peer()) is not None and p.lag_seconds > first.lag_seconds + 1 and p,
        "support's lag grew",
        30,
    )
    assert later.outbox_depth == 0  # the stream went on: only the lag shows the peer is behind
    assert beliefs_on(cluster, "support", "u-too-big") == 0
    # Writes after the refusal still reach support, by the stream and anti-entropy alike.
    with cluster.client("sales", "writer") as writer:
        writer.observe(user("u-after"), "after", confidence=0.8, context=CONTEXT)
    wait_until(lambda: beliefs_on(cluster, "support", "u-after") == 1, "u-after", 30)
    sales_metrics = cluster.nodes["sales"].metrics()
    assert re.search(r'selfmodel_peer_skipped_subjects\{peer="support"\} 1\.0', sales_metrics)
    # Exported once a second: at least 2 s, and growing.
    lag = r'selfmodel_replication_lag_seconds\{peer="support"\} ([2-9]|[1-9][0-9]+)\.'
    wait_until(lambda: re.search(lag, cluster.nodes["sales"].metrics()), "the lag metric", 30)
    support_metrics = cluster.nodes["support"].metrics()
    assert 'selfmodel_subject_limit_refused_total{kind="merge",limit="observations"}' in (
        support_metrics
    )
    log = cluster.nodes["support"].log()
    assert log.count("refused to merge a peer's state of acme/user/u-too-big") == 1, log[-3000:]
    rows = status_rows(cluster_file.load(cluster.file))
    sales_row = next(r for r in rows if r[0] == "sales")
    assert sales_row[-1] == "support:0/1", rows
