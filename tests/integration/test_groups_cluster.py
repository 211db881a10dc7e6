"""Team and organization roll-ups on a cluster of real node processes: after random membership
changes, member writes on different nodes, removals and forgets, and convergence, every node
serves the same roll-ups, equal to the roll-up computed from scratch (node.rollup) from the
members and the members' models read from the nodes; a team's watch fires on one node when a
member writes on another; Explain on a roll-up lists the members behind it; a policy set on one
node moves the roll-ups on every node, and so does a source withdrawn across the tenant."""

from __future__ import annotations

import datetime as dt
import itertools
import queue
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.client import Client, SelfModelView, holders, org, team, user
from node.resolution import Belief
from node.rollup import GroupRollup, compute_rollup
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from sync.observation import Subject, SubjectKind
from tests.harness import LocalCluster, running_cluster
from tests.nodes import NEVER_FADE

NODES = ("east", "west")
USERS = ("u0", "u1", "u2")
TEAMS = ("t0", "t1")
ORG = "o0"
STATEMENTS = ("ten thousand", "Ten thousand.", "fifty")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
WAIT_S = 30.0

_tenants = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("groups"), NODES, proxies=False, policies=NEVER_FADE
    ) as made:
        yield made


def _belief(b: object) -> Belief:
    """A read belief as node.resolution's (what compute_rollup takes)."""
    changed_ms = (b.changed_at - EPOCH) // dt.timedelta(milliseconds=1)  # type: ignore[attr-defined]
    return Belief(
        b.context,  # type: ignore[attr-defined]
        b.key,  # type: ignore[attr-defined]
        b.statement,  # type: ignore[attr-defined]
        b.confidence,  # type: ignore[attr-defined]
        (),
        (),
        b.uncertain,  # type: ignore[attr-defined]
        changed_ms,
        b.policy,  # type: ignore[attr-defined]
    )


def _rows(view: SelfModelView) -> list[tuple[object, ...]]:
    return [
        (r.context, r.key, r.statement, r.holders, r.share, r.mean_confidence, r.changed_at)
        for r in view.rollups
    ]


def _expected(rollup: GroupRollup) -> list[tuple[object, ...]]:
    return [
        (r.context, r.key, r.statement, r.holders, r.share, r.mean_confidence,
         EPOCH + dt.timedelta(milliseconds=r.changed_ms))
        for r in rollup.beliefs
    ]  # fmt: skip


def _members(client: Client, group: object) -> set[Subject]:
    return set(client.members(group).members)  # type: ignore[arg-type]


# kind, node, user, team, statement, confidence
ops = st.lists(
    st.tuples(
        st.sampled_from(["join", "join", "leave", "team joins", "team leaves", "say", "say",
                         "say", "forget", "join", "forget team"]),
        st.integers(0, len(NODES) - 1),
        st.integers(0, len(USERS) - 1),
        st.integers(0, len(TEAMS) - 1),
        st.integers(0, len(STATEMENTS) - 1),
        st.sampled_from([0.5, 0.7, 0.9]),
    ),
    min_size=8,
    max_size=16,
)  # fmt: skip


@settings(
    max_examples=8,
    derandomize=True,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(script=ops)
def test_every_node_serves_the_same_rollups_equal_to_the_rollups_from_scratch(
    cluster: LocalCluster, script: list[tuple[str, int, int, int, int, float]]
) -> None:
    tenant = f"g{next(_tenants)}"  # each example in a tenant of its own
    clients = [cluster.client(n, "ops", tenant) for n in NODES]
    try:
        forgotten_at: dict[str, int] = {}  # user or team -> the step of its last forget
        joined_at: dict[str, int] = {}  # user or team -> the step of its last add to a group
        filled_at: dict[str, int] = {}  # team -> the step of its last add of a user
        # a start every script moves from: each user in a team, both teams in the organization,
        # each user holding a statement, written on alternate nodes
        for i, who in enumerate(USERS):
            clients[i % 2].add_member(team(TEAMS[i % 2]), user(who))
            clients[(i + 1) % 2].observe(
                user(who), STATEMENTS[i % 3], confidence=0.9, context="budget", key="amount"
            )
            joined_at[who] = filled_at[TEAMS[i % 2]] = -1
        for i, tm in enumerate(TEAMS):
            clients[i % 2].add_member(org(ORG), team(tm))
            joined_at[tm] = -1
        for step, (kind, n, u, t, s, confidence) in enumerate(script):
            c, who, tm = clients[n], USERS[u], TEAMS[t]
            match kind:
                case "join":
                    c.add_member(team(tm), user(who))
                    joined_at[who] = filled_at[tm] = step
                case "leave":
                    c.remove_member(team(tm), user(who))
                case "team joins":
                    c.add_member(org(ORG), team(tm))
                    joined_at[tm] = step
                case "team leaves":
                    c.remove_member(org(ORG), team(tm))
                case "say":
                    c.observe(user(who), STATEMENTS[s], confidence=confidence, context="budget",
                              key="amount")  # fmt: skip
                case "forget":
                    c.forget(user(who))
                    forgotten_at[who] = step
                case _:
                    c.forget(team(tm))
                    forgotten_at[tm] = step
        cluster.wait_converged(WAIT_S)
        groups = [Subject(tenant, SubjectKind.TEAM, t) for t in TEAMS]
        groups.append(Subject(tenant, SubjectKind.ORG, ORG))
        first = clients[0]
        direct = {g: _members(first, g) for g in groups}
        models = {
            Subject(tenant, SubjectKind.USER, u): [
                _belief(b) for b in first.self_model(user(u), include_uncertain=True).all_beliefs
            ]
            for u in USERS
        }
        for g in groups:
            expected = compute_rollup(g, direct, models)
            for c in clients:
                assert _members(c, g) == direct[g]
                view = c.self_model(g)
                assert view.group_users == expected.users
                assert _rows(view) == _expected(expected), (g, c)
        # a user (team) forgotten after its last add is in no team (organization), on any
        # node; a team forgotten after its last add of a user has no member
        for who, step in forgotten_at.items():
            kind = SubjectKind.TEAM if who in TEAMS else SubjectKind.USER
            gone = Subject(tenant, kind, who)
            if joined_at.get(who, -1) < step:
                assert all(gone not in members for members in direct.values())
            if kind == SubjectKind.TEAM and filled_at.get(who, -1) < step:
                assert direct[gone] == set()
    finally:
        for c in clients:
            c.close()


def test_a_members_write_on_another_node_fires_the_teams_watch_and_explain_lists_it(
    cluster: LocalCluster,
) -> None:
    tenant = "watched"
    with (
        cluster.client("east", "ops", tenant) as east,
        cluster.client("west", "sales", tenant) as west,
    ):
        east.add_member(team("t"), user("u1"))
        east.add_member(team("t"), user("u2"))
        cluster.wait_converged(WAIT_S)
        views: queue.Queue[SelfModelView | BaseException] = queue.Queue()

        def consume() -> None:
            try:
                for n, view in enumerate(east.watch(team("t"), timeout_s=WAIT_S)):
                    views.put(view)
                    if view.rollups or n >= 10:
                        return
            except BaseException as exc:
                views.put(exc)

        watcher = threading.Thread(target=consume, daemon=True)
        watcher.start()
        first = views.get(timeout=WAIT_S)
        assert not isinstance(first, BaseException) and first.rollups == ()
        west.observe(user("u2"), "fifty", confidence=0.9, context="budget", key="amount")
        deadline = time.monotonic() + WAIT_S
        while True:
            item = views.get(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(item, BaseException):
                raise item
            if item.rollups:
                break
            assert time.monotonic() < deadline, "the team's watch did not fire"
        assert [(r.statement, r.holders) for r in item.rollups] == [("fifty", 1)]
        watcher.join(WAIT_S)
        assert not watcher.is_alive()
        why = east.explain(team("t"), "budget", "amount")
        assert [(h.user.id, h.statement, h.confidence) for h in holders(why)] == [
            ("u2", "fifty", pytest.approx(0.81))
        ]


def test_a_policy_set_on_one_node_moves_the_rollups_on_every_node(cluster: LocalCluster) -> None:
    tenant = "governed"
    with (
        cluster.client("east", "ops", tenant) as east,
        cluster.client("west", "ops", tenant) as west,
        grpc.insecure_channel(cluster.address("east")) as channel,
    ):
        east.add_member(team("t"), user("u1"))
        west.observe(user("u1"), "fifty", confidence=0.7, context="mood", key="k")  # 0.63
        cluster.wait_converged(WAIT_S)
        for c in (east, west):
            assert [r.statement for r in c.self_model(team("t")).rollups] == ["fifty"]
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        field = admin_pb2.SETTING_FIELD_MIN_CONFIDENCE
        md = (("x-agent-id", "ops"),)
        # u1's belief turns uncertain under the new minimum
        admin.SetSetting(
            admin_pb2.SetSettingRequest(context="mood", field=field, number=0.7), metadata=md
        )
        try:
            cluster.wait_converged(WAIT_S)
            for c in (east, west):
                assert c.self_model(team("t")).rollups == ()
        finally:
            admin.ClearSetting(
                admin_pb2.ClearSettingRequest(context="mood", field=field), metadata=md
            )
        cluster.wait_converged(WAIT_S)
        for c in (east, west):
            assert [r.statement for r in c.self_model(team("t")).rollups] == ["fifty"]


def test_a_source_withdrawn_on_one_node_leaves_the_rollups_of_every_node(
    cluster: LocalCluster,
) -> None:
    tenant = "withdrawing"
    with (
        cluster.client("east", "ops", tenant) as east,
        cluster.client("west", "bot", tenant) as west,
        grpc.insecure_channel(cluster.address("east")) as channel,
    ):
        east.add_member(team("t"), user("u1"))
        west.observe(user("u1"), "fifty", confidence=0.9, context="mood", key="k")  # by "bot"
        cluster.wait_converged(WAIT_S)
        for c in (east, west):
            assert [r.statement for r in c.self_model(team("t")).rollups] == ["fifty"]
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        withdraw = admin_pb2.WithdrawSourceRequest(tenant=tenant, source="bot")
        admin.WithdrawSource(withdraw, metadata=(("x-agent-id", "ops"),), timeout=10)
        cluster.wait_converged(WAIT_S)
        for c in (east, west):
            assert c.self_model(team("t")).rollups == ()


def test_a_team_forgotten_while_members_join_on_another_node_converges_to_one_rollup(
    cluster: LocalCluster,
) -> None:
    """East forgets a team while west adds users to it and they write: wherever the adds fall
    against the forget, both nodes end with the same members, and the roll-up counts exactly
    the members (each holding its statement), never a member the forget erased."""
    tenant, joins = "raced", 60
    with (
        cluster.client("east", "ops", tenant) as east,
        cluster.client("west", "ops", tenant) as west,
    ):
        for i in range(joins):
            west.observe(user(f"u{i}"), "fifty", confidence=0.9, context="budget", key="amount")
        east.add_member(team("t"), user("early"))
        cluster.wait_converged(WAIT_S)
        started = threading.Event()
        failed: list[BaseException] = []

        def join() -> None:
            try:
                with cluster.client("west", "ops", tenant) as adder:
                    for i in range(joins):
                        adder.add_member(team("t"), user(f"u{i}"))
                        if i == joins // 3:
                            started.set()
            except BaseException as exc:  # reported by the test's thread
                failed.append(exc)
                started.set()

        adder = threading.Thread(target=join, daemon=True)
        adder.start()
        assert started.wait(WAIT_S)
        east.forget(team("t"))
        adder.join(WAIT_S)
        assert not adder.is_alive() and not failed, failed
        cluster.wait_converged(WAIT_S)
        members = _members(east, team("t"))
        assert members == _members(west, team("t"))
        assert Subject(tenant, SubjectKind.USER, "early") not in members
        assert Subject(tenant, SubjectKind.USER, "u0") not in members  # added before the forget
        for c in (east, west):
            view = c.self_model(team("t"))
            assert view.group_users == len(members)
            expected = [("fifty", len(members))] if members else []
            assert [(r.statement, r.holders) for r in view.rollups] == expected
