"""Reading at scale on a real node: listing subjects, paging beliefs, batch reads, policies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from federation import tokens
from federation.client import AsyncClient, Client, SelfModelView, team, user
from node.errors import InvalidArgument, PermissionDenied
from selfmodel.v1 import selfmodel_pb2
from sync.observation import Subject, SubjectKind
from tests.nodes import NodeProcess

PRINCIPALS = {
    "acme": ("acme_agent", "acme", "agent"),
    "acme_ops": ("acme_ops", "acme", "operator"),
    "globex": ("globex_agent", "globex", "agent"),
}
POLICIES = """
[policies.default]
half_life_days = 0

[policies.contexts.budget]
policy = "latest"
min_confidence = 0.7
half_life_days = 2
evidence_discount = 0.25
max_observations = 8
"""


@dataclass
class Node:
    process: NodeProcess
    tokens: dict[str, str]

    def client(self, who: str) -> Client:
        tenant = PRINCIPALS[who][1]
        return Client(self.process.address, token=self.tokens[who], tenant=tenant)


@pytest.fixture
def node(start_node: Callable[..., NodeProcess], tmp_path: Path) -> Iterator[Node]:
    file = tmp_path / "tokens.toml"
    made = {}
    for name, (agent, tenant, role) in PRINCIPALS.items():
        made[name], _ = tokens.create(file, agent, tenant, role, ["*"], ["*"])
    policies = tmp_path / "policies.toml"
    policies.write_text(POLICIES)
    process = start_node("sales", "--tokens", str(file), "--policies", str(policies))
    yield Node(process, made)


def observation(
    subject: Subject, statement: str, context: str = "interests", key: str = ""
) -> selfmodel_pb2.ObserveRequest:
    req = selfmodel_pb2.ObserveRequest(
        context=context, key=key, statement=statement, confidence=0.9
    )
    req.subject.tenant, req.subject.id = subject.tenant, subject.id
    req.subject.kind = int(subject.kind)  # type: ignore[assignment]
    return req


def every_page(client: Client, size: int, kind: SubjectKind | None = None) -> list[list[Subject]]:
    pages: list[list[Subject]] = []
    token = ""
    for _ in range(100):  # bounded: far more pages than the test writes
        page = client.subjects(kind=kind, page_size=size, page_token=token)
        pages.append(list(page.subjects))
        token = page.next_page_token
        if not token:
            return pages
    raise AssertionError("the listing never ended")


def test_listing_pages_through_every_subject_of_the_callers_tenant_and_no_other(
    node: Node,
) -> None:
    acme_users = [Subject("acme", SubjectKind.USER, f"u-{i:02d}") for i in range(23)]
    acme_teams = [Subject("acme", SubjectKind.TEAM, f"t-{i}") for i in range(3)]
    globex_users = [Subject("globex", SubjectKind.USER, f"u-{i:02d}") for i in range(5)]
    with node.client("acme") as acme, node.client("globex") as globex:
        acme.observe_batch([observation(s, "Likes sailing") for s in acme_users + acme_teams])
        globex.observe_batch([observation(s, "Likes golf") for s in globex_users])

        pages = every_page(acme, 7)
        listed = [s for page in pages for s in page]
        assert len(pages) >= 4 and all(len(p) <= 7 for p in pages)
        assert listed == sorted(acme_users) + sorted(acme_teams)  # storage order: kind, then id
        assert [s for page in every_page(acme, 2, SubjectKind.TEAM) for s in page] == acme_teams
        assert [s for page in every_page(globex, 3) for s in page] == globex_users

        first = acme.subjects(page_size=7)
        # A page token of acme's listing, presented by globex, lists nothing of acme.
        with pytest.raises(InvalidArgument, match="page_token"):
            globex.subjects(page_size=7, page_token=first.next_page_token)
        with pytest.raises(InvalidArgument, match="page_token"):
            acme.subjects(kind=SubjectKind.TEAM, page_token=first.next_page_token)
        with pytest.raises(PermissionDenied):
            globex.subjects(tenant="acme")
        with pytest.raises(InvalidArgument, match=r"page_size.*1000.*max_page_size"):
            acme.subjects(page_size=1001)
        with pytest.raises(InvalidArgument, match="page_token"):
            acme.subjects(page_token="bm90IGEgdG9rZW4")

    with node.client("acme_ops") as ops:
        ops.forget(acme_users[0])
        assert acme_users[0] not in [s for page in every_page(ops, 50) for s in page]


def test_the_beliefs_of_a_large_subject_page_in_order_and_add_up_to_the_whole_model(
    node: Node,
) -> None:
    subject = user("u-large")
    with node.client("acme") as acme:
        large = subject.resolve("acme")
        acme.observe_batch([observation(large, f"Answer {i}", key=f"q{i:02d}") for i in range(30)])
        whole = acme.self_model(subject)
        assert len(whole.all_beliefs) == 30 and not whole.next_page_token
        pages: list[SelfModelView] = []
        token = ""
        for _ in range(10):
            pages.append(acme.self_model(subject, page_size=8, page_token=token))
            token = pages[-1].next_page_token
            if not token:
                break
        assert [len(p.all_beliefs) for p in pages] == [8, 8, 8, 6]
        assert tuple(b for p in pages for b in p.all_beliefs) == whole.all_beliefs

        acme.observe(user("u-other"), "Likes tea", confidence=0.9, context="interests")
        with pytest.raises(InvalidArgument, match=r"page_token.*another subject"):
            acme.self_model(user("u-other"), page_size=8, page_token=pages[0].next_page_token)
        with pytest.raises(InvalidArgument, match=r"page_size.*max_page_size"):
            acme.self_model(subject, page_size=5000)


def test_a_batch_read_equals_the_single_reads_and_its_token_covers_every_subject(
    node: Node,
) -> None:
    subjects = [user(f"b-{i}") for i in range(5)] + [team("b-team")]
    with node.client("acme") as acme, node.client("globex") as globex:
        for i, s in enumerate(subjects):
            acme.observe(s, f"Prefers plan {i}", confidence=0.8, context="plans", key="plan")
        acme.observe(subjects[0], "Unsure", confidence=0.3, context="budget", key="size")
        models, token = acme.self_models(subjects, include_uncertain=True)
        singles = [acme.self_model(s, include_uncertain=True) for s in subjects]
        assert [(m.subject, m.token, m.all_beliefs) for m in models] == [
            (m.subject, m.token, m.all_beliefs) for m in singles
        ]
        for s in subjects:  # one token, a position for each subject
            assert acme.self_model(s, at_least=token).subject == s.resolve("acme")
        again, _ = acme.self_models(subjects[::-1], at_least=token, contexts=["plans"])
        assert [m.subject for m in again] == [s.resolve("acme") for s in subjects[::-1]]
        assert all(b.context == "plans" for m in again for b in m.all_beliefs)

        with pytest.raises(PermissionDenied):
            globex.self_models([user("g-1", tenant="globex"), user("b-1", tenant="acme")])
        with pytest.raises(InvalidArgument, match=r"subjects\[1\].*repeats"):
            acme.self_models([subjects[0], subjects[0]])
        with pytest.raises(InvalidArgument, match=r"subjects.*100.*max_batch_read"):
            acme.self_models([user(f"x-{i}") for i in range(101)])
        other, _ = acme.self_models([user("u-none")])
        with pytest.raises(InvalidArgument, match=r"at_least.*none of the subjects"):
            acme.self_models([user("u-none")], at_least=token)
        assert other[0].all_beliefs == ()


def test_policy_and_contexts_say_what_resolution_applies(node: Node) -> None:
    with node.client("acme") as acme:
        default, budget = acme.policy("interests", "budget")
        assert (default.context, default.policy, default.min_confidence) == (
            "interests", "weighted", 0.5,
        )  # fmt: skip
        assert default.half_life_s is None and default.evidence_discount == 0.1
        assert (budget.policy, budget.min_confidence, budget.half_life_s) == (
            "latest", 0.7, 2 * 86_400.0,
        )  # fmt: skip
        assert (budget.evidence_discount, budget.max_observations) == (0.25, 8)
        [only] = acme.policy()
        assert only.context == "" and only.policy == "weighted"

        acme.observe(user("u-p"), "Small", confidence=0.9, context="budget", key="size")
        acme.observe(user("u-p"), "Likes tea", confidence=0.9, context="interests")
        contexts = acme.contexts(user("u-p"))
        assert [c.context for c in contexts] == ["budget", "interests"]
        assert contexts[0] == budget
        assert acme.contexts(user("u-empty")) == []


def test_the_async_client_reads_as_the_sync_one(node: Node) -> None:
    subjects = [user(f"a-{i}") for i in range(4)]
    with node.client("acme") as acme:
        for i, s in enumerate(subjects):
            acme.observe(s, f"Plan {i}", confidence=0.8, context="plans", key="plan")
            acme.observe(s, f"Size {i}", confidence=0.8, context="budget", key="size")
        expected = (
            acme.subjects(page_size=3),
            acme.self_model(subjects[0], page_size=1, include_uncertain=True),
            acme.self_models(subjects)[0],
            acme.contexts(subjects[0]),
            acme.policy("budget"),
        )

    async def read() -> tuple[object, ...]:
        token = node.tokens["acme"]
        async with AsyncClient(node.process.address, token=token, tenant="acme") as acme:
            return (
                await acme.subjects(page_size=3),
                await acme.self_model(subjects[0], page_size=1, include_uncertain=True),
                (await acme.self_models(subjects))[0],
                await acme.contexts(subjects[0]),
                await acme.policy("budget"),
            )

    got = asyncio.run(read())
    assert got == expected
    assert expected[0].next_page_token and expected[1].next_page_token  # type: ignore[attr-defined]
