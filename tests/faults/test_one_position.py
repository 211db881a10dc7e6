"""One source, one position per slot, cluster-wide: on real nodes cut apart by the fault proxy.

Per (slot, source) only the newest observation by the cluster-wide total order counts, wherever
written; a retract withdraws the source's observations in the slot up to its time, including
ones the retracting node had not merged (sync.crdt, node.resolution).
"""

from __future__ import annotations

import pytest

from federation.client import user
from tests.faults.test_partitions import assert_same_models

pytestmark = pytest.mark.faults

SLOT = {"context": "company", "key": "team_size"}


def test_an_agents_correction_on_another_node_wins_and_it_counts_once(make_cluster):
    cluster = make_cluster()
    with (
        cluster.client("sales", "sizing_agent") as on_sales,
        cluster.client("support", "sizing_agent") as on_support,
        cluster.client("billing", "billing_agent") as billing,
    ):
        billing.observe(user("u-1"), "Team of 8", confidence=0.7, **SLOT)
        twice = {"context": "company", "key": "plan"}
        cluster.wait_converged()
        cluster.partition({"sales"}, {"support", "billing"})
        on_sales.observe(user("u-1"), "50 people", confidence=0.9, **SLOT)
        on_sales.observe(user("u-1"), "Pro plan", confidence=0.6, **twice)
        # The same agent corrects itself on the other side, and says the same plan there too.
        on_support.observe(user("u-1"), "solo", confidence=0.8, **SLOT)
        once = on_support.observe(user("u-1"), "Pro plan", confidence=0.6, **twice)
        cluster.heal()
        cluster.wait_converged(timeout_s=60)
    models = assert_same_models(cluster, ["u-1"])
    beliefs = {b[1]: b for b in models["u-1"]}
    size = beliefs["team_size"]
    assert size[2] == "solo"
    assert size[5] == ("sizing_agent",) and size[6] == ("billing_agent",)  # once, as supporter
    with cluster.client("billing", "auditor") as reader:
        view = reader.self_model(user("u-1"), at_least=once.token, include_uncertain=True)
        plan = view.belief("company", "plan")
        assert plan is not None and [s.source for s in plan.supporters] == ["sizing_agent"]
        # Counted once: the support of one 0.6 observation without evidence (0.6 x 0.9).
        assert plan.confidence == pytest.approx(0.54)
        explained = reader.explain(user("u-1"), "company", "team_size")
        superseded = [o.statement for o in explained.observations if o.superseded]
        assert superseded == ["50 people"]


def test_a_retract_on_a_node_that_had_not_merged_the_write_withdraws_it_everywhere(
    make_cluster,
):
    cluster = make_cluster()
    with (
        cluster.client("sales", "sizing_agent") as on_sales,
        cluster.client("support", "sizing_agent") as on_support,
    ):
        cluster.partition({"sales"}, {"support", "billing"})
        on_sales.observe(user("u-2"), "50 people", confidence=0.9, **SLOT)
        retracted = on_support.retract(user("u-2"), "company", "team_size")
        assert retracted.count == 0  # none here yet
        later = on_sales.observe(user("u-2"), "Team of 3", confidence=0.9, key="other",
                                 context="company")  # fmt: skip
        cluster.heal()
        cluster.wait_converged(timeout_s=60)
    assert_same_models(cluster, ["u-2"])
    for name in cluster.nodes:
        with cluster.client(name, "auditor") as reader:
            view = reader.self_model(
                user("u-2"), at_least=later.token, include_uncertain=True, timeout_s=10
            )
            assert [b.statement for b in view.all_beliefs] == ["Team of 3"], name
    assert retracted.recorded  # the reply said the withdrawal was recorded
