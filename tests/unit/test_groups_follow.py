"""node.groups.Following on real engines: membership set with Engine.put, members' writes and
forgets, local and merged, move the roll-ups as computed from scratch, and wake the groups'
watches; a node started on a store rebuilds them."""

from __future__ import annotations

from pathlib import Path

from node import listing
from node.engine import Engine
from node.policy import ContextPolicy, PolicyBook
from node.reliability import Learned
from node.rollup import compute_rollup
from node.store import Store
from node.withdrawals import WITHDRAWN, sources_subject
from node.writes import ObservationInput
from sync.delivery import Delta
from sync.members import MEMBERS, member_statement
from sync.observation import Subject, SubjectKind

T = "acme"
TEAM = Subject(T, SubjectKind.TEAM, "t1")
ORG = Subject(T, SubjectKind.ORG, "o1")
U1, U2 = (Subject(T, SubjectKind.USER, f"u{i}") for i in (1, 2))


def engine(tmp_path: Path, name: str) -> Engine:
    return Engine(Store(tmp_path / name, name, fsync=False))


def add(e: Engine, group: Subject, member: Subject) -> None:
    e.put(group, MEMBERS, member.id, member_statement(member), "ops")


def remove(e: Engine, group: Subject, member: Subject) -> None:
    e.put(group, MEMBERS, member.id, None, "ops")


def say(e: Engine, user: Subject, statement: str, source: str = "sales") -> None:
    e.observe(source, [ObservationInput(user, "budget", "amount", statement, 0.9)])


def exchange(a: Engine, b: Engine, subjects: tuple[Subject, ...]) -> None:
    for s in subjects:
        a.merge_remote([Delta(b.state(s))])
        b.merge_remote([Delta(a.state(s))])


def from_scratch(e: Engine, group: Subject) -> object:
    direct = {g: e.groups.members(g) for g in (TEAM, ORG)}
    models = {u: e.model(u).beliefs for u in (U1, U2)}
    return compute_rollup(group, direct, models)


def test_a_members_write_moves_its_teams_and_organizations_rollups_and_wakes_their_watches(
    tmp_path: Path,
) -> None:
    e = engine(tmp_path, "n1")
    add(e, TEAM, U1)
    add(e, ORG, TEAM)
    team_watch, org_watch = e.subscribe(TEAM), e.subscribe(ORG)
    team_watch.changed.clear()
    org_watch.changed.clear()
    say(e, U1, "ten thousand")
    assert team_watch.changed.is_set() and org_watch.changed.is_set()
    rollup = e.groups.rollup(ORG)
    assert (rollup.users, [r.statement for r in rollup.beliefs]) == (1, ["ten thousand"])
    for group in (TEAM, ORG):
        assert e.groups.rollup(group) == from_scratch(e, group)
    say(e, U2, "fifty")  # not a member: nothing moves
    assert e.groups.rollup(TEAM) == from_scratch(e, TEAM)
    remove(e, TEAM, U1)
    assert e.groups.rollup(ORG).users == 0 and e.groups.rollup(TEAM).beliefs == ()


def test_merged_memberships_writes_and_forgets_converge_to_the_rollup_from_scratch(
    tmp_path: Path,
) -> None:
    a, b = engine(tmp_path, "a"), engine(tmp_path, "b")
    subjects = (TEAM, ORG, U1, U2)
    add(a, TEAM, U1)
    add(b, TEAM, U2)
    add(b, ORG, TEAM)
    say(a, U2, "fifty")
    say(b, U1, "ten thousand", "support")
    exchange(a, b, subjects)
    for e in (a, b):
        assert e.groups.rollup(ORG) == from_scratch(e, ORG)
        assert e.groups.rollup(ORG).users == 2
    a.forget(U1)  # out of every group, on every node
    add(b, TEAM, U2)  # a re-add on b, concurrent with the forget: replaces b's own add
    exchange(a, b, subjects)
    for e in (a, b):
        assert e.groups.members(TEAM) == {U2}
        assert e.groups.rollup(TEAM) == from_scratch(e, TEAM)
        assert e.groups.rollup(ORG) == a.groups.rollup(ORG)


def test_a_node_started_on_its_store_rebuilds_its_groups(tmp_path: Path) -> None:
    e = engine(tmp_path, "n1")
    add(e, TEAM, U1)
    add(e, ORG, TEAM)
    say(e, U1, "ten thousand")
    before = e.groups.rollup(ORG)
    e.store.close()
    again = engine(tmp_path, "n1")
    try:
        assert again.groups.rollup(ORG) == before
        assert again.groups.members(TEAM) == {U1}
    finally:
        again.store.close()


def test_reads_never_show_the_members_context(tmp_path: Path) -> None:
    e = engine(tmp_path, "n1")
    add(e, TEAM, U1)
    e.observe("lead", [ObservationInput(TEAM, "goals", "q3", "ship it", 0.9)])
    assert [b.context for b in e.model(TEAM).beliefs] == ["goals"]


def test_listings_never_name_a_nodes_own_subjects_or_contexts(tmp_path: Path) -> None:
    e = engine(tmp_path, "n1")
    own = Subject(T, SubjectKind.ORG, "_sources")
    e.put(own, "_withdrawn", "bot", "withdrawn", "ops")
    add(e, TEAM, U1)
    say(e, U1, "ten thousand")
    store = e.store
    found, _ = listing.subjects_page(store, store.holds_observations, T, None, "", 10)
    assert found == [U1, TEAM]
    assert listing.contexts(e.state(TEAM)) == []


def test_a_new_policy_book_moves_the_rollups_of_the_beliefs_it_moves(tmp_path: Path) -> None:
    e = engine(tmp_path, "n1")
    add(e, TEAM, U1)
    e.observe("sales", [ObservationInput(U1, "budget", "amount", "fifty", 0.7)])
    assert [r.statement for r in e.groups.rollup(TEAM).beliefs] == ["fifty"]  # 0.63 >= 0.5
    watch = e.subscribe(TEAM)
    watch.changed.clear()
    stricter = PolicyBook(contexts={"budget": ContextPolicy(min_confidence=0.7)})
    e.use_policies(stricter)  # the belief is now uncertain: no user holds it
    assert e.groups.rollup(TEAM).beliefs == () and watch.changed.is_set()
    assert e.groups.rollup(TEAM) == from_scratch(e, TEAM)
    e.use_policies(PolicyBook())
    assert [r.statement for r in e.groups.rollup(TEAM).beliefs] == ["fifty"]


def test_a_tenant_wide_withdrawal_of_a_source_moves_the_rollups_of_its_members(
    tmp_path: Path,
) -> None:
    e = engine(tmp_path, "n1")
    add(e, TEAM, U1)
    say(e, U1, "fifty", source="bot")
    assert [r.statement for r in e.groups.rollup(TEAM).beliefs] == ["fifty"]
    e.put(sources_subject(T), WITHDRAWN, "bot", "withdrawn", "ops")  # U1's state is unchanged
    assert e.groups.rollup(TEAM).beliefs == ()
    assert e.groups.rollup(TEAM) == from_scratch(e, TEAM)
    e.put(sources_subject(T), WITHDRAWN, "bot", None, "ops")  # lifted
    assert [r.statement for r in e.groups.rollup(TEAM).beliefs] == ["fifty"]


def test_learned_weights_of_a_tenant_move_the_rollups_of_its_groups_only(tmp_path: Path) -> None:
    e = engine(tmp_path, "n1")
    other_team, other_user = (
        Subject("globex", k, i) for k, i in ((TEAM.kind, "t"), (U1.kind, "u"))
    )
    for group, member in ((TEAM, U1), (other_team, other_user)):
        add(e, group, member)
        e.observe("bot", [ObservationInput(member, "budget", "amount", "fifty", 0.7)])  # 0.63
    low = {("bot", "budget"): Learned("bot", "budget", 0.5, 0, 5)}  # 0.63 x 0.5 < 0.5
    e.use_learned({T: low}, {T: frozenset({"budget"})})
    assert e.groups.rollup(TEAM).beliefs == ()
    assert e.groups.rollup(TEAM) == from_scratch(e, TEAM)
    assert [r.statement for r in e.groups.rollup(other_team).beliefs] == ["fifty"]
