"""No echo chamber, on real nodes: agents that read a belief and write it back without new
evidence add no support, whichever node they read and write on (node.resolution)."""

from __future__ import annotations

import pytest

from federation.client import user
from node.errors import InvalidArgument

pytestmark = pytest.mark.faults

SLOT = {"context": "churn", "key": "risk"}


def test_reading_and_writing_a_belief_back_adds_no_independent_support(make_cluster):
    cluster = make_cluster()
    agents = [
        ("sales", "sales_agent"),
        ("support", "support_agent"),
        ("billing", "billing_agent"),
        ("sales", "renewal_agent"),
    ]
    clients = [cluster.client(node, agent) for node, agent in agents]
    try:
        first = clients[0].observe(user("u-echo"), "High churn risk", confidence=0.6, **SLOT)
        token = first.token
        for client in clients[1:]:
            # Each agent reads the model (the client remembers it), then says the same thing.
            view = client.self_model(user("u-echo"), at_least=token, timeout_s=10)
            belief = view.belief("churn", "risk")
            assert belief is not None and belief.confidence == pytest.approx(0.54)
            token = client.observe(user("u-echo"), "High churn risk", confidence=0.6, **SLOT).token
        with pytest.raises(InvalidArgument) as refused:
            clients[0].observe(
                user("u-echo"), "x", confidence=0.5, context="churn", based_on="not a token!"
            )
        assert refused.value.field == "based_on"
    finally:
        for client in clients:
            client.close()
    cluster.wait_converged(timeout_s=60)
    for name in cluster.nodes:
        with cluster.client(name, "auditor") as reader:
            view = reader.self_model(user("u-echo"), at_least=token, timeout_s=10)
            belief = view.belief("churn", "risk")
            assert belief is not None and belief.confidence == pytest.approx(0.54), name
            assert len(belief.supporters) == 4
            explained = reader.explain(user("u-echo"), "churn", "risk")
            independent = {o.source: o.independent for o in explained.observations}
            assert independent == {
                "sales_agent": True,
                "support_agent": False,
                "billing_agent": False,
                "renewal_agent": False,
            }, name
            dependence = {o.source: o.dependence for o in explained.observations}
            assert "re-asserts what its agent read from sales_agent" in dependence["support_agent"]
