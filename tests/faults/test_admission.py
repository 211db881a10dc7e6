"""Admission of agent writes by replication lag (sync.admission), with real node processes.

A peer made slow by a throttled link (tests/faultproxy.py ``throttle``: the deltas go at a set
rate, the acknowledgements come back at once) falls behind while writes come faster than it
takes them: the writing node refuses writes until the stream has caught up, so its lag stays
bounded. A peer cut off or blackholed never stops writes, however far behind it falls, nor does a
stream catching up after a heal.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.client import Client, user
from node.errors import Unavailable
from tests.harness import LocalCluster
from tests.nodes import node_status, peers_connected, wait_until

pytestmark = pytest.mark.faults

BOUND = 1.0  # max_replication_lag_s of these clusters
CTX = "facts"
SUBJECTS = 8
PAD = "x" * 500  # each delta about 700 bytes on the wire
RATE = 40.0  # writes a second: about 28 KB/s ...
THROTTLE = 14_000  # ... through a link taking 14 KB/s: half as fast
# Small batches, so a throttled stream's acknowledgements come every few tenths of a second
# (one per merged batch), not once per 256 deltas; no anti-entropy round shares the link.
SYNC = {"max_replication_lag_s": BOUND, "batch_size": 4, "anti_entropy_s": 60.0}


def metric(cluster: LocalCluster, node: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(cluster.nodes[node].metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def lag_s(cluster: LocalCluster, node: str, peer: str) -> float:
    return next(p.lag_seconds for p in node_status(cluster.address(node)).peers if p.name == peer)


@dataclass
class Writer:
    """Writes new observations at ``RATE`` a second, each in a slot of its own; keeps what was
    acknowledged and what was refused (a client that does not retry: ``attempts=1``)."""

    client: Client
    acked: list[tuple[str, str]] = field(default_factory=list)  # (subject id, key)
    refused: list[tuple[str, str]] = field(default_factory=list)
    _n: itertools.count[int] = field(default_factory=itertools.count)
    _next: float = 0.0

    def write(self) -> Unavailable | None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)  # the writers' pace, not a wait for a condition
        self._next = max(now, self._next) + 1 / RATE
        n = next(self._n)
        slot = (f"adm-{n % SUBJECTS}", f"k{n}")
        try:
            self.client.observe(
                user(slot[0]), f"fact {n} {PAD}", confidence=0.8, context=CTX, key=slot[1]
            )
        except Unavailable as exc:
            self.refused.append(slot)
            return exc
        self.acked.append(slot)
        return None

    def until_refused(self, timeout_s: float) -> Unavailable:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            refusal = self.write()
            if refusal is not None:
                return refusal
        raise AssertionError(f"no write refused within {timeout_s}s ({len(self.acked)} taken)")


def assert_every_acknowledged_write_everywhere(cluster: LocalCluster, writer: Writer) -> None:
    """Every acknowledged write is on every node; no refused one is anywhere."""
    cluster.wait_converged(timeout_s=60)
    for name in cluster.nodes:
        with cluster.client(name, "auditor") as reader:
            held = {
                (f"adm-{i}", b.key)
                for i in range(SUBJECTS)
                for b in reader.self_model(user(f"adm-{i}")).beliefs(CTX)
            }
        assert set(writer.acked) <= held, f"{name} lacks {len(set(writer.acked) - held)} writes"
        assert not set(writer.refused) & held, f"{name} holds writes that were refused"


@pytest.mark.proxy
def test_writes_are_refused_while_a_slow_peer_falls_behind_and_taken_again_once_it_keeps_up(
    make_cluster,
):
    cluster = make_cluster(("sales", "support"), sync=SYNC)
    wait_until(lambda: peers_connected(cluster, "sales"), "sales's stream to support is up")
    cluster.proxies[("sales", "support")].set("throttle", rate_bps=THROTTLE)
    with cluster.client("sales", "sales_agent", attempts=1) as sales:
        writer = Writer(sales)
        refusal = writer.until_refused(timeout_s=12)
        assert refusal.reason == "REPLICATION_BEHIND", refusal
        assert 1.0 <= (refusal.retry_after_s or 0.0) <= 3.0  # about the backlog's drain time
        assert refusal.metadata["peer"] == "support"
        assert refusal.metadata["setting"] == "max_replication_lag_s"
        assert float(refusal.metadata["lag_s"]) > BOUND  # the fault took effect
        taken_before = len(writer.acked)

        # Still throttled, the writer goes on (after each refusal's delay): writes are taken
        # again once the stream is back within half the bound, and refused again as it falls
        # behind, so the lag stays bounded instead of growing with the time written.
        lags, said, cycles, refused_at = [], set(), 0, True
        ends = time.monotonic() + 10
        while time.monotonic() < ends:
            refusal = writer.write()
            if refusal is not None:
                cycles += not refused_at
                refused_at = True
                status = node_status(cluster.address("sales"))
                lags.append(next(p.lag_seconds for p in status.peers if p.name == "support"))
                said.add(status.writes_refused)
                time.sleep(refusal.retry_after_s or 0.0)  # as the RetryInfo says
            else:
                refused_at = False
        assert len(writer.acked) > taken_before, "no write was taken again while throttled"
        # Admin.GetStatus says why (`selfmodel cluster status` shows it).
        assert any("replication behind" in w and "peer support" in w for w in said), said
        assert cycles >= 1, "writes were never refused again after being taken again"
        # Bounded: after its peak the lag fell back to under half of it, still throttled (it
        # overshoots the bound while the backlog held at the first refusal is taken).
        peak = lags.index(max(lags))
        assert min(lags[peak:]) < max(lags) / 2, f"the lag kept growing while throttled: {lags}"
        assert max(lags) < 8.0, f"the lag grew to {max(lags):.1f}s while throttled: {lags}"
        refused = metric(
            cluster, "sales", "selfmodel_writes_refused_replication_behind_total", peer="support"
        )
        assert refused == len(writer.refused)

        # The throttle lifted, the stream catches up and writes are taken again.
        cluster.proxies[("sales", "support")].set("pass")
        wait_until(
            lambda: metric(cluster, "sales", "selfmodel_writes_admitted") == 1.0,
            "sales admits writes again",
            timeout_s=30,
        )
        for _ in range(10):
            assert writer.write() is None
    print(f"taken {len(writer.acked)}, refused {len(writer.refused)}, lags {lags}")
    assert_every_acknowledged_write_everywhere(cluster, writer)


def assert_admitted(cluster: LocalCluster, writer: Writer) -> None:
    assert not writer.refused, f"{len(writer.refused)} writes refused"
    assert metric(cluster, "sales", "selfmodel_writes_admitted") == 1.0


@pytest.mark.proxy
@pytest.mark.parametrize("mode", ["cut", "blackhole"])
def test_a_peer_cut_off_or_blackholed_never_stops_writes_however_far_behind_it_falls(
    make_cluster, mode
):
    cluster = make_cluster(("sales", "support"), sync=SYNC)
    wait_until(lambda: peers_connected(cluster, "sales"), "sales's stream to support is up")
    cluster.links("sales", "support", mode)
    with cluster.client("sales", "sales_agent", attempts=1) as sales:
        writer = Writer(sales)
        # Written on until the peer is 4 bounds behind, every write taken (attempts=1: one
        # refusal would raise out of the loop as a failed assertion).
        deadline = time.monotonic() + 12
        stalled = 0  # samples of a stream still up, over the bound: the blackhole's case
        while True:
            status = next(p for p in node_status(cluster.address("sales")).peers)
            stalled += status.connected and status.lag_seconds > BOUND
            if status.lag_seconds >= 4 * BOUND:
                break
            assert time.monotonic() < deadline, f"the {mode} link left sales {status}"
            for _ in range(10):
                assert writer.write() is None, writer.refused
            assert_admitted(cluster, writer)
        assert_admitted(cluster, writer)
        if mode == "blackhole":
            assert stalled >= 4, "the blackholed stream was not seen up and behind"
    # A blackholed stream lost bytes mid-message: its connections are closed, so the streams
    # reconnect at once instead of at their deadline.
    cluster.links("sales", "support", "cut")
    cluster.heal()
    assert_every_acknowledged_write_everywhere(cluster, writer)


@pytest.mark.proxy
def test_writes_are_taken_throughout_the_catch_up_of_a_long_backlog_after_a_heal(make_cluster):
    cluster = make_cluster(("sales", "support"), sync=SYNC)
    wait_until(lambda: peers_connected(cluster, "sales"), "sales's stream to support is up")
    cluster.links("sales", "support", "cut")
    with cluster.client("sales", "sales_agent", attempts=1) as sales:
        writer = Writer(sales)
        deadline = time.monotonic() + 12
        while lag_s(cluster, "sales", "support") < 5 * BOUND:
            assert time.monotonic() < deadline, "the cut left sales no backlog"
            for _ in range(10):
                assert writer.write() is None
        # Healed into a link twice as fast as the writes: connected, acknowledging, its lag
        # past the bound, and its backlog shrinking for several seconds.
        cluster.proxies[("sales", "support")].set("throttle", rate_bps=4 * THROTTLE)
        cluster.proxies[("support", "sales")].set("pass")
        behind_connected = 0
        deadline = time.monotonic() + 40
        while True:
            status = next(p for p in node_status(cluster.address("sales")).peers)
            if status.connected and status.lag_seconds > 2 * BOUND:
                behind_connected += 1
            elif status.connected and status.lag_seconds < BOUND / 2:
                break
            assert time.monotonic() < deadline, f"support never caught up: {status}"
            for _ in range(10):
                assert writer.write() is None, "a write was refused during the catch-up"
            assert_admitted(cluster, writer)
        # The catch-up took a while with the stream up and behind (the case it is about).
        assert behind_connected >= 8, behind_connected
    cluster.heal()
    assert_every_acknowledged_write_everywhere(cluster, writer)


@pytest.mark.proxy
def test_the_python_client_retries_a_refused_write_until_it_is_taken_and_records_it_once(
    make_cluster,
):
    cluster = make_cluster(("sales", "support"), sync=SYNC)
    wait_until(lambda: peers_connected(cluster, "sales"), "sales's stream to support is up")
    proxy = cluster.proxies[("sales", "support")]
    proxy.set("throttle", rate_bps=THROTTLE)
    with cluster.client("sales", "sales_agent", attempts=1) as sales:
        Writer(sales).until_refused(timeout_s=12)
    refused = lambda: metric(  # noqa: E731
        cluster, "sales", "selfmodel_writes_refused_replication_behind_total", peer="support"
    )
    before = refused() or 0.0

    def lift_once_refused() -> None:
        wait_until(lambda: (refused() or 0.0) > before, "the client's write refused")
        proxy.set("pass")

    lifter = threading.Thread(target=lift_once_refused, daemon=True)
    lifter.start()
    with cluster.client("sales", "sales_agent") as client:  # the default retries
        started = time.monotonic()
        client.observe(user("adm-retried"), "retried", confidence=0.8, context=CTX, key="once")
        took = time.monotonic() - started
    lifter.join(timeout=10)
    assert (refused() or 0.0) > before, "the client's write was never refused"
    assert took < client.timeout_s
    cluster.wait_converged(timeout_s=60)
    for name in cluster.nodes:
        with cluster.client(name, "auditor") as reader:
            explained = reader.explain(user("adm-retried"), CTX, "once")
        assert [o.statement for o in explained.observations] == ["retried"], name


@pytest.mark.proxy
def test_writes_held_for_a_slow_peer_are_taken_again_at_once_when_it_goes_down_and_after(
    make_cluster,
):
    cluster = make_cluster(("sales", "support"), sync=SYNC)
    wait_until(lambda: peers_connected(cluster, "sales"), "sales's stream to support is up")
    cluster.proxies[("sales", "support")].set("throttle", rate_bps=THROTTLE)
    with cluster.client("sales", "sales_agent", attempts=1) as sales:
        writer = Writer(sales)
        writer.until_refused(timeout_s=12)
        # The slow peer dies while writes are held for it: out of reach, it holds nothing.
        cluster.nodes["support"].kill()
        wait_until(
            lambda: metric(cluster, "sales", "selfmodel_writes_admitted") == 1.0,
            "sales admits writes with support down",
            timeout_s=10,
        )
        refused = len(writer.refused)
        for _ in range(20):
            assert writer.write() is None
        # Back, on a link that keeps up, it catches up and no write is held for it.
        cluster.proxies[("sales", "support")].set("pass")
        cluster.nodes["support"].start()
        wait_until(lambda: peers_connected(cluster, "sales"), "sales's stream to support is up")
        for _ in range(40):
            assert writer.write() is None
        assert len(writer.refused) == refused
    assert_every_acknowledged_write_everywhere(cluster, writer)
