"""Which tenants the tenant-scoped Admin calls answer (docs/security.md, docs/groups.md): an
empty tenant is the caller's token's; the development principal of a node without tokens may
name any, and a listing of it naming none spans every agents' tenant, in ListAudit,
ListSourceWeights and ListSourceContributions alike; a withdrawal or a lift names one tenant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.adminservice import AdminServicer
from node.auth import Principal
from node.engine import Engine
from node.errors import InvalidArgument, PermissionDenied
from node.learning import Learning
from node.reliability import LearningSettings
from node.store import Store
from node.writes import ObservationInput
from selfmodel.admin.v1 import admin_pb2
from sync.governance import GOVERNANCE
from sync.observation import Subject, SubjectKind

TENANTS = ("acme", "globex")
DEV = Principal("dev")  # the development principal: no token, no tenant


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Engine, Learning]]:
    """``bot``, ``honest`` and ``kind`` speak in two subjects of each tenant; ``bot`` (an
    operator's id too) also set a cluster setting, held in the node's own tenant ``_cluster``."""
    engine = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    learning = Learning(engine, LearningSettings(enabled=True))
    engine.listeners.append(learning.follow)
    try:
        for tenant in TENANTS:
            for n in (1, 2):
                subject = Subject(tenant, SubjectKind.USER, f"u-{n}")
                for source, statement in (("bot", "no"), ("honest", "yes"), ("kind", "yes")):
                    item = ObservationInput(subject, "budget", "k", statement, 0.8)
                    engine.observe(source, [item])
        engine.put(GOVERNANCE, "budget", "policy", '"latest"', "bot")
        learning.refresh()
        yield engine, learning
    finally:
        engine.store.close()


def admin(engine: Engine, learning: Learning, who: Principal) -> AdminServicer:
    return AdminServicer(engine, admin_pb2.GetStatusResponse, lambda *_: who, None, None, learning)


def call(servicer: AdminServicer, method: str, request: Any) -> Any:
    """``method`` as its body runs, its errors raised as they are (before map_errors)."""
    return getattr(AdminServicer, method).__wrapped__(servicer, request, None)


def contributions(servicer: AdminServicer, tenant: str = "") -> list[Any]:
    """Every page of ``bot``'s contributions, one per page."""
    found: list[Any] = []
    token = ""
    for _ in range(20):
        request = admin_pb2.ListSourceContributionsRequest(
            tenant=tenant, source="bot", page_size=1, page_token=token
        )
        page = call(servicer, "ListSourceContributions", request)
        found.extend(page.contributions)
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("more pages than contributions")


def test_the_development_principal_naming_no_tenant_lists_every_tenant_in_every_listing(
    node: tuple[Engine, Learning],
) -> None:
    engine, learning = node
    dev = admin(engine, learning, DEV)
    call(dev, "WithdrawSource", admin_pb2.WithdrawSourceRequest(tenant="globex", source="bot"))
    call(dev, "WithdrawSource", admin_pb2.WithdrawSourceRequest(tenant="acme", source="nobody"))
    learning.refresh()

    audit = call(dev, "ListAudit", admin_pb2.ListAuditRequest())
    weights = call(dev, "ListSourceWeights", admin_pb2.ListSourceWeightsRequest())
    listed = contributions(dev)
    assert {e.subject.tenant for e in audit.entries} == set(TENANTS)
    assert {w.tenant for w in weights.weights} == set(TENANTS)
    # Each contribution once, by tenant, then subject; globex's withdrawn, acme's not; the
    # node's own tenant (the cluster setting bot made) is no agents' tenant, never listed.
    assert [(c.subject.tenant, c.subject.id, c.withdrawn) for c in listed] == [
        ("acme", "u-1", False),
        ("acme", "u-2", False),
        ("globex", "u-1", True),
        ("globex", "u-2", True),
    ]
    # Naming a tenant, it gets that tenant's only, in each listing.
    named = contributions(dev, "globex")
    assert [(c.subject.tenant, c.subject.id) for c in named] == [
        ("globex", "u-1"),
        ("globex", "u-2"),
    ]
    request = admin_pb2.ListSourceWeightsRequest(tenant="globex")
    assert {w.tenant for w in call(dev, "ListSourceWeights", request).weights} == {"globex"}
    # A page token of every tenant's listing continues that listing only.
    first = call(
        dev,
        "ListSourceContributions",
        admin_pb2.ListSourceContributionsRequest(source="bot", page_size=1),
    )
    with pytest.raises(InvalidArgument, match="page_token"):
        request = admin_pb2.ListSourceContributionsRequest(
            tenant="acme", source="bot", page_token=first.next_page_token
        )
        call(dev, "ListSourceContributions", request)


def test_an_operator_naming_no_tenant_lists_its_own_tenant_and_is_refused_another(
    node: tuple[Engine, Learning],
) -> None:
    engine, learning = node
    ops = admin(engine, learning, Principal("ops", "operator", "acme"))
    assert {c.subject.tenant for c in contributions(ops)} == {"acme"}
    weights = call(ops, "ListSourceWeights", admin_pb2.ListSourceWeightsRequest())
    assert {w.tenant for w in weights.weights} == {"acme"}
    with pytest.raises(PermissionDenied, match="tenant 'globex'"):
        contributions(ops, "globex")


@pytest.mark.parametrize(
    ("method", "request_type"),
    [
        ("WithdrawSource", admin_pb2.WithdrawSourceRequest),
        ("LiftSourceWithdrawal", admin_pb2.LiftSourceWithdrawalRequest),
    ],
)
def test_a_withdrawal_without_a_tenant_on_a_node_without_tokens_is_refused_naming_it(
    node: tuple[Engine, Learning], method: str, request_type: Any
) -> None:
    engine, learning = node
    with pytest.raises(InvalidArgument, match="tenant: is required on a node without tokens"):
        call(admin(engine, learning, DEV), method, request_type(source="bot"))
    assert all(not engine.withdrawals.of(t) for t in TENANTS)
