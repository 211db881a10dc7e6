"""Forget by causal time, on real nodes cut apart by the fault proxy.

A forget erases every observation that happened before it (by hybrid clock and causal
context), wherever written, and never one written after it: the erase bound of sync.crdt.
"""

from __future__ import annotations

import pytest

from federation.client import Client, user
from tests.faults.test_partitions import assert_same_models

pytestmark = pytest.mark.faults

CTX = "contact"


def statements(client: Client, subject_id: str, at_least: str | None = None) -> set[str]:
    view = client.self_model(
        user(subject_id), include_uncertain=True, at_least=at_least, timeout_s=10.0
    )
    return {b.statement for b in view.all_beliefs}


def test_a_write_acknowledged_after_a_forget_on_the_other_side_of_a_partition_survives(
    make_cluster,
):
    cluster = make_cluster()
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "support_agent") as support,
    ):
        sales.observe(user("u-1"), "Old secret", confidence=0.9, context=CTX, key="secret")
        cluster.wait_converged()
        cluster.partition({"sales"}, {"support", "billing"})
        sales.forget(user("u-1"))
        # Acknowledged after the forget was: a later hybrid timestamp on every node.
        written = support.observe(
            user("u-1"), "Prefers phone calls", confidence=0.8, context=CTX, key="channel"
        )
        assert statements(support, "u-1") == {"Old secret", "Prefers phone calls"}
        cluster.heal()
        cluster.wait_converged(timeout_s=60)
    assert_same_models(cluster, ["u-1"])
    for name in cluster.nodes:
        with cluster.client(name, "auditor") as reader:
            # The writer's token, read anywhere, shows the write: covered means present.
            shown = statements(reader, "u-1", at_least=written.token)
            assert shown == {"Prefers phone calls"}, name


def test_a_second_forget_on_a_cut_off_node_erases_a_write_made_before_it(make_cluster):
    cluster = make_cluster()
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("billing", "billing_agent") as billing,
    ):
        sales.observe(user("u-2"), "Lives in Lyon", confidence=0.9, context=CTX, key="city")
        cluster.wait_converged()
        cluster.partition({"billing"}, {"sales", "support"})
        sales.forget(user("u-2"))
        phone = sales.observe(
            user("u-2"), "Phone is +33 6 12 34 56 78", confidence=0.9, context=CTX, key="phone"
        )
        assert statements(sales, "u-2") == {"Phone is +33 6 12 34 56 78"}
        billing.forget(user("u-2"))  # never saw the phone number, and comes after it
        after = billing.observe(
            user("u-2"), "Pays by invoice", confidence=0.7, context=CTX, key="payment"
        )
        cluster.heal()
        cluster.wait_converged(timeout_s=60)
    assert_same_models(cluster, ["u-2"])
    for name in cluster.nodes:
        with cluster.client(name, "auditor") as reader:
            # The phone number's token is covered by the state after the second forget.
            assert statements(reader, "u-2", at_least=phone.token) == {"Pays by invoice"}, name
            assert statements(reader, "u-2", at_least=after.token) == {"Pays by invoice"}, name
