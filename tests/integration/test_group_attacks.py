"""Groups under hostile and careless use, on a real node: a roll-up larger than a reply can
carry stays readable (bounded, counted, narrowed by the reader's filter), and another tenant's
governance actions tell an operator nothing about that tenant."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from federation import tokens
from federation.client import Client, org, team, user
from node.errors import PermissionDenied, Reason, ResourceExhausted
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.harness import LocalCluster, NodeProcess
from tests.nodes import node_status, wait_until

USERS, SLOTS, WORDS = 100, 25, 1900  # 2,500 distinct rows of about 2 KB: past a 4 MiB reply
USER, TEAM = model_pb2.SUBJECT_KIND_USER, model_pb2.SUBJECT_KIND_TEAM
BIG = model_pb2.Subject(tenant="acme", kind=TEAM, id="big")
COPIES = tuple(model_pb2.Subject(tenant="acme", kind=TEAM, id=f"big{i}") for i in range(4))


def test_a_rollup_past_a_reply_is_bounded_counted_and_narrowed_by_the_readers_contexts(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    file = tmp_path / "tokens.toml"
    hr, _ = tokens.create(file, "hr_agent", "acme", "agent", ["*"], ["*"], members=True)
    node = start_node("n1", "--tokens", str(file))
    md = (("authorization", f"Bearer {hr}"),)
    with grpc.insecure_channel(node.address) as channel:
        models = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for u in range(USERS):
            member = model_pb2.Subject(tenant="acme", kind=USER, id=f"u{u}")
            for group in (BIG, *COPIES):
                add = admin_pb2.AddMemberRequest(group=group, member=member)
                admin.AddMember(add, metadata=md)
            writes = [
                selfmodel_pb2.ObserveRequest(
                    subject=member,
                    context="work",
                    key=f"k{s}",
                    confidence=0.9,
                    statement=f"u{u} s{s} " + "x" * WORDS,
                )
                for s in range(SLOTS)
            ]
            writes.append(
                selfmodel_pb2.ObserveRequest(
                    subject=member,
                    context="home",
                    key="city",
                    statement=f"city {u % 7}",
                    confidence=0.9,
                )
            )
            models.ObserveBatch(selfmodel_pb2.ObserveBatchRequest(observations=writes), metadata=md)

        whole = models.GetSelfModel(
            selfmodel_pb2.GetSelfModelRequest(subject=BIG), metadata=md, timeout=30
        ).snapshot
        assert whole.group_users == USERS
        assert 0 < whole.rollups_omitted < USERS * SLOTS + 7
        assert len(whole.rollups) + whole.rollups_omitted == USERS * SLOTS + 7
        assert whole.ByteSize() <= 2 * 1024 * 1024  # max_rollup_bytes (1 MiB) and the rest
        with Client(node.address, token=hr, tenant="acme") as client:
            assert client.self_model(team("big")).rollups_omitted == whole.rollups_omitted
        home = models.GetSelfModel(
            selfmodel_pb2.GetSelfModelRequest(subject=BIG, contexts=["home"]), metadata=md
        ).snapshot
        assert home.rollups_omitted == 0 and len(home.rollups) == 7
        assert sum(r.holders for r in home.rollups) == USERS

        batch = models.BatchGetSelfModels(
            selfmodel_pb2.BatchGetSelfModelsRequest(subjects=[BIG]), metadata=md, timeout=30
        )
        assert [m.rollups_omitted for m in batch.models] == [whole.rollups_omitted]
        # Five such teams in one batch share one max_rollup_bytes: the reply still fits.
        batch = models.BatchGetSelfModels(
            selfmodel_pb2.BatchGetSelfModelsRequest(subjects=[BIG, *COPIES]), metadata=md
        )
        assert [m.group_users for m in batch.models] == [USERS] * 5
        assert batch.models[0].rollups == whole.rollups
        assert all(len(m.rollups) + m.rollups_omitted == USERS * SLOTS + 7 for m in batch.models)
        assert sum(r.ByteSize() for m in batch.models for r in m.rollups) <= 1024 * 1024
        stream = models.WatchSelfModel(
            selfmodel_pb2.WatchSelfModelRequest(subject=BIG), metadata=md, timeout=30
        )
        try:
            first = next(stream).snapshot
        finally:
            stream.cancel()
        assert first.rollups_omitted == whole.rollups_omitted


def test_another_tenants_governance_and_withdrawals_tell_an_operator_nothing_of_that_tenant(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    file = tmp_path / "tokens.toml"
    made = {
        name: tokens.create(file, agent, tenant, role, ["*"], ["*"])[0]
        for name, agent, tenant, role in (
            ("root", "root_ops", "acme", "cluster_operator"),
            ("acme", "acme_ops", "acme", "operator"),
            ("globex", "globex_ops", "globex", "operator"),
            ("agent", "gag", "globex", "agent"),
        )
    }
    node = start_node("n1", "--tokens", str(file))

    def md(who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {made[who]}"),)

    with grpc.insecure_channel(node.address) as channel:
        models = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        spy = model_pb2.Subject(tenant="globex", kind=USER, id="gu1")
        observe = selfmodel_pb2.ObserveRequest(
            subject=spy, context="work", key="role", statement="analyst", confidence=0.9
        )
        models.Observe(observe, metadata=md("agent"))
        admin.SetReliability(
            admin_pb2.SetReliabilityRequest(source="gag", reliability=0.5), metadata=md("root")
        )
        admin.WithdrawSource(
            admin_pb2.WithdrawSourceRequest(tenant="globex", source="gag"), metadata=md("globex")
        )

        seen = admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=md("globex"))
        actions = [admin_pb2.AuditAction.Name(e.action) for e in seen.entries]
        assert actions == ["AUDIT_ACTION_SET_RELIABILITY", "AUDIT_ACTION_WITHDRAW_SOURCE"]
        assert "acme" not in str(seen)  # the cluster operator acted for the cluster
        assert seen.entries[0].actor_tenant == "_cluster"
        own = admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=md("acme"))
        assert [(e.actor, e.actor_tenant) for e in own.entries] == [("root_ops", "acme")]

        # The tenant's withdrawals are the node's own subject: neither listed nor counted.
        listed = models.ListSubjects(selfmodel_pb2.ListSubjectsRequest(), metadata=md("globex"))
        assert [s.id for s in listed.subjects] == ["gu1"]
        status = admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=md("globex"))
        assert status.subjects == 1


def test_explain_of_an_organizations_slot_held_by_thousands_is_bounded_and_counted(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    file = tmp_path / "tokens.toml"
    hr, _ = tokens.create(file, "hr_agent", "acme", "agent", ["*"], ["*"], members=True)
    node = start_node("n1", "--tokens", str(file))
    md = (("authorization", f"Bearer {hr}"),)
    users, teams = 2200, 3  # 2,200 holders of one 2,000-character statement: past 4 MiB
    wording = "same " + "y" * 1990
    acme = functools.partial(model_pb2.Subject, tenant="acme")
    o = acme(kind=model_pb2.SUBJECT_KIND_ORG, id="o")
    with grpc.insecure_channel(node.address) as channel:
        models = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for t in range(teams):
            member = acme(kind=TEAM, id=f"t{t}")
            admin.AddMember(admin_pb2.AddMemberRequest(group=o, member=member), metadata=md)
        for u in range(users):
            add = admin_pb2.AddMemberRequest(
                group=acme(kind=TEAM, id=f"t{u % teams}"), member=acme(kind=USER, id=f"u{u}")
            )
            admin.AddMember(add, metadata=md)
        for first in range(0, users, 100):
            writes = [
                selfmodel_pb2.ObserveRequest(
                    subject=acme(kind=USER, id=f"u{u}"),
                    context="work",
                    key="k",
                    statement=wording,
                    confidence=0.9,
                )
                for u in range(first, min(users, first + 100))
            ]
            models.ObserveBatch(selfmodel_pb2.ObserveBatchRequest(observations=writes), metadata=md)

        explain = selfmodel_pb2.ExplainBeliefRequest(subject=o, context="work", key="k")
        reply = models.ExplainBelief(explain, metadata=md, timeout=30)
        assert 0 < reply.holders_omitted < users
        assert len(reply.holders) + reply.holders_omitted == users
        assert [h.user.id for h in reply.holders] == sorted(f"u{u}" for u in range(users))[
            : len(reply.holders)
        ]
        assert reply.ByteSize() <= 2 * 1024 * 1024


def test_a_member_joins_at_most_max_groups_per_member_groups_and_its_writes_stay_cheap(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """Each write of a member moves every group it is in: a member in thousands of teams would
    make each of its writes, under the node's one groups lock, cost thousands of tally moves."""
    file = tmp_path / "tokens.toml"
    hr, _ = tokens.create(file, "hr_agent", "acme", "agent", ["*"], ["*"], members=True)
    node = start_node("n1", "--tokens", str(file))
    most = 100  # the default of max_groups_per_member
    with Client(node.address, token=hr, tenant="acme") as c:
        for t in range(most):
            assert c.add_member(team(f"t{t}"), user("victim")) == "added"
        with pytest.raises(ResourceExhausted) as refused:
            c.add_member(team(f"t{most}"), user("victim"))
        assert refused.value.reason == Reason.MEMBER_GROUPS_EXHAUSTED
        assert refused.value.metadata["setting"] == "max_groups_per_member"
        assert refused.value.metadata["limit"] == str(most)
        assert c.members(team(f"t{most}")).members == ()
        assert c.add_member(team("t0"), user("victim")) == "already_member"  # not a new group
        assert c.remove_member(team("t0"), user("victim")) == "removed"
        assert c.add_member(team(f"t{most}"), user("victim")) == "added"  # room again
        for o in range(most):
            assert c.add_member(org(f"o{o}"), team("t1")) == "added"
        with pytest.raises(ResourceExhausted):
            c.add_member(org(f"o{most}"), team("t1"))  # a team's organizations alike


def test_an_agent_changes_members_only_through_a_node_of_its_tokens_domains(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """A token's domains bound where its agent writes; membership is a write like any other."""
    file = tmp_path / "tokens.toml"
    sales, _ = tokens.create(file, "hr_agent", "acme", "agent", ["*"], ["sales"], members=True)
    ops, _ = tokens.create(file, "acme_ops", "acme", "operator", ["*"], ["sales"])
    node = start_node("n1", "--tokens", str(file), "--domain", "support")
    with (
        Client(node.address, token=sales, tenant="acme") as hr,
        Client(node.address, token=ops, tenant="acme") as operator,
    ):
        with pytest.raises(PermissionDenied) as observed:
            hr.observe(user("u1"), "fifty", confidence=0.9, context="budget", key="amount")
        assert observed.value.reason == Reason.DOMAIN_DENIED
        for change in (hr.add_member, hr.remove_member):
            with pytest.raises(PermissionDenied) as refused:
                change(team("t1"), user("u1"))
            assert refused.value.reason == Reason.DOMAIN_DENIED
        assert operator.members(team("t1")).members == ()
        assert operator.add_member(team("t1"), user("u1")) == "added"  # operators: any node


def test_an_agent_filling_a_teams_belief_slots_cannot_block_its_membership_changes(
    tmp_path: Path,
) -> None:
    """A group's members are the node's own slots of the group subject: they count against
    max_group_members, not against the slots the agents' beliefs fill."""
    file = tmp_path / "tokens.toml"
    hr, _ = tokens.create(file, "hr_agent", "acme", "agent", ["*"], ["*"], members=True)
    slots, most = 5, 20
    limits = {"max_subject_slots": slots, "max_group_members": most}
    with (
        LocalCluster(tmp_path / "c", ("n1",), proxies=False, tokens=file, limits=limits) as c,
        Client(c.address("n1"), token=hr, tenant="acme") as hr_agent,
    ):
        for s in range(slots):
            hr_agent.observe(team("t1"), f"note {s}", confidence=0.9, context="notes", key=f"k{s}")
        with pytest.raises(ResourceExhausted) as full:  # the agent's slots are full
            hr_agent.observe(team("t1"), "one more", confidence=0.9, context="notes", key="k9")
        assert full.value.metadata["setting"] == "max_subject_slots"
        for u in range(most):
            assert hr_agent.add_member(team("t1"), user(f"u{u}")) == "added"
        with pytest.raises(ResourceExhausted) as refused:
            hr_agent.add_member(team("t1"), user(f"u{most}"))
        assert refused.value.reason == Reason.SUBJECT_TOO_LARGE
        assert refused.value.metadata["setting"] == "max_group_members"
        assert f"{most + 1} members" in str(refused.value)
        listed = hr_agent.members(team("t1"), page_size=100).members
        assert sorted(m.id for m in listed) == sorted(f"u{u}" for u in range(most))
        assert hr_agent.remove_member(team("t1"), user("u0")) == "removed"
        assert hr_agent.add_member(team("t1"), user(f"u{most}")) == "added"  # room again
        with pytest.raises(ResourceExhausted) as still:  # and the beliefs stay bounded
            hr_agent.observe(team("t1"), "one more", confidence=0.9, context="notes", key="k9")
        assert still.value.metadata["setting"] == "max_subject_slots"


def test_a_peers_group_past_max_group_members_is_refused_and_the_others_replicate(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """The members' limit holds on the peer side as the agents' limits do: a group a peer with
    a larger limit grew is refused whole, counted, and the stream goes on."""
    cluster = make_cluster(
        ("sales", "support"), proxies=False, node_args={"support": ["--max-group-members", "3"]}
    )
    with cluster.client("sales", "ops") as ops:
        for u in range(5):  # past support's limit only
            assert ops.add_member(team("big"), user(f"u{u}")) == "added"
        assert ops.add_member(team("small"), user("u0")) == "added"

    def members_on_support(group: str) -> list[str]:
        with cluster.client("support", "ops") as reader:
            return sorted(m.id for m in reader.members(team(group)).members)

    wait_until(lambda: members_on_support("small") == ["u0"], "team small on support", 30)

    def refused() -> bool:
        (peer,) = node_status(cluster.address("sales")).peers
        return peer.skipped_subjects == 1

    wait_until(refused, "support refused team big", 30)
    held = members_on_support("big")  # the deltas within the limit, merged one by one
    assert len(held) <= 3 and set(held) <= {f"u{u}" for u in range(5)}, held
    metrics = cluster.nodes["support"].metrics()
    assert 'selfmodel_subject_limit_refused_total{kind="merge",limit="members"}' in metrics
    log = cluster.nodes["support"].log()
    assert "refused to merge a peer's state of acme/team/big" in log, log[-3000:]
    assert "max_group_members" in log
