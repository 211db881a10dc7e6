"""Teams and organizations on real node processes: membership through AdminService (permission,
audit, refusals, idempotent answers), and group reads serving roll-ups (GetSelfModel,
BatchGetSelfModels, ExplainBelief, ListContexts)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from federation import tokens
from federation.client import AsyncClient, Client, holders, org, team, user
from node.errors import InvalidArgument, PermissionDenied, Reason
from tests.harness import NodeProcess

PRINCIPALS = {
    # name: (agent, tenant, role, write, members)
    "ops": ("acme_ops", "acme", "operator", ["*"], False),
    "hr": ("hr_agent", "acme", "agent", ["*"], True),
    "sales": ("sales_agent", "acme", "agent", ["*"], False),
    "support": ("support_agent", "acme", "agent", ["*"], False),
    "globex_ops": ("globex_ops", "globex", "operator", ["*"], False),
}


@dataclass
class Node:
    node: NodeProcess
    tokens: dict[str, str]

    def client(self, who: str) -> Client:
        tenant = PRINCIPALS[who][1]
        return Client(self.node.address, token=self.tokens[who], tenant=tenant)


@pytest.fixture
def secured(start_node: Callable[..., NodeProcess], tmp_path: Path) -> Iterator[Node]:
    file = tmp_path / "tokens.toml"
    made = {}
    for name, (agent, tenant, role, write, members) in PRINCIPALS.items():
        made[name], _ = tokens.create(file, agent, tenant, role, write, ["*"], members)
    yield Node(start_node("n1", "--tokens", str(file)), made)


def test_members_are_added_and_removed_by_permitted_callers_idempotently_and_audited(
    secured: Node,
) -> None:
    with (
        secured.client("hr") as hr,
        secured.client("sales") as sales,
        secured.client("ops") as ops,
        secured.client("globex_ops") as globex,
    ):
        with pytest.raises(PermissionDenied) as refused:
            sales.add_member(team("t1"), user("u1"))
        assert refused.value.reason == Reason.MEMBERSHIP_DENIED
        with pytest.raises(PermissionDenied) as other:
            globex.add_member(team("t1", "acme"), user("u1", "acme"))
        assert other.value.reason == Reason.TENANT_DENIED

        assert hr.add_member(team("t1"), user("u1")) == "added"
        assert hr.add_member(team("t1"), user("u1")) == "already_member"
        assert ops.add_member(team("t1"), user("u2")) == "added"
        assert ops.add_member(org("o1"), team("t1")) == "added"
        page = sales.members(team("t1"))  # any caller of the tenant may list
        assert [m.id for m in page.members] == ["u1", "u2"] and page.group_users == 2
        assert sales.members(org("o1")).group_users == 2
        first = sales.members(team("t1"), page_size=1)
        rest = sales.members(team("t1"), page_size=1, page_token=first.next_page_token)
        assert [m.id for m in (*first.members, *rest.members)] == ["u1", "u2"]
        assert rest.next_page_token == ""

        assert hr.remove_member(team("t1"), user("u2")) == "removed"
        assert hr.remove_member(team("t1"), user("u2")) == "not_member"
        assert [m.id for m in sales.members(team("t1")).members] == ["u1"]

        entries, _ = ops.audit()
        changes = [(e.action, e.actor, e.subject.id, e.detail) for e in entries]
        assert changes == [
            ("add_member", "hr_agent", "t1", "member=user:u1"),
            ("add_member", "acme_ops", "t1", "member=user:u2"),
            ("add_member", "acme_ops", "o1", "member=team:t1"),
            ("remove_member", "hr_agent", "t1", "member=user:u2"),
        ]


@pytest.mark.parametrize(
    ("group", "member", "field", "says"),
    [
        (team("t1"), team("t2"), "member", "the members of a team are users"),
        (org("o1"), user("u1"), "member", "the members of an organization are teams"),
        (team("t1"), user("u1", "globex"), "member", "must be of the group's tenant 'acme'"),
        (user("u9"), user("u1"), "group", "must be a TEAM or ORG subject"),
    ],
)
def test_a_member_that_cannot_belong_is_refused_naming_the_field(
    secured: Node, group: object, member: object, field: str, says: str
) -> None:
    with secured.client("ops") as ops:
        with pytest.raises(InvalidArgument) as refused:
            ops.add_member(group, member)  # type: ignore[arg-type]
        assert refused.value.reason == Reason.MEMBER_INVALID
        assert refused.value.field == field and says in str(refused.value)


def test_a_group_read_serves_its_own_beliefs_and_its_rollup_never_its_members_context(
    secured: Node,
) -> None:
    with secured.client("ops") as ops, secured.client("sales") as sales:
        for u in ("u1", "u2", "u3"):
            ops.add_member(team("t1"), user(u))
        ops.add_member(org("o1"), team("t1"))
        sales.observe(user("u1"), "ten thousand", confidence=0.9, context="budget", key="amount")
        sales.observe(user("u2"), "Ten thousand.", confidence=0.7, context="budget", key="amount")
        sales.observe(user("u3"), "fifty", confidence=0.9, context="budget", key="amount")
        sales.observe(user("u3"), "email", confidence=0.9, context="channel", key="pref")
        sales.observe(team("t1"), "ship q3", confidence=0.9, context="goals", key="q3")
        view = sales.self_model(team("t1"))
        assert [b.context for b in view.all_beliefs] == ["goals"]
        assert view.group_users == 3
        rows = [(r.context, r.statement, r.holders) for r in view.rollups]
        assert rows[0][0] == "budget" and rows[0][2] == 2 and rows[1] == ("budget", "fifty", 1)
        assert rows[2] == ("channel", "email", 1)
        [held] = [r for r in view.rollup("budget", "amount") if r.holders == 2]
        assert held.share == pytest.approx(2 / 3)
        assert held.mean_confidence == pytest.approx((0.9 * 0.9 + 0.7 * 0.9) / 2, abs=1e-6)
        # the reader's contexts and minimum confidence (against the mean) apply
        budget = sales.self_model(team("t1"), contexts=["budget"], min_confidence=0.75)
        assert [(r.statement, r.holders) for r in budget.rollups] == [("fifty", 1)]
        assert budget.rollups[0].mean_confidence == pytest.approx(0.81)
        assert sales.self_model(org("o1")).rollups == view.rollups
        models, _ = sales.self_models([team("t1"), user("u1")])
        assert models[0].rollups == view.rollups and models[1].rollups == ()
        assert [p.context for p in sales.contexts(team("t1"))] == ["goals"]
        why = sales.explain(team("t1"), "budget", "amount")
        assert sorted((h.user.id, h.statement) for h in holders(why)) == [
            ("u1", held.statement),
            ("u2", held.statement),
            ("u3", "fifty"),
        ]


def test_a_groups_members_do_not_count_against_the_agents_subject_slots(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("n1", "--max-subject-slots", "2")
    with Client(node.address, agent="ops", tenant="acme") as ops:
        for u in ("u1", "u2", "u3"):
            assert ops.add_member(team("t1"), user(u)) == "added"
        assert [m.id for m in ops.members(team("t1")).members] == ["u1", "u2", "u3"]


def test_the_async_client_changes_and_lists_members_as_the_client_does(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("n1")

    async def scenario() -> tuple[str, str, list[str], str]:
        async with AsyncClient(node.address, agent="ops", tenant="acme") as ops:
            added = await ops.add_member(team("t1"), user("u1"))
            again = await ops.add_member(team("t1"), user("u1"))
            page = await ops.members(team("t1"))
            removed = await ops.remove_member(team("t1"), user("u1"))
            return added, again, [m.id for m in page.members], removed

    assert asyncio.run(scenario()) == ("added", "already_member", ["u1"], "removed")
