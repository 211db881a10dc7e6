"""The first group reads after a restart, on real node processes, with the members' held
records kept on disk (node.heldrecords): a node restarted on a store whose members did not
change resolves next to none of their models to load its groups; members changed on a peer
while it was down (merged at start-up from the peer's delta stream) and a node killed with
kill -9 while it loads its groups and writes records are resolved again; and every group's
roll-up is the one from scratch (test_groups_restart's reference)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.client import org, team, user
from selfmodel.v1 import model_pb2, selfmodel_pb2
from tests.harness import LocalCluster, NodeProcess, running_cluster
from tests.integration.test_groups_restart import (
    NODES,
    ORGS,
    PER_TEAM,
    STATEMENTS,
    TEAMS,
    USERS,
    T,
    _check_from_scratch,
    _groups,
    _restart,
)
from tests.nodes import NEVER_FADE

FOLLOWED = len(TEAMS) * PER_TEAM  # the users in a team


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("records"), NODES, proxies=False, policies=NEVER_FADE
    ) as made:
        yield made


def _counter(node: NodeProcess, name: str, **labels: str) -> float:
    """A counter's value on ``node`` (0 when it has not counted yet)."""
    for family in text_string_to_metric_families(node.metrics()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _resolved(node: NodeProcess) -> float:
    """Models the node resolved from a whole state since it started (none is kept then): a
    group's read resolves the group's own model too."""
    return _counter(node, "selfmodel_resolutions_total", cause="whole")


def _say(i: int, u: str, statement: str | None = None) -> selfmodel_pb2.ObserveRequest:
    return selfmodel_pb2.ObserveRequest(
        subject=model_pb2.Subject(tenant=T, kind=model_pb2.SUBJECT_KIND_USER, id=u),
        context="budget", key="amount", statement=statement or STATEMENTS[i % 4],
        confidence=(0.6, 0.9)[i % 2],
    )  # fmt: skip


def _setup(cluster: LocalCluster) -> None:
    """test_groups_restart's teams and organizations, written through both nodes."""
    clients = [cluster.client(n, "ops", T) for n in NODES]
    try:
        said = [_say(i, u) for i, u in enumerate(USERS)]
        for start in range(0, len(said), 100):
            clients[start // 100 % 2].observe_batch(said[start : start + 100])
        for i, u in enumerate(USERS[:FOLLOWED]):
            clients[i % 2].add_member(team(TEAMS[i // PER_TEAM]), user(u))
        for o, teams in ORGS.items():
            for t in teams:
                clients[len(t) % 2].add_member(org(o), team(t))
        cluster.wait_converged()
    finally:
        for c in clients:
            c.close()


def _first_reads(cluster: LocalCluster) -> None:
    """Every group read first on every node, the organizations first, then checked against
    the roll-up from scratch (which reads every user's model: after the count is taken)."""
    clients = [cluster.client(n, "ops", T) for n in NODES]
    try:
        first = {(n, g): c.self_model(g) for g in _groups() for n, c in enumerate(clients)}
        _check_from_scratch(clients, first)
    finally:
        for c in clients:
            c.close()


def _settled_from_scratch(cluster: LocalCluster, timeout_s: float = 30.0) -> None:
    """``_first_reads``' check once the merges under way have moved the roll-ups: a merge's
    digest shows (``wait_converged``) before its commit's listeners have moved them, so a read
    right after may precede them; a roll-up still not the one from scratch after
    ``timeout_s`` fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _first_reads(cluster)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _loaded(node: NodeProcess, timeout_s: float = 60.0) -> None:
    """Waits for the node's background load of its groups to end (its log line)."""
    deadline = time.monotonic() + timeout_s
    while "group(s) loaded in" not in node.log():
        assert time.monotonic() < deadline, f"node {node.name} did not load its groups"
        time.sleep(0.1)


def test_a_restarted_node_resolves_only_the_members_changed_while_it_was_down(
    cluster: LocalCluster,
) -> None:
    _setup(cluster)
    _restart(cluster)  # a clean stop writes every member's record
    clients = [cluster.client(n, "ops", T) for n in NODES]
    try:
        for c in clients:
            for g in _groups():
                c.self_model(g)
    finally:
        for c in clients:
            c.close()
    for node in cluster.nodes.values():
        _loaded(node)
        assert _resolved(node) < FOLLOWED / 20, node.name  # of 720 members
        assert _counter(node, "selfmodel_rollup_members_total", how="stored") >= FOLLOWED
    _first_reads(cluster)

    west, east = cluster.nodes["west"], cluster.nodes["east"]
    with cluster.client("east", "ops", T) as c:
        c.forget(user("u7"))  # west purges it, and its record with it, before it stops
    cluster.wait_converged()
    west.stop()
    changed = USERS[:40:4]  # ten members, in the first team
    with cluster.client("east", "ops", T) as c:
        c.observe_batch([_say(i, u, "a million") for i, u in enumerate(changed)])
        c.add_member(team(TEAMS[-1]), user(USERS[-1]))  # not in a team before
        c.remove_member(team(TEAMS[0]), user("u1"))
    west.launch()  # merges east's changes from its delta stream at start-up
    west.await_started()
    cluster.wait_converged()
    with cluster.client("west", "ops", T) as c:
        for g in _groups():
            c.self_model(g)
    _loaded(west)
    # Each group's own model, and the members changed (u7 forgotten, u721 joining a team).
    assert _resolved(west) <= len(_groups()) + len(changed) + 2
    _first_reads(cluster)
    assert east.running


def test_a_node_killed_while_it_loads_its_groups_serves_them_exact_after_it_starts_again(
    cluster: LocalCluster,
) -> None:
    _setup(cluster)
    _restart(cluster)
    west = cluster.nodes["west"]
    west.stop()
    with cluster.client("east", "ops", T) as c:  # half the members' records go stale
        stale = USERS[:FOLLOWED:2]
        for start in range(0, len(stale), 100):
            c.observe_batch([_say(i + 1, u) for i, u in enumerate(stale[start : start + 100])])
    west.launch()
    west.await_started()
    reading = threading.Thread(target=_read_org_quietly, args=(cluster,), daemon=True)
    reading.start()
    deadline = time.monotonic() + 30  # until its load is under way: it resolves the stale
    while _resolved(west) <= len(_groups()):  # more models than the groups' own
        assert time.monotonic() < deadline, "west never began loading its groups"
        time.sleep(0.01)
    west.kill()  # kill -9 while it loads, resolving members and writing their records
    reading.join(30)
    west.launch()
    west.await_started()
    cluster.wait_converged()
    _settled_from_scratch(cluster)
    west.stop()  # and once more, cleanly: what it kept since serves its next start
    west.start()
    with cluster.client("west", "ops", T) as c:
        for g in _groups():
            c.self_model(g)
    _loaded(west)
    assert _resolved(west) < FOLLOWED / 20
    _first_reads(cluster)


def _read_org_quietly(cluster: LocalCluster) -> None:
    """West's first read of an organization, which its death may cut short."""
    try:
        with cluster.client("west", "ops", T) as c:
            c.self_model(org("o0"))
    except Exception:  # the node was killed under it
        return
