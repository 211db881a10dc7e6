"""Held records (node.heldrecords, node.heldkeep) on real RocksDB stores: an engine opened again
on a store whose members did not change loads its groups without resolving a member's model,
and whatever changed meanwhile (a member's write, a join, a forget, another book, a record cut
short) is resolved again, so every roll-up served equals the one from scratch."""

from __future__ import annotations

import threading
from pathlib import Path

from node import metrics
from node.engine import Engine
from node.heldrecords import Record, bound, decode, encode, fingerprint, valid
from node.policy import ContextPolicy, PolicyBook
from node.reads import ModelView
from node.rollup import GroupRollup, Held, compute_rollup
from node.store import Store
from node.writes import ObservationInput
from sync.members import MEMBERS, member_statement
from sync.observation import Subject, SubjectKind

T = "acme"
TEAMS = tuple(Subject(T, SubjectKind.TEAM, f"t{i}") for i in range(3))
ORG = Subject(T, SubjectKind.ORG, "o1")
PER_TEAM = 8
USERS = tuple(Subject(T, SubjectKind.USER, f"u{i}") for i in range(len(TEAMS) * PER_TEAM))
GROUPS = (ORG, *TEAMS)  # the organization first: its read loads its teams


def engine(tmp_path: Path, policies: PolicyBook | None = None) -> Engine:
    return Engine(Store(tmp_path / "n1", "n1", fsync=False), policies)


def add(e: Engine, group: Subject, member: Subject) -> None:
    e.put(group, MEMBERS, member.id, member_statement(member), "ops")


def say(e: Engine, user: Subject, statement: str, confidence: float = 0.9) -> None:
    e.observe("sales", [ObservationInput(user, "budget", "amount", statement, confidence)])


def whole_resolutions() -> float:
    """Models resolved from their whole state since the process began (a cold read)."""
    return metrics.RESOLUTIONS.labels("whole")._value.get()


def from_scratch(e: Engine, group: Subject) -> GroupRollup:
    direct = {g: e.groups.members(g) for g in GROUPS}
    models = {u: e.model(u).beliefs for u in USERS}
    return compute_rollup(group, direct, models)


def read_all(e: Engine) -> tuple[dict[Subject, GroupRollup], float]:
    """Every group's roll-up, the organization first, and the models it resolved."""
    before = whole_resolutions()
    served = {g: e.groups.rollup(g) for g in GROUPS}
    return served, whole_resolutions() - before


def stored(tmp_path: Path) -> None:
    """Three teams of eight users, each with a belief (some uncertain: 0.4 is below the default
    minimum), all three in the organization; closed before any group was read again."""
    e = engine(tmp_path)
    for i, u in enumerate(USERS):
        add(e, TEAMS[i // PER_TEAM], u)
        say(e, u, ("ten thousand", "Fifty.", "a million")[i % 3], (0.9, 0.7, 0.4)[i % 3])
    for t in TEAMS:
        add(e, ORG, t)
    e.store.close()


def test_a_store_reopened_unchanged_loads_its_groups_without_resolving_a_member(
    tmp_path: Path,
) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:  # its first load resolves every member, and keeps what each contributes
        first, resolved = read_all(e)
        assert resolved >= len(USERS)
    finally:
        e.store.close()
    e = engine(tmp_path)
    try:
        again, resolved = read_all(e)
        assert resolved == 0
        assert len(e.snapshots) == 0  # not one member's model was needed
        for g in GROUPS:
            assert again[g] == first[g] == from_scratch(e, g), g
    finally:
        e.store.close()


def test_members_changed_while_the_store_was_closed_are_resolved_again(tmp_path: Path) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:
        read_all(e)
        say(e, USERS[0], "a million")  # its record is stale now (no checkpoint before close)
        add(e, TEAMS[1], USERS[0])  # in a second team: it enters the organization once
        e.forget(USERS[5])  # out of its team
        say(e, USERS[5], "fifty")
        e.put(TEAMS[2], MEMBERS, USERS[20].id, None, "ops")  # leaves its team
    finally:
        e.store.close()  # as a crash would leave it: no checkpoint of what changed
    e = engine(tmp_path)
    try:
        served, resolved = read_all(e)
        assert resolved == 2  # u0 and u5 (its add is still stored): nobody else changed
        for g in GROUPS:
            assert served[g] == from_scratch(e, g), g
        assert served[ORG].users == len(USERS) - 2  # u5 forgotten, u20 gone
    finally:
        e.store.close()


def test_another_book_makes_every_record_stale(tmp_path: Path) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:
        read_all(e)
    finally:
        e.store.close()
    strict = PolicyBook(default=ContextPolicy(min_confidence=0.8))  # 0.7 is uncertain now
    e = engine(tmp_path, strict)
    try:
        served, resolved = read_all(e)
        assert resolved >= len(USERS)
        for g in GROUPS:
            assert served[g] == from_scratch(e, g), g
        assert {r.statement for r in served[ORG].beliefs} == {"ten thousand"}
    finally:
        e.store.close()
    e = engine(tmp_path, strict)  # and the records made under it serve it
    try:
        again, resolved = read_all(e)
        assert resolved == 0 and again == served
    finally:
        e.store.close()


def test_a_record_cut_short_or_for_another_state_is_resolved_again(tmp_path: Path) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:
        read_all(e)
        other = e.store.held_records([USERS[1]])[0]
        assert other is not None
        e.store.write_held_records([(USERS[0], b"\x00" * 40), (USERS[2], other)])
    finally:
        e.store.close()
    e = engine(tmp_path)
    try:
        served, resolved = read_all(e)
        assert resolved == 2
        for g in GROUPS:
            assert served[g] == from_scratch(e, g), g
    finally:
        e.store.close()


def test_a_forget_deletes_the_members_record_from_the_store(tmp_path: Path) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    try:
        say(e, USERS[3], "the secret amount")
        read_all(e)
        assert b"the secret amount" in (e.store.held_records([USERS[3]])[0] or b"")
        e.forget(USERS[3])
        e.groups.checkpoint()
        assert e.store.held_records([USERS[3]]) == [None]
        assert not any(b"the secret amount" in v for _, v in e.store.scan("meta", limit=10_000))
    finally:
        e.store.close()


def test_concurrent_first_reads_of_a_group_share_one_load(tmp_path: Path) -> None:
    stored(tmp_path)
    e = engine(tmp_path)
    models: list[Subject] = []
    read_model = e.model

    def counted(subject: Subject, positions: None = None) -> ModelView:
        models.append(subject)
        return read_model(subject, positions)

    e.model = counted  # type: ignore[method-assign]
    try:
        readers = [threading.Thread(target=e.groups.rollup, args=(ORG,)) for _ in range(4)]
        for r in readers:
            r.start()
        for r in readers:
            r.join(30)
        assert not any(r.is_alive() for r in readers)
        assert sorted(models) == sorted(USERS)  # each member's model once, by one of them
        assert e.groups.rollup(ORG) == from_scratch(e, ORG)
    finally:
        e.store.close()


def test_a_record_reads_back_as_written_and_a_corrupt_one_as_none() -> None:
    held = {("budget", "amount"): Held("ten thousand", "Ten thousand.", 540_000, 1_700_000_000_123)}
    book = PolicyBook()
    record = Record(bound(USERS[0], b"d" * 16), fingerprint(book, {}), 7, held)
    raw = encode(record)
    assert decode(raw) == record
    fingerprints = {T: fingerprint(PolicyBook(), {})}  # an equal book: the same fingerprint
    assert valid(raw, USERS[0], b"d" * 16, fingerprints) == record
    assert valid(raw, USERS[1], b"d" * 16, fingerprints) is None  # another user's
    assert valid(raw, USERS[0], b"e" * 16, fingerprints) is None  # another state
    assert valid(raw, USERS[0], None, fingerprints) is None  # nothing stored
    assert valid(raw, USERS[0], b"d" * 16, {T: fingerprint(book, {"sales": 1})}) is None
    assert valid(raw[:-3], USERS[0], b"d" * 16, fingerprints) is None  # cut short
    assert decode(b"\x00" * 40) is None
