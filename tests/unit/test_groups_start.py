"""A node's groups at start (node.groups): an engine opened on a store of teams and organizations
resolves no member's model until a group is read (or every group loaded), and what it serves
then, however memberships, writes and forgets came in meanwhile, is the roll-up from scratch.
The store finds its groups without reading the users' keys (Store.group_subjects)."""

from __future__ import annotations

import threading
from pathlib import Path

from node.engine import Engine
from node.rollup import GroupRollup, compute_rollup
from node.store import Store
from node.writes import ObservationInput
from sync.members import MEMBERS, is_group, member_statement
from sync.observation import Subject, SubjectKind

T = "acme"
TEAM, OTHER = Subject(T, SubjectKind.TEAM, "t1"), Subject(T, SubjectKind.TEAM, "t2")
ORG = Subject(T, SubjectKind.ORG, "o1")
USERS = tuple(Subject(T, SubjectKind.USER, f"u{i}") for i in range(6))
GROUPS = (TEAM, OTHER, ORG)


def engine(tmp_path: Path, name: str = "n1") -> Engine:
    return Engine(Store(tmp_path / name, name, fsync=False))


def add(e: Engine, group: Subject, member: Subject) -> None:
    e.put(group, MEMBERS, member.id, member_statement(member), "ops")


def say(e: Engine, user: Subject, statement: str, source: str = "sales") -> None:
    e.observe(source, [ObservationInput(user, "budget", "amount", statement, 0.9)])


def from_scratch(e: Engine, group: Subject) -> GroupRollup:
    direct = {g: e.groups.members(g) for g in GROUPS}
    models = {u: e.model(u).beliefs for u in USERS}
    return compute_rollup(group, direct, models)


def stored(tmp_path: Path) -> dict[Subject, GroupRollup]:
    """A store of two teams (three users each, all holding a belief), the first in the
    organization; the roll-ups its engine served before it closed."""
    e = engine(tmp_path)
    for i, u in enumerate(USERS):
        add(e, TEAM if i < 3 else OTHER, u)
        say(e, u, ("ten thousand", "fifty")[i % 2])
    add(e, ORG, TEAM)
    served = {g: e.groups.rollup(g) for g in GROUPS}
    e.store.close()
    return served


def test_a_node_started_on_a_store_of_groups_resolves_no_model_until_a_group_is_read(
    tmp_path: Path,
) -> None:
    before = stored(tmp_path)
    again = engine(tmp_path)
    try:
        assert len(again.snapshots) == 0  # no member's model resolved at start
        assert again.groups.rollup(ORG) == before[ORG]  # first read: its team loaded for it
        assert len(again.snapshots) == 3  # that team's users only
        assert again.groups.rollup(OTHER) == before[OTHER]
        assert again.groups.groups_of(USERS[0]) == {TEAM}  # every group loaded for it
        assert again.groups.complete.is_set()
        for g in GROUPS:
            assert again.groups.rollup(g) == before[g] == from_scratch(again, g)
    finally:
        again.store.close()


def test_changes_before_a_groups_first_read_are_in_it(tmp_path: Path) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:
        say(e, USERS[0], "fifty")  # a member of a team not loaded yet
        add(e, TEAM, USERS[4])  # the team's memberships change: followed from the change
        say(e, USERS[4], "a million")
        e.forget(USERS[1])  # leaves its team
        add(e, ORG, OTHER)  # the organization's new team, stored but not loaded
        say(e, USERS[5], "ten thousand", "support")
        served = {g: e.groups.rollup(g) for g in (ORG, OTHER, TEAM)}  # the organization first
        for g, rollup in served.items():
            assert rollup == from_scratch(e, g), g
        assert served[ORG].users == 5  # t1: u0, u2, u4 and t2: u3, u4, u5, u4 once
    finally:
        e.store.close()


def test_groups_loaded_while_members_write_and_join_equal_the_rollups_from_scratch(
    tmp_path: Path,
) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:
        loader = threading.Thread(target=e.groups.load_every)
        loader.start()
        for step in range(60):
            user = USERS[step % len(USERS)]
            if step % 7 == 0:
                add(e, (TEAM, OTHER)[step % 2], user)
            elif step % 11 == 0:
                e.put((TEAM, OTHER)[step % 2], MEMBERS, user.id, None, "ops")
            else:
                say(e, user, ("ten thousand", "fifty", "nothing")[step % 3])
        loader.join(30)
        assert not loader.is_alive() and e.groups.complete.is_set()
        for g in GROUPS:
            assert e.groups.rollup(g) == from_scratch(e, g), g
    finally:
        e.store.close()


def test_the_store_lists_every_tenants_groups_and_no_user(tmp_path: Path) -> None:
    e = engine(tmp_path)
    try:
        for tenant in ("a", "ab", "b", "b_2"):
            for kind in SubjectKind:
                for i in range(3):
                    e.put(Subject(tenant, kind, f"s{i}"), "notes", "k", "v", "ops")
        store = e.store
        found = store.group_subjects()
        assert found == [s for s in store.subjects() if is_group(s)]
        assert len(found) == 4 * 2 * 3
    finally:
        e.store.close()
