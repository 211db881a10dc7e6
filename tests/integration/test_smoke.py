from __future__ import annotations

from federation.client import Client, user


def test_sales_agent_writes_and_support_agent_reads_the_same_belief(start_node):
    node = start_node()
    with (
        Client(node.address, agent="sales_agent", tenant="acme") as sales,
        Client(node.address, agent="support_agent", tenant="acme") as support,
    ):
        written = sales.observe(
            user("u-42"),
            "Motivated by quick time-to-value",
            confidence=0.82,
            context="purchase_motivation",
        )
        model = support.self_model(user("u-42"), at_least=written.token)
        [belief] = model.beliefs(context="purchase_motivation")
        assert belief.statement == "Motivated by quick time-to-value"
        assert [s.source for s in belief.supporters] == ["sales_agent"]
        assert belief.supporters[0].confidence == 0.82
