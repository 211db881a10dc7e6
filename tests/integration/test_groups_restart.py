"""Roll-ups after a restart, on real node processes: a node serves before it has loaded its
groups (node.groups), and the first read of every group on every restarted node, the
organizations first (read while the node still loads its teams, a few hundred users' models),
is exact and complete: equal to the roll-up from scratch, from the members and the members'
models the nodes serve; so are the reads after members write and join while the nodes load."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from federation.client import Client, SelfModelView, org, team, user
from node.rollup import compute_rollup
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.observation import Subject, SubjectKind
from tests.harness import LocalCluster, running_cluster
from tests.integration.test_groups_cluster import _belief, _expected, _members, _rows
from tests.nodes import NEVER_FADE

NODES = ("east", "west")
T = "acme"
TEAMS = tuple(f"t{i}" for i in range(12))
ORGS = {"o0": TEAMS[:8], "o1": TEAMS[4:]}  # overlapping: t4 to t7 in both
PER_TEAM = 60
USERS = tuple(f"u{i}" for i in range(len(TEAMS) * PER_TEAM + 2))  # the last two in no team
STATEMENTS = ("ten thousand", "Ten thousand.", "fifty", "a million")


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("restart"), NODES, proxies=False, policies=NEVER_FADE
    ) as made:
        yield made


def _groups() -> list[Subject]:
    """Organizations first: their first read loads their teams."""
    found = [Subject(T, SubjectKind.ORG, o) for o in ORGS]
    return found + [Subject(T, SubjectKind.TEAM, t) for t in TEAMS]


def _restart(cluster: LocalCluster) -> None:
    for node in cluster.nodes.values():
        node.stop()
    for node in cluster.nodes.values():
        node.launch()  # together: each asks the other to vouch for its previous run
    for node in cluster.nodes.values():
        node.await_started()


def _check_from_scratch(
    clients: list[Client], first_reads: dict[tuple[int, Subject], SelfModelView]
) -> None:
    """Every group's roll-up on every node, ``first_reads`` among them, against the roll-up
    from scratch of the members and models the first node serves."""
    groups = _groups()
    direct = {g: _members(clients[0], g) for g in groups}
    models = {
        Subject(T, SubjectKind.USER, u): [
            _belief(b) for b in clients[0].self_model(user(u), include_uncertain=True).all_beliefs
        ]
        for u in USERS
    }
    for g in groups:
        expected = compute_rollup(g, direct, models)
        assert expected.users > 0, g
        for n, c in enumerate(clients):
            assert _members(c, g) == direct[g]
            for view in (first_reads.get((n, g)), c.self_model(g)):
                if view is not None:
                    assert view.group_users == expected.users, (g, NODES[n])
                    assert _rows(view) == _expected(expected), (g, NODES[n])


def test_every_groups_first_read_after_a_restart_is_the_rollup_from_scratch(
    cluster: LocalCluster,
) -> None:
    clients = [cluster.client(n, "ops", T) for n in NODES]
    try:
        said = [
            selfmodel_pb2.ObserveRequest(
                subject=model_pb2.Subject(tenant=T, kind=model_pb2.SUBJECT_KIND_USER, id=u),
                context="budget", key="amount", statement=STATEMENTS[i % 4],
                confidence=(0.6, 0.9)[i % 2],
            )
            for i, u in enumerate(USERS)
        ]  # fmt: skip
        for start in range(0, len(said), 100):
            clients[start // 100 % 2].observe_batch(said[start : start + 100])
        for i, u in enumerate(USERS[: len(TEAMS) * PER_TEAM]):
            clients[i % 2].add_member(team(TEAMS[i // PER_TEAM]), user(u))
        for o, teams in ORGS.items():
            for t in teams:
                clients[len(t) % 2].add_member(org(o), team(t))
        cluster.wait_converged()
    finally:
        for c in clients:
            c.close()

    _restart(cluster)
    clients = [cluster.client(n, "ops", T) for n in NODES]
    try:
        first = {(n, g): c.self_model(g) for g in _groups() for n, c in enumerate(clients)}
        _check_from_scratch(clients, first)
    finally:
        for c in clients:
            c.close()

    _restart(cluster)
    clients = [cluster.client(n, "ops", T) for n in NODES]
    try:  # members write and join while the nodes load their groups
        clients[0].observe(user("u0"), "fifty", confidence=0.9, context="budget", key="amount")
        clients[1].add_member(team(TEAMS[-1]), user(USERS[-1]))
        clients[1].observe(
            user(USERS[-1]), "a million", confidence=0.8, context="budget", key="amount"
        )
        clients[0].remove_member(team(TEAMS[0]), user("u1"))
        clients[1].forget(user("u7"))
        cluster.wait_converged()
        _check_from_scratch(clients, {})
    finally:
        for c in clients:
            c.close()
