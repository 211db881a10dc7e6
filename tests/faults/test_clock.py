"""Clock jumps and refused deltas, with real node processes.

A node's clock is put off with the test-only SELFMODEL_TEST_CLOCK_OFFSET_MS (node.server): the
node then reads its wall clock that many milliseconds off, as a machine whose clock jumped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.client import user
from node.clock import CLOCK_OFFSET_ENV
from node.errors import ResourceExhausted, Unavailable
from selfmodel.admin.v1 import admin_pb2
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from sync.causal import MAX_COUNTER, CausalContext, Dot
from sync.codec import state_to_proto
from sync.crdt import NO_ERASE, SubjectState
from sync.hlc import pack, wall_ms
from sync.observation import Observation, Subject, SubjectKind
from tests.harness import LocalCluster
from tests.nodes import node_status

pytestmark = pytest.mark.faults


def restart(cluster: LocalCluster, name: str, offset_ms: int, *args: str) -> None:
    """Stops ``name`` and starts it again with its wall clock ``offset_ms`` off."""
    node = cluster.nodes[name]
    node.stop()
    node.env = {CLOCK_OFFSET_ENV: str(offset_ms)}
    node.args = args
    node.start()


def peer(cluster: LocalCluster, node: str, name: str) -> admin_pb2.PeerStatus:
    return next(p for p in node_status(cluster.address(node)).peers if p.name == name)


def metric(cluster: LocalCluster, node: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(cluster.nodes[node].metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check`` holds, polling; fails naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s}s"
        time.sleep(0.1)
    return time.monotonic() - started


def keys(cluster: LocalCluster, node: str, subject: str) -> set[str]:
    with cluster.client(node, "reader") as client:
        return {b.key for b in client.self_model(user(subject)).beliefs("facts")}


def test_a_node_restarted_with_its_saved_clock_ahead_refuses_writes_until_the_clock_allows(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    ahead_ms, bound_ms = 20_000, 8_000
    cluster = make_cluster(
        ("sales", "support"), max_clock_offset_ms=bound_ms, sync={"anti_entropy_s": 1.0}
    )
    # One run with the clock 20 s ahead: support holds its write back, and never acknowledges it.
    restart(cluster, "sales", ahead_ms)
    with cluster.client("sales", "agent") as sales:
        sales.observe(user("u"), "Written ahead", confidence=0.9, context="facts", key="ahead")
    outbox = node_status(cluster.address("sales")).outbox_seq
    wait_until("support refused the delta", lambda: peer(cluster, "sales", "support")
               .deltas_pending >= 1, 10)  # fmt: skip
    status = peer(cluster, "sales", "support")
    assert status.acked_seq < outbox, "a delta support refused was acknowledged as delivered"
    assert status.deltas_refused_clock >= 1 and "ahead" in status.last_refusal
    assert keys(cluster, "support", "u") == set()
    assert metric(cluster, "sales", "selfmodel_deltas_pending_at_peer", peer="support") >= 1

    # The clock is fixed: the saved clock is 20 s ahead, beyond the 8 s bound. Writes are
    # refused, with the reason in the error, the status, the log and the metrics.
    restart(cluster, "sales", 0)
    restarted = time.monotonic()
    status_now = node_status(cluster.address("sales"))
    assert status_now.clock_ahead_ms > bound_ms
    assert "clock ahead" in status_now.writes_refused
    assert metric(cluster, "sales", "selfmodel_clock_ahead_seconds") > bound_ms / 1000
    assert "CLOCK AHEAD" in cluster.nodes["sales"].log()
    with cluster.client("sales", "agent", attempts=1) as sales:
        with pytest.raises(Unavailable, match="max_clock_offset_ms = 8000") as refused:
            sales.observe(user("u"), "Too soon", confidence=0.9, context="facts", key="soon")
        assert refused.value.reason == "CLOCK_AHEAD"
        assert refused.value.metadata["setting"] == "max_clock_offset_ms"
        assert refused.value.metadata["max_offset_ms"] == "8000"
        # RetryInfo: until the wall clock catches up with the saved clock.
        assert refused.value.retry_after_s is not None
        assert 0 < refused.value.retry_after_s <= (ahead_ms - bound_ms) / 1000
        assert metric(cluster, "sales", "selfmodel_writes_refused_total", reason="clock_ahead") >= 1

        # Taken as soon as the wall clock is within the bound of the saved clock, and then
        # replicated at once.
        written = None
        while written is None:
            try:
                written = sales.observe(
                    user("u"), "In time", confidence=0.9, context="facts", key="after"
                )
            except Unavailable:
                assert time.monotonic() - restarted < ahead_ms / 1000, "never took writes"
                time.sleep(0.1)
    assert node_status(cluster.address("sales")).writes_refused == ""
    with cluster.client("support", "reader") as support:
        support.self_model(user("u"), at_least=written.token, timeout_s=5.0)
    # Everything delivered: the held-back write too, and only now acknowledged.
    wait_until("support merged every write", lambda: keys(cluster, "support", "u")
               == {"ahead", "after"}, 15)  # fmt: skip
    final = node_status(cluster.address("sales")).outbox_seq
    wait_until("every delta acknowledged", lambda: peer(cluster, "sales", "support")
               .acked_seq == final, 10)  # fmt: skip
    assert peer(cluster, "sales", "support").deltas_pending == 0
    cluster.wait_converged(10)


def test_the_operator_may_take_writes_at_once_with_the_saved_clock(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"), max_clock_offset_ms=8_000)
    restart(cluster, "sales", 20_000)
    with cluster.client("sales", "agent") as sales:
        sales.observe(user("u"), "Written ahead", confidence=0.9, context="facts", key="ahead")
    restart(cluster, "sales", 0, "--accept-saved-clock")
    assert node_status(cluster.address("sales")).writes_refused == ""
    assert "--accept-saved-clock" in cluster.nodes["sales"].log()
    with cluster.client("sales", "agent", attempts=1) as sales:
        sales.observe(user("u"), "Taken", confidence=0.9, context="facts", key="taken")
    # Its timestamps are still ahead: support holds them back, unacknowledged, then merges them.
    outbox = node_status(cluster.address("sales")).outbox_seq
    wait_until("support deferred the write", lambda: peer(cluster, "sales", "support")
               .deltas_pending >= 1, 10)  # fmt: skip
    assert peer(cluster, "sales", "support").acked_seq < outbox
    wait_until("support merged both writes", lambda: keys(cluster, "support", "u")
               == {"ahead", "taken"}, 25)  # fmt: skip
    wait_until("every delta acknowledged", lambda: peer(cluster, "sales", "support")
               .acked_seq == outbox, 10)  # fmt: skip


def test_a_peer_ten_minutes_ahead_is_held_back_without_blocking_the_rest_of_the_subject(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"), sync={"anti_entropy_s": 1.0})
    # support cannot reach sales: what sales gets of support's, it gets by its own anti-entropy.
    cluster.proxies[("support", "sales")].set("cut")
    with cluster.client("support", "agent") as support:
        support.observe(user("u"), "Before", confidence=0.9, context="facts", key="before")
    restart(cluster, "support", 600_000)
    with cluster.client("support", "agent") as support:
        support.observe(user("u"), "Ahead", confidence=0.9, context="facts", key="ahead")
    with cluster.client("sales", "agent") as sales:
        sales.observe(user("u"), "Mine", confidence=0.9, context="facts", key="mine")

    # Anti-entropy repairs the subject's other observations and holds back only the new one.
    wait_until("sales repaired the subject", lambda: keys(cluster, "sales", "u")
               == {"before", "mine"}, 15)  # fmt: skip
    wait_until("support got sales' write", lambda: keys(cluster, "support", "u")
               == {"before", "ahead", "mine"}, 15)  # fmt: skip
    # The subject may look repaired from a round before support wrote "ahead": wait for the
    # round that met it and held it back.
    wait_until("sales held back support's write", lambda: metric(
        cluster, "sales", "selfmodel_clock_skew_refused_total") >= 1, 15)  # fmt: skip
    assert keys(cluster, "sales", "u") == {"before", "mine"}

    # The delta stream: sales defers support's delta and does not acknowledge it.
    cluster.proxies[("support", "sales")].set("pass")
    wait_until("sales deferred support's delta", lambda: peer(cluster, "support", "sales")
               .deltas_pending >= 1, 15)  # fmt: skip
    time.sleep(1.0)  # resent meanwhile, and deferred again
    outbox = node_status(cluster.address("support")).outbox_seq
    assert peer(cluster, "support", "sales").acked_seq < outbox
    assert keys(cluster, "sales", "u") == {"before", "mine"}
    assert cluster.nodes["sales"].log().count("holding back deltas from support") == 1
    assert peer(cluster, "support", "sales").connected  # the stream stays up

    # The clocks agree (both ten minutes ahead): everything converges, all acknowledged.
    restart(cluster, "sales", 600_000)
    wait_until("sales merged support's write", lambda: keys(cluster, "sales", "u")
               == {"before", "ahead", "mine"}, 20)  # fmt: skip
    wait_until("every delta acknowledged", lambda: peer(cluster, "support", "sales")
               .acked_seq == outbox and peer(cluster, "support", "sales").deltas_pending == 0,
               20)  # fmt: skip
    cluster.wait_converged(15)


U = Subject("acme", SubjectKind.USER, "jam")


def batch(
    first: int, states: list[SubjectState], origin: str = "support"
) -> sync_pb2.ReplicateRequest:
    msg = sync_pb2.ReplicateRequest(
        origin=origin, first_seq=first, last_seq=first + len(states) - 1
    )
    for state in states:
        msg.deltas.append(state_to_proto(state))
    return msg


def one_observation(actor: str, counter: int, key: str) -> SubjectState:
    dot = Dot(actor, counter)
    obs = Observation(dot, "facts", key, "agent", key, 0.9, (), pack(wall_ms()), "support")
    return SubjectState(U, NO_ERASE, CausalContext.of([dot]), {dot: obs})


def replicate(
    cluster: LocalCluster, batches: list[sync_pb2.ReplicateRequest]
) -> list[sync_pb2.ReplicateResponse]:
    """One delta stream to sales, as its peer support, of ``batches`` then a request for an ack."""
    last = batches[-1].last_seq
    asks = [
        *batches,
        sync_pb2.ReplicateRequest(origin="support", first_seq=last + 1, last_seq=last),
    ]

    def requests() -> Iterator[sync_pb2.ReplicateRequest]:
        yield from asks

    with cluster.peer_channel("sales", "support") as channel:
        call = sync_pb2_grpc.SyncServiceStub(channel).Replicate(
            requests(), metadata=(("x-selfmodel-node", "support"),), timeout=10
        )
        return list(call)


def test_a_bad_counter_is_refused_once_and_never_jams_the_stream_nor_is_minted(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"), sync={"anti_entropy_s": 600.0})
    bad = one_observation("support.9.feedbeef", MAX_COUNTER + 1, "bad")
    good = one_observation("support.9.feedbeef", 7, "good")
    # The bad delta is rejected, named in the ack, and the delta after it is merged.
    for _ in range(2):  # the same delta again: refused again, logged once
        acks = replicate(cluster, [batch(1, [bad]), batch(2, [good])])
        assert [s for a in acks for s in a.rejected_seqs] == [1]
        assert acks[-1].acked_seq == 2
        assert "2^62" in next(a.reason for a in acks if a.rejected_seqs)
    assert keys(cluster, "sales", "jam") == {"good"}
    assert cluster.nodes["sales"].log().count("refused deltas[0] (seq 1)") == 1

    # A counter exactly at the bound, for sales' own actor: valid, but sales' next dot there
    # would pass it. The write is refused at the writer; nothing jams the stream to support.
    actor = node_status(cluster.address("sales")).actor
    at_bound = SubjectState(U, NO_ERASE, CausalContext({actor: MAX_COUNTER}))
    replicate(cluster, [batch(3, [at_bound])])
    ended = cluster.nodes["sales"].log().count("delta stream to support ended")
    with cluster.client("sales", "agent", attempts=1) as sales:
        with pytest.raises(ResourceExhausted, match="beyond the bound every replica accepts") as r:
            sales.observe(user("jam"), "Next", confidence=0.9, context="facts", key="next")
        assert r.value.reason == "COUNTER_EXHAUSTED" and r.value.metadata["actor"] == actor
        written = sales.observe(user("other"), "Fine", confidence=0.9, context="facts")
    with cluster.client("support", "reader") as support:
        support.self_model(user("other"), at_least=written.token, timeout_s=5.0)
    assert cluster.nodes["sales"].log().count("delta stream to support ended") == ended
    # The read saw the write merged; its acknowledgement follows within the ack interval.
    outbox_seq = node_status(cluster.address("sales")).outbox_seq
    wait_until(
        "support acknowledged every delta of sales",
        lambda: peer(cluster, "sales", "support").acked_seq == outbox_seq,
        10,
    )
    status = peer(cluster, "sales", "support")
    assert status.deltas_refused_invalid == 0 and status.deltas_pending == 0


def test_a_node_whose_clock_is_ahead_of_most_of_its_cluster_takes_no_writes(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """CockroachDB's rule: the node out of bounds stops writing instead of pushing its skew."""
    cluster = make_cluster(sync={"anti_entropy_s": 1.0})
    restart(cluster, "billing", 600_000)
    wait_until("billing saw its peers' clocks", lambda: "ahead of its peers" in node_status(
        cluster.address("billing")).writes_refused, 10)  # fmt: skip
    status = node_status(cluster.address("billing"))
    assert all(p.clock_offset_ms >= 590_000 for p in status.peers), status
    assert metric(cluster, "billing", "selfmodel_peer_clock_offset_seconds", peer="sales") > 590
    with (
        cluster.client("billing", "agent", attempts=1) as billing,
        pytest.raises(Unavailable, match="ahead of its peers sales, support") as refused,
    ):
        billing.observe(user("u"), "Skewed", confidence=0.9, context="facts", key="k")
    assert refused.value.reason == "CLOCK_AHEAD_OF_PEERS"
    assert refused.value.metadata["peers"] == "sales,support"
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    with cluster.client("sales", "agent", attempts=1) as sales:  # the others write on
        written = sales.observe(user("u"), "Fine", confidence=0.9, context="facts", key="k")
    # The clock is fixed: billing writes again, and everything converges.
    restart(cluster, "billing", 0)
    with cluster.client("billing", "agent", attempts=1) as billing:
        billing.self_model(user("u"), at_least=written.token, timeout_s=10.0)
        again = billing.observe(user("u"), "Fixed", confidence=0.9, context="facts", key="b")
    with cluster.client("support", "reader") as support:
        support.self_model(user("u"), at_least=again.token, timeout_s=10.0)
    cluster.wait_converged(15)
