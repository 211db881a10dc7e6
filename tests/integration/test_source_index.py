"""The attribution index (node.store.sources): a row per observation of a source, kept in the
same batch as the subject's rows on writes, retracts, forgets and merges, and built at open for
a directory written before it."""

from __future__ import annotations

import gc
from pathlib import Path

import rocksdict

from node.engine import Engine
from node.store import COLUMN_FAMILIES, SCHEMA_VERSION, Store
from node.store.sources import SOURCES, Contribution
from node.writes import ObservationInput
from sync.delivery import Delta
from sync.observation import Subject, SubjectKind

TENANT = "acme"


def user(n: int, tenant: str = TENANT) -> Subject:
    return Subject(tenant, SubjectKind.USER, f"u-{n}")


def write(engine: Engine, source: str, subject: Subject, key: str, statement: str) -> None:
    engine.observe(source, [ObservationInput(subject, "facts", key, statement, 0.8)])


def listed(store: Store, tenant: str, source: str, page: int = 3) -> list[Contribution]:
    """Every contribution, read a page at a time (each page after the last key of the one
    before)."""
    found: list[Contribution] = []
    after = b""
    for _ in range(10_000):
        rows = store.contributions(tenant, source, after, page)
        found += [c for _, c in rows]
        if len(rows) < page:
            return found
        after = rows[-1][0]
    raise AssertionError("the listing did not end")


def expected(engine: Engine, subjects: list[Subject], source: str) -> list[Contribution]:
    """What the index must hold: the observations of ``source`` the states hold."""
    found = [
        Contribution(s, o.context, o.key, o.dot, o.hlc)
        for s in subjects
        for o in engine.state(s).observations.values()
        if o.source == source and not o.context.startswith("_")
    ]
    return sorted(found, key=lambda c: (c.subject.storage_key(), c.context, c.key, c.dot))


def test_the_index_follows_writes_supersedes_retracts_and_forgets(tmp_path: Path):
    store = Store(tmp_path / "db", "sales", fsync=False)
    engine = Engine(store)
    subjects = [user(n) for n in range(5)]
    for n, subject in enumerate(subjects):
        write(engine, "bot", subject, "plan", f"plan {n}")
        write(engine, "bot", subject, "size", "ten")
        write(engine, "other", subject, "plan", "other plan")
    write(engine, "bot", subjects[0], "plan", "plan corrected")  # supersedes its own
    engine.retract(subjects[1], "facts", "size", "bot")
    engine.forget(subjects[2])
    write(engine, "bot", user(9, "other-tenant"), "plan", "elsewhere")
    engine.put(Subject(TENANT, SubjectKind.ORG, "_sources"), "_withdrawn", "x", "y", "bot")

    got = listed(store, TENANT, "bot")
    assert got == expected(engine, subjects, "bot")
    assert len(got) == 5 * 2 - 1 - 2  # one retracted, one subject forgotten
    assert {c.subject for c in got} == {subjects[0], subjects[1], subjects[3], subjects[4]}
    assert listed(store, TENANT, "other") == expected(engine, subjects, "other")
    assert [c.subject.tenant for c in listed(store, "other-tenant", "bot")] == ["other-tenant"]
    assert listed(store, TENANT, "nobody") == []
    store.close()


def test_the_index_follows_merges_from_a_peer(tmp_path: Path):
    a = Engine(Store(tmp_path / "a", "sales", fsync=False))
    b = Engine(Store(tmp_path / "b", "support", fsync=False))
    subjects = [user(n) for n in range(4)]
    for subject in subjects:
        write(a, "bot", subject, "plan", "from a")
    write(b, "bot", subjects[0], "plan", "from b, newer")  # supersedes nothing b holds
    b.merge_remote([Delta(a.state(s)) for s in subjects])
    a.forget(subjects[3])
    b.merge_remote([Delta(a.state(subjects[3]))])

    assert listed(b.store, TENANT, "bot") == expected(b, subjects, "bot")
    assert {c.subject for c in listed(b.store, TENANT, "bot")} == set(subjects[:3])
    a.store.close()
    b.store.close()


def test_a_directory_written_before_the_index_gets_it_built_at_open(tmp_path: Path):
    store = Store(tmp_path / "db", "sales", fsync=False)
    engine = Engine(store)
    subjects = [user(n) for n in range(7)]
    for n, subject in enumerate(subjects):
        write(engine, "bot", subject, "plan", f"plan {n}")
    want = expected(engine, subjects, "bot")
    store.close()
    del engine, store
    gc.collect()
    # The directory as the schema before the index left it: no index rows, schema 2.
    db = rocksdict.Rdict(
        str(tmp_path / "db"),
        rocksdict.Options(raw_mode=True),
        column_families={n: rocksdict.Options(raw_mode=True) for n in COLUMN_FAMILIES},
    )
    index, meta = db.get_column_family(SOURCES), db.get_column_family("meta")
    index.delete_range(b"", b"\xff")
    meta[b"schema"] = b"2"
    for cf in (index, meta):
        cf.flush(True)
        cf.close()
    db.close()
    del db, index, meta
    gc.collect()

    store = Store(tmp_path / "db", "sales", fsync=False)
    assert store.get_meta("meta", b"schema") == str(SCHEMA_VERSION).encode()
    assert listed(store, TENANT, "bot") == want
    store.close()
