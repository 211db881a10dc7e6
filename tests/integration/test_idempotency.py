"""Idempotency keys on one real node: a retried write is answered as the first, records nothing
new, across a kill -9 of the node, and only within the window."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from federation.client import Client, user
from node.errors import InvalidArgument
from selfmodel.v1 import selfmodel_pb2
from tests.nodes import LocalCluster, NodeProcess

SLOT = ("communication_style", "channel")


def ids(client: Client, subject: object, slot: tuple[str, str] = SLOT) -> list[str]:
    return [o.observation_id for o in client.explain(subject, *slot).observations]  # type: ignore[arg-type]


def test_a_retried_observe_is_answered_as_the_first_and_records_nothing_new(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    subject = user("u-idem")
    with Client(node.address, agent="sales_agent") as sales:
        first = sales.observe(
            subject, "Prefers email", confidence=0.8, context=SLOT[0], key=SLOT[1],
            idempotency_key="call-1",
        )  # fmt: skip
        again = sales.observe(
            subject, "Prefers email", confidence=0.8, context=SLOT[0], key=SLOT[1],
            idempotency_key="call-1",
        )  # fmt: skip
        assert (again.observation_id, again.key) == (first.observation_id, first.key)
        assert ids(sales, subject) == [first.observation_id]
        assert sales.self_model(subject, at_least=again.token).belief(*SLOT) is not None
        replayed = 'selfmodel_writes_replayed_total{call="observe",found="record"} 1.0'
        assert replayed in node.metrics()

        with pytest.raises(InvalidArgument, match=r"idempotency_key.*different request"):
            sales.observe(
                subject, "Prefers phone", confidence=0.8, context=SLOT[0], key=SLOT[1],
                idempotency_key="call-1",
            )  # fmt: skip
        assert ids(sales, subject) == [first.observation_id]
        with pytest.raises(InvalidArgument, match="idempotency_key"):
            sales.observe(subject, "x", confidence=0.8, context="c", idempotency_key="bad key!")

        # A key is its caller's: another agent's call with the same key is another call.
        with Client(node.address, agent="support_agent") as support:
            theirs = support.observe(
                subject, "Prefers email", confidence=0.8, context=SLOT[0], key=SLOT[1],
                idempotency_key="call-1",
            )  # fmt: skip
        assert theirs.observation_id != first.observation_id
        assert sorted(ids(sales, subject)) == sorted([first.observation_id, theirs.observation_id])


def test_a_retried_batch_is_answered_as_the_first_and_a_key_inside_a_batch_is_refused(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    subjects = [user("u-b1"), user("u-b2")]
    with Client(node.address, agent="sales_agent") as sales:
        batch = [
            selfmodel_pb2.ObserveRequest(
                subject=sales._req.subject(s), context=SLOT[0], key=SLOT[1],
                statement=f"Prefers email {i}", confidence=0.8,
            )
            for i, s in enumerate(subjects)
        ]  # fmt: skip
        sales.observe_batch(batch, idempotency_key="batch-1")
        written = [ids(sales, s) for s in subjects]
        token = sales.observe_batch(batch, idempotency_key="batch-1")
        assert [ids(sales, s) for s in subjects] == written
        assert all(len(w) == 1 for w in written)
        assert len(sales.self_models(subjects, at_least=token)[0]) == 2

        keyed = selfmodel_pb2.ObserveRequest()
        keyed.CopyFrom(batch[0])
        keyed.idempotency_key = "inner"
        with pytest.raises(InvalidArgument, match=r"observations\[0\].idempotency_key"):
            sales.observe_batch([keyed])


def test_a_retried_retract_or_forget_withdraws_nothing_written_after_the_first(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    subject = user("u-retract")
    with Client(node.address, agent="sales_agent") as sales:
        sales.observe(subject, "Prefers email", confidence=0.8, context=SLOT[0], key=SLOT[1])
        first = sales.retract(subject, *SLOT, idempotency_key="retract-1")
        assert first.count == 1
        later = sales.observe(subject, "Prefers chat", confidence=0.8, context=SLOT[0], key=SLOT[1])
        again = sales.retract(subject, *SLOT, idempotency_key="retract-1")
        assert again.count == 1  # the first answer, and the later observation stands
        assert ids(sales, subject) == [later.observation_id]

        sales.forget(subject, idempotency_key="forget-1")
        kept = sales.observe(subject, "Prefers post", confidence=0.8, context=SLOT[0], key=SLOT[1])
        sales.forget(subject, idempotency_key="forget-1")
        assert ids(sales, subject) == [kept.observation_id]


def test_a_key_outlives_a_kill_9_of_the_node_that_took_the_first_call(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    subject = user("u-restart")
    with Client(node.address, agent="sales_agent") as sales:
        first = sales.observe(
            subject, "Prefers email", confidence=0.8, context=SLOT[0], key=SLOT[1],
            idempotency_key="call-r",
        )  # fmt: skip
        retracted = sales.retract(subject, "budget", "size", idempotency_key="retract-r")
    node.kill()
    node.start()
    with Client(node.address, agent="sales_agent") as sales:
        later = sales.observe(subject, "Small", confidence=0.8, context="budget", key="size")
        again = sales.retract(subject, "budget", "size", idempotency_key="retract-r")
        assert again.count == retracted.count == 0
        assert ids(sales, subject, ("budget", "size")) == [later.observation_id]
        replayed = sales.observe(
            subject, "Prefers email", confidence=0.8, context=SLOT[0], key=SLOT[1],
            idempotency_key="call-r",
        )  # fmt: skip
        assert replayed.observation_id == first.observation_id
        assert ids(sales, subject) == [first.observation_id]


@pytest.mark.slow
def test_after_the_window_a_key_names_a_new_call(make_cluster: Callable[..., LocalCluster]) -> None:
    window_s = 2
    cluster = make_cluster(("sales",), proxies=False, limits={"idempotency_window_s": window_s})
    subject = user("u-window")
    with cluster.client("sales", "sales_agent") as sales:
        first = sales.retract(subject, *SLOT, idempotency_key="late")
        kept = sales.observe(subject, "Prefers chat", confidence=0.8, context=SLOT[0], key=SLOT[1])
        assert sales.retract(subject, *SLOT, idempotency_key="late").count == first.count == 0
        assert ids(sales, subject) == [kept.observation_id]
        time.sleep(window_s + 0.5)  # the window is a duration: nothing to poll for
        assert sales.retract(subject, *SLOT, idempotency_key="late").count == 1
        assert ids(sales, subject) == []
