"""The Prometheus endpoint of a real node: standard gRPC server families and selfmodel figures."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from federation.client import Client, user
from node.errors import InvalidArgument

SERVICE = "selfmodel.v1.SelfModelService"
# Distinctive ids, so a label value that leaked one would be found.
AGENT, TENANT, SUBJECT = "agent-zq7x", "tenant-zq7x", "u-zq7x"


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def values(text: str, name: str, **labels: str) -> list[float]:
    return [
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def one(text: str, name: str, **labels: str) -> float:
    found = values(text, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture(scope="module")
def scraped(module_node) -> str:
    """A fresh node's metrics after 3 accepted Observes, 1 refused one and 1 GetSelfModel."""
    with Client(module_node.address, agent=AGENT, tenant=TENANT) as client:
        for i in range(3):
            client.observe(user(SUBJECT), f"Statement {i}", confidence=0.8, context="budget")
        with pytest.raises(InvalidArgument):
            client.observe(user(SUBJECT), "Too sure", confidence=2.0, context="budget")
        client.self_model(user(SUBJECT))
    return module_node.metrics()


def test_grpc_server_handled_total_counts_calls_by_method_and_code(scraped):
    unary = {"grpc_type": "unary", "grpc_service": SERVICE}
    handled = "grpc_server_handled_total"
    assert one(scraped, handled, grpc_method="Observe", grpc_code="OK", **unary) == 3
    assert one(scraped, handled, grpc_method="Observe", grpc_code="INVALID_ARGUMENT", **unary) == 1
    assert one(scraped, handled, grpc_method="GetSelfModel", grpc_code="OK", **unary) == 1
    assert one(scraped, "grpc_server_started_total", grpc_method="Observe", **unary) == 4
    health = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    assert one(scraped, handled, **health) >= 1, "the start-up health checks are counted too"
    codes = {s.labels["grpc_code"] for s in samples(scraped) if s.name == handled}
    assert codes <= {c.name for c in grpc.StatusCode}, codes


def test_grpc_server_handling_seconds_is_a_histogram_per_method(scraped):
    name = "grpc_server_handling_seconds"
    assert one(scraped, f"{name}_count", grpc_method="Observe", grpc_service=SERVICE) == 4
    assert 0 < one(scraped, f"{name}_sum", grpc_method="Observe", grpc_service=SERVICE) < 10
    buckets = [
        s
        for s in samples(scraped)
        if s.name == f"{name}_bucket" and s.labels["grpc_method"] == "Observe"
    ]
    assert len(buckets) > 5
    assert max(s.value for s in buckets if s.labels["le"] == "+Inf") == 4


def test_selfmodel_figures_count_observations_and_store_bytes(scraped):
    assert one(scraped, "selfmodel_observations_total") == 3, "a refused observation is not counted"
    assert one(scraped, "selfmodel_store_bytes") > 0
    assert one(scraped, "selfmodel_commit_batches_total") == 3


def test_no_label_value_holds_a_user_agent_or_tenant_id(scraped):
    leaked = [
        (s.name, k, v)
        for s in samples(scraped)
        for k, v in s.labels.items()
        if any(secret in v for secret in (AGENT, TENANT, SUBJECT, "zq7x"))
    ]
    assert leaked == []
    assert "zq7x" not in scraped, "no id anywhere in the exposition, not even in help text"


def test_a_node_keeps_its_cached_states_within_cache_mb_and_shows_their_memory(start_node):
    budget_mb = 0.003  # about one cached subject of one belief
    node = start_node("small-cache", "--cache-mb", str(budget_mb))
    with Client(node.address, agent=AGENT, tenant=TENANT) as client:
        for i in range(3):
            client.observe(user(f"{SUBJECT}-{i}"), "Statement", confidence=0.8, context="budget")
    cached = one(node.metrics(), "selfmodel_state_cache_bytes")
    assert 0 < cached <= budget_mb * 2**20  # three of them would not fit
