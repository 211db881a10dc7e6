"""A write whose answer is lost, retried with its idempotency key, is recorded exactly once.

The client sets one key per logical call and sends it again on each retry (federation.client);
the node answers a key it has seen with the first answer (node.idempotency): after the network
dropped the answer, after a kill -9 between the write and its answer, and on another node that
merged the first write: an Observe by its observations, a Retract or ForgetSubject by the keyed
call replicated with its withdrawal or erase.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.client import AsyncClient, Client, Observed, user
from selfmodel.v1 import selfmodel_pb2
from tests.faultproxy import FaultProxy
from tests.nodes import LocalCluster, NodeProcess, node_status, wait_until

pytestmark = pytest.mark.faults

SLOT = ("communication_style", "channel")
WRITE = {"confidence": 0.8, "context": SLOT[0], "key": SLOT[1]}


def ids(client: Client, subject: object) -> list[str]:
    return [o.observation_id for o in client.explain(subject, *SLOT).observations]  # type: ignore[arg-type]


def handled(node: NodeProcess, method: str) -> float:
    """How many calls of ``method`` the node has answered since it started."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(node.metrics())
        for sample in family.samples
        if sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_method") == method
    )


def answer_lost(node: NodeProcess, done: Callable[[], bool], method: str = "Observe") -> bool:
    """Whether the node answered its first call of ``method`` and the client still has no
    answer a second later (with the answers passing, it has one within milliseconds)."""
    wait_until(lambda: handled(node, method) >= 1, "the node answered the write")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if done():
            return False
        time.sleep(0.05)
    return True


def test_a_write_repeated_on_another_node_after_replication_records_nothing_new(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"))
    subject, other = user("u-moved"), user("u-moved-2")
    with (
        cluster.client("sales", "sales_agent") as on_sales,
        cluster.client("support", "sales_agent") as on_support,
    ):
        first = on_sales.observe(subject, "Prefers email", **WRITE, idempotency_key="k-1")  # type: ignore[arg-type]
        on_support.self_model(subject, at_least=first.token)  # merged there
        again = on_support.observe(subject, "Prefers email", **WRITE, idempotency_key="k-1")  # type: ignore[arg-type]
        assert (again.observation_id, again.key) == (first.observation_id, first.key)
        assert ids(on_support, subject) == [first.observation_id]
        replayed = 'selfmodel_writes_replayed_total{call="observe",found="observations"} 1.0'
        assert replayed in cluster.nodes["support"].metrics()

        batch = [
            selfmodel_pb2.ObserveRequest(
                subject=on_sales._req.subject(s), context=SLOT[0], key=SLOT[1],
                statement="Prefers chat", confidence=0.7,
            )
            for s in (subject, other)
        ]  # fmt: skip
        token = on_sales.observe_batch(batch, idempotency_key="batch-1")
        on_support.self_models([subject, other], at_least=token)
        written = [ids(on_support, s) for s in (subject, other)]
        on_support.observe_batch(batch, idempotency_key="batch-1")
        assert [ids(on_support, s) for s in (subject, other)] == written
        cluster.wait_converged()
        assert [ids(on_sales, s) for s in (subject, other)] == written
        assert all(len(w) == 1 for w in written)


def test_a_retract_or_forget_repeated_on_another_node_after_replication_records_nothing_new(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(("sales", "support"))
    subject = user("u-moved-marks")
    stored = subject.resolve("acme")  # the clients' tenant
    support = cluster.nodes["support"]

    def outbox_seq() -> int:
        return node_status(cluster.address("support")).outbox_seq

    with (
        cluster.client("sales", "sales_agent") as on_sales,
        cluster.client("support", "sales_agent") as on_support,
    ):
        on_sales.observe(subject, "Prefers email", **WRITE)  # type: ignore[arg-type]
        first = on_sales.retract(subject, *SLOT, idempotency_key="r-1")
        assert first.count == 1
        on_support.self_model(subject, at_least=first.token)  # merged there
        withdrawals = cluster.subject_state("support", stored).withdrawals
        assert len(withdrawals) == 1
        seq = outbox_seq()
        again = on_support.retract(subject, *SLOT, idempotency_key="r-1")
        assert again.count == first.count == 1  # the first answer, not this node's (0)
        assert cluster.subject_state("support", stored).withdrawals == withdrawals
        assert outbox_seq() == seq  # nothing new to replicate
        replayed = 'selfmodel_writes_replayed_total{call="retract",found="call"} 1.0'
        assert replayed in support.metrics()

        token = on_sales.forget(subject, idempotency_key="f-1")
        on_support.self_model(subject, at_least=token)
        bound = cluster.subject_state("support", stored).erased
        kept = on_sales.observe(subject, "Prefers chat", **WRITE)  # type: ignore[arg-type]
        on_support.self_model(subject, at_least=kept.token)
        seq = outbox_seq()
        on_support.forget(subject, idempotency_key="f-1")
        assert ids(on_support, subject) == [kept.observation_id]  # the later write survives
        assert cluster.subject_state("support", stored).erased == bound
        assert outbox_seq() == seq
        replayed = 'selfmodel_writes_replayed_total{call="forget",found="call"} 1.0'
        assert replayed in support.metrics()
        cluster.wait_converged()
        assert ids(on_sales, subject) == [kept.observation_id]


@pytest.mark.proxy
def test_a_write_whose_answer_the_network_drops_is_retried_by_the_client_and_recorded_once(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("sales")
    proxy = FaultProxy(("127.0.0.1", node.port))
    subject = user("u-dropped")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with (
            Client(proxy.address, agent="sales_agent", attempts=40, timeout_s=30) as agent,
            Client(node.address, agent="reader") as reader,
        ):
            agent.policy()  # the connection is up before the answers go missing
            proxy.set("drop_answers")
            call = pool.submit(agent.observe, subject, "Prefers email", **WRITE)  # type: ignore[arg-type]
            assert answer_lost(node, call.done), "the answer reached the client"
            recorded = ids(reader, subject)
            proxy.set("cut")  # the call fails UNAVAILABLE; the client retries it
            proxy.set("pass")
            written: Observed = call.result(timeout=90)
            assert ids(reader, subject) == recorded == [written.observation_id]
            assert handled(node, "Observe") >= 2  # the first answer was lost, the retry answered
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        proxy.close()


@pytest.mark.proxy
def test_an_async_write_whose_answer_is_dropped_is_retried_and_recorded_once(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("sales")
    proxy = FaultProxy(("127.0.0.1", node.port))
    subject = user("u-dropped-async")

    recorded: list[str] = []

    async def scenario(reader: Client) -> Observed:
        async with AsyncClient(
            proxy.address, agent="sales_agent", attempts=40, timeout_s=30
        ) as agent:
            await agent.policy()
            proxy.set("drop_answers")
            call = asyncio.ensure_future(agent.observe(subject, "Prefers email", **WRITE))  # type: ignore[arg-type]
            lost = await asyncio.to_thread(answer_lost, node, call.done)
            assert lost, "the answer reached the client"
            recorded.extend(ids(reader, subject))
            proxy.set("cut")
            proxy.set("pass")
            return await asyncio.wait_for(call, 90)

    try:
        with Client(node.address, agent="reader") as reader:
            written = asyncio.run(scenario(reader))
            assert ids(reader, subject) == recorded == [written.observation_id]
            assert handled(node, "Observe") >= 2
    finally:
        proxy.close()


@pytest.mark.proxy
def test_a_write_retried_through_a_kill_9_between_the_write_and_its_answer_is_recorded_once(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("sales")
    proxy = FaultProxy(("127.0.0.1", node.port))
    subject = user("u-killed")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with Client(proxy.address, agent="sales_agent", attempts=60, timeout_s=30) as agent:
            agent.policy()
            proxy.set("drop_answers")  # holds the answer until the node is gone
            call = pool.submit(agent.observe, subject, "Prefers email", **WRITE)  # type: ignore[arg-type]
            lost = answer_lost(node, call.done)
            with Client(node.address, agent="reader") as reader:
                recorded = ids(reader, subject)
            node.kill()
            proxy.set("pass")
            node.start()  # same data directory and port: the client's retries reach it
            written: Observed = call.result(timeout=120)
        assert lost, "the answer reached the client before the kill"
        with Client(node.address, agent="reader") as reader:
            assert ids(reader, subject) == recorded == [written.observation_id]
        assert handled(node, "Observe") >= 1  # the retry reached the restarted node
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        proxy.close()


@pytest.mark.proxy
@pytest.mark.parametrize("call", ["Retract", "ForgetSubject"])
def test_a_retract_or_forget_retried_through_a_kill_9_withdraws_nothing_written_since(
    start_node: Callable[..., NodeProcess], call: str
) -> None:
    """The retry arrives after a later observation of the same source in the slot: recorded
    again, the withdrawal or erase would take that observation too."""
    node = start_node("sales")
    proxy = FaultProxy(("127.0.0.1", node.port))
    subject = user(f"u-killed-{call.lower()}")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with Client(proxy.address, agent="sales_agent", attempts=60, timeout_s=30) as agent:
            agent.observe(subject, "Prefers email", **WRITE)  # type: ignore[arg-type]
            proxy.set("drop_answers")  # holds the answer until the node is gone
            if call == "Retract":
                pending = pool.submit(agent.retract, subject, *SLOT)
            else:
                pending = pool.submit(agent.forget, subject)
            lost = answer_lost(node, pending.done, call)
            proxy.set("cut")  # the client's retries fail until the later write is in
            node.kill()
            node.start()
            with Client(node.address, agent="sales_agent") as direct:
                assert ids(direct, subject) == []  # the first call was written
                later = direct.observe(subject, "Prefers chat", **WRITE)  # type: ignore[arg-type]
            proxy.set("pass")
            answer = pending.result(timeout=120)
        assert lost, "the answer reached the client before the kill"
        if call == "Retract":
            assert answer.count == 1
        with Client(node.address, agent="reader") as reader:
            assert ids(reader, subject) == [later.observation_id]
        assert handled(node, call) >= 1  # the retry reached the restarted node
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        proxy.close()
